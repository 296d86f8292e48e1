"""Run the drift tests of one window against a baseline, feature by feature.

Numeric features get PSI, Jensen-Shannon and Hellinger on the baseline's bins, and KS and
Wasserstein on raw values — the window's reservoir against the baseline's (streaming), or the
whole raw columns when the caller has them (batch). Categorical features get PSI,
Jensen-Shannon, Hellinger and chi-square over the known categories plus the *unseen* cell.
For chi-square, cells whose expected count in the window is below 5 are pooled into one cell,
the textbook condition under which its asymptotic p-value holds (sparse cells otherwise give
p-values far too small in the tail, i.e. false alarms).

>>> import numpy as np
>>> from driftwarden.detectors.baseline import Baseline
>>> rng = np.random.default_rng(1)
>>> base = Baseline.fit({"x": rng.normal(size=4000)})
>>> window = base.new_summary(); window.update_columns({"x": rng.normal(1.0, 1, 500)})
>>> c = compare(base, window)["x"]
>>> sorted(c.tests), c.tests["ks"].pvalue < 1e-6
(['hellinger', 'jensenshannon', 'ks', 'psi', 'wasserstein'], True)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as _st

from driftwarden.detectors import stats
from driftwarden.detectors.baseline import Baseline
from driftwarden.detectors.quality import FeatureQuality, feature_quality
from driftwarden.detectors.summary import (
    PREDICTION,
    CategoricalSummary,
    FeatureSummary,
    NumericSummary,
    Summary,
)

NUMERIC_TESTS = ("psi", "jensenshannon", "hellinger", "ks", "wasserstein")
CATEGORICAL_TESTS = ("psi", "jensenshannon", "hellinger", "chi2")
ALL_TESTS = ("psi", "jensenshannon", "hellinger", "ks", "wasserstein", "chi2")
# Tests with an analytic p-value; the others get one from calibration (decide.calibrate).
ANALYTIC_TESTS = ("ks", "chi2")
MIN_EXPECTED = 5.0


@dataclass(frozen=True)
class TestValue:
    """One test on one feature: ``statistic`` (for Wasserstein the normalised distance),
    ``pvalue`` (NaN when the test has no analytic p-value), ``raw`` (Wasserstein in the
    feature's units), ``dof`` (chi-square degrees of freedom) and the sample sizes used."""

    __test__ = False  # not a pytest test class

    statistic: float
    pvalue: float = math.nan
    raw: float = math.nan
    dof: int = 0
    n_reference: int = 0
    n_current: int = 0


@dataclass(frozen=True)
class FeatureComparison:
    """All tests and quality measures of one feature in one window."""

    name: str
    kind: str
    n_reference: int
    n_current: int
    tests: dict[str, TestValue] = field(default_factory=dict)
    quality: FeatureQuality | None = None


def pooled_counts(reference: np.ndarray, current: np.ndarray, min_expected: float = MIN_EXPECTED
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Pool the cells whose expected count in ``current`` is below ``min_expected``.

    >>> pooled_counts(np.array([500, 490, 5, 5]), np.array([50, 50, 0, 3]))
    (array([500, 490,  10]), array([50, 50,  3]))
    """
    r = np.asarray(reference, dtype=np.int64)
    c = np.asarray(current, dtype=np.int64)
    n_r, n_c = r.sum(), c.sum()
    if n_r == 0 or n_c == 0:
        return r, c
    expected = r / n_r * n_c
    small = expected < min_expected
    if small.sum() <= 1:
        return r, c
    keep = ~small
    return (np.append(r[keep], r[small].sum()), np.append(c[keep], c[small].sum()))


def compare_feature(base: Baseline, name: str, current: FeatureSummary, *,
                    tests: Collection[str] | None = None,
                    raw_reference: np.ndarray | None = None,
                    raw_current: np.ndarray | None = None,
                    histogram_tests: tuple[float, float, float] | None = None
                    ) -> FeatureComparison:
    """Compare one feature's window summary with the baseline's reference summary.

    ``raw_reference`` / ``raw_current`` (finite float arrays) make KS and Wasserstein exact
    on whole columns (batch mode); otherwise they run on the reservoirs.
    ``histogram_tests`` passes (PSI, JS, Hellinger) already computed for all features at once
    by :func:`compare`.
    """
    ref = base.reference.prediction if name == PREDICTION else base.reference.features[name]
    assert ref is not None
    r_counts, c_counts = ref.counts, current.counts
    out: dict[str, TestValue] = {}
    want = set(tests) if tests is not None else set(ALL_TESTS)
    n_r, n_c = int(r_counts.sum()), int(c_counts.sum())
    if histogram_tests is None:
        r_p, c_p = base.reference_proportions(name), stats.proportions(c_counts)
        histogram_tests = (stats.psi_p(r_p, c_p), stats.jensen_shannon_p(r_p, c_p),
                           stats.hellinger_p(r_p, c_p))
    for test, value in zip(("psi", "jensenshannon", "hellinger"), histogram_tests):
        if test in want:
            out[test] = TestValue(float(value), n_reference=n_r, n_current=n_c)
    if isinstance(current, NumericSummary):
        assert isinstance(ref, NumericSummary)
        if raw_current is not None and raw_reference is not None:
            ref_x, cur_x, presorted = raw_reference, raw_current, False
        else:
            ref_x, cur_x, presorted = base.sorted_reference(name), np.sort(current.sample()), True
        if "ks" in want:
            if presorted:
                r = stats.ks(ref_x, cur_x, presorted=True, current_sorted=True)
            elif len(ref_x) and len(cur_x):
                with warnings.catch_warnings():  # "exact calculation unsuccessful" on ties
                    warnings.simplefilter("ignore", RuntimeWarning)
                    res = _st.ks_2samp(ref_x, cur_x)
                r = stats.TestResult(float(res.statistic), float(res.pvalue))
            else:
                r = stats.TestResult(0.0, 1.0)
            out["ks"] = TestValue(r.statistic, r.pvalue, n_reference=len(ref_x),
                                  n_current=len(cur_x))
        if "wasserstein" in want:
            raw, norm = stats.wasserstein(ref_x, cur_x, ref.spec.std, presorted=presorted,
                                          current_sorted=presorted)
            out["wasserstein"] = TestValue(norm, raw=raw, n_reference=len(ref_x),
                                           n_current=len(cur_x))
    elif isinstance(current, CategoricalSummary) and "chi2" in want:
        pr, pc = pooled_counts(r_counts, c_counts)
        r = stats.chi2(pr, pc)
        dof = max(int(((pr + pc) > 0).sum()) - 1, 0)
        out["chi2"] = TestValue(r.statistic, r.pvalue, dof=dof, n_reference=n_r, n_current=n_c)
    return FeatureComparison(name, current.kind, n_r, n_c, out, feature_quality(current))


def compare(base: Baseline, window: Summary, *, tests: Collection[str] | None = None,
            raw_reference: Mapping[str, np.ndarray] | None = None,
            raw_current: Mapping[str, np.ndarray] | None = None
            ) -> dict[str, FeatureComparison]:
    """:func:`compare_feature` for every feature (and the prediction, as ``__prediction__``).

    PSI, Jensen-Shannon and Hellinger run for all features in one vectorised pass over a
    zero-padded matrix of proportions (a cell empty on both sides adds nothing to any of
    them).
    """
    items: list[tuple[str, FeatureSummary]] = list(window.features.items())
    if window.prediction is not None and base.reference.prediction is not None:
        items.append((PREDICTION, window.prediction))
    if not items:
        return {}
    r_mat = base.reference_matrix(tuple(name for name, _ in items))
    c_mat = np.zeros_like(r_mat)
    for i, (_, fs) in enumerate(items):
        c_mat[i, :len(fs.counts)] = stats.proportions(fs.counts)
    hist = np.column_stack([stats.psi_rows(r_mat, c_mat), stats.jensen_shannon_rows(r_mat, c_mat),
                            stats.hellinger_rows(r_mat, c_mat)])
    out = {}
    for i, (name, fs) in enumerate(items):
        out[name] = compare_feature(
            base, name, fs, tests=tests, histogram_tests=tuple(hist[i].tolist()),
            raw_reference=None if raw_reference is None else raw_reference.get(name),
            raw_current=None if raw_current is None else raw_current.get(name))
    return out
