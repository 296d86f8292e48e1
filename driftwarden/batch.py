"""Batch mode: the streaming tests over two files (a reference and a current table).

The reference becomes a :class:`~driftwarden.detectors.baseline.Baseline`, the current table
one window. PSI, Jensen-Shannon, Hellinger and chi-square run on the baseline's bins, KS and
Wasserstein on the whole raw columns (``scipy.stats.ks_2samp``, exact for small samples).
The decision is the streaming one (:func:`driftwarden.detectors.decide.evaluate`): the
score tests are calibrated for a window of the current table's size, p-values are corrected
across all features (Holm by default) at the false-alarm ``budget``, and a feature drifts only
when its PSI is also at least ``min_psi``.

>>> import numpy as np
>>> from driftwarden.tables import Table
>>> rng = np.random.default_rng(0)
>>> def table(shift):
...     cols = {"x": rng.normal(shift, 1, 2000), "c": rng.choice(["a", "b"], 2000)}
...     return Table(cols, {k: np.zeros(2000, bool) for k in cols}, 2000)
>>> report = run_batch(table(0.0), table(0.5), n_sim=50)
>>> report["drift"], report["features"]["x"]["drift"], report["features"]["c"]["drift"]
(True, True, False)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from driftwarden.config import Detection
from driftwarden.detectors.baseline import Baseline
from driftwarden.detectors.compare import FeatureComparison, compare
from driftwarden.detectors.decide import DecisionPolicy, calibrate, evaluate
from driftwarden.errors import InputError, ValidationError
from driftwarden.tables import Table, coerce_numeric, read_table

TYPE_NAMES = ("numeric", "categorical")


def check_types(types: Any) -> dict[str, str]:
    """Validate a ``--types`` mapping: ``{"column": "numeric" | "categorical"}``."""
    if not isinstance(types, dict):
        raise InputError("types must be a JSON object mapping column names to "
                         "\"numeric\" or \"categorical\"")
    for name, kind in types.items():
        if kind not in TYPE_NAMES:
            raise InputError(f"type of column {name!r} must be \"numeric\" or \"categorical\", "
                             f"got {kind!r}")
    return dict(types)


def declared_numeric(name: str, values: np.ndarray, missing: np.ndarray, where: str
                     ) -> np.ndarray:
    """A column declared numeric (``--types``) as numbers; :class:`InputError` when a value
    present in it is not a number (a declared type that does not fit the data is the user's
    mistake to hear about, never a traceback or a silently broken baseline).

    >>> declared_numeric("x", np.array(["1", "2"]), np.zeros(2, bool), "ref.csv").tolist()
    [1.0, 2.0]
    >>> declared_numeric("plan", np.array(["basic", "2"]), np.zeros(2, bool), "ref.csv")
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    driftwarden.errors.InputError: ref.csv: column 'plan' is declared numeric, but 1 of 2 ...
    """
    out = coerce_numeric(values)
    if out.dtype.kind in "fiu":
        return out
    bad = [v for v, m in zip(out.tolist(), missing.tolist())
           if not m and v is not None and not isinstance(v, float)]
    if bad:
        raise InputError(f"{where}: column {name!r} is declared numeric, but {len(bad)} of "
                         f"{int((~missing).sum())} values are not numbers (e.g. {bad[0]!r})")
    return np.array([np.nan if v is None else v for v in out.tolist()], dtype=np.float64)


def _finite(values: np.ndarray, missing: np.ndarray) -> np.ndarray:
    if values.dtype.kind not in "fiu":
        from driftwarden.detectors.summary import to_float_array

        x, _, _ = to_float_array(values, missing)
    else:
        x = values[~missing].astype(np.float64, copy=False)
    return x[np.isfinite(x)]


def _clean(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _feature_report(comp: FeatureComparison, drift: bool) -> dict[str, Any]:
    tests: dict[str, Any] = {}
    t = comp.tests
    tests["psi"] = {"score": _clean(t["psi"].statistic)}
    if comp.kind == "numeric":
        tests["ks"] = {"statistic": _clean(t["ks"].statistic), "pvalue": _clean(t["ks"].pvalue)}
    tests["jensenshannon"] = {"score": _clean(t["jensenshannon"].statistic)}
    if comp.kind == "numeric":
        w = t["wasserstein"]
        tests["wasserstein"] = {"score": _clean(w.raw), "normalized": _clean(w.statistic)}
    else:
        tests["chi2"] = {"statistic": _clean(t["chi2"].statistic),
                         "pvalue": _clean(t["chi2"].pvalue)}
    tests["hellinger"] = {"score": _clean(t["hellinger"].statistic)}
    q = comp.quality
    assert q is not None
    return {"type": comp.kind, "drift": drift, "tests": tests,
            "quality": {"missing_ratio": q.missing_ratio, "unseen_ratio": q.unseen_ratio,
                        "out_of_range_ratio": q.out_of_range_ratio}}


NOT_FEATURES = ("model", "version", "id", "ts", "label", "latency_ms")


def fit_baseline_file(path: str, detection: Detection, types: Mapping[str, str] | None = None,
                      prediction: str = "prediction") -> Baseline:
    """A stream baseline from a reference file (CSV or Parquet): every column a feature but
    ``model``, ``version``, ``id``, ``ts``, ``label`` and ``latency_ms``; the ``prediction``
    column, when present, is the model's output. One readable InputError when it fails."""
    table = read_table(path)
    if table.n_rows == 0:
        raise InputError(f"baseline {path}: no rows")
    names = [c for c in table.columns if c not in NOT_FEATURES]
    ref = table.select(names)
    types = check_types(dict(types or {}))
    cols = dict(ref.columns)
    for name, kind in types.items():
        if kind == "numeric" and name in cols:
            cols[name] = declared_numeric(name, cols[name], ref.missing[name], path)
    d = detection
    try:
        return Baseline.fit(cols, types={k: v for k, v in types.items() if k in cols},
                            bins=d.bins, max_categories=d.max_categories,
                            categorical_max_distinct=d.categorical_max_distinct,
                            sample_rows=d.sample_rows, reference_sample=d.reference_sample,
                            prediction=prediction if prediction in cols else None, seed=d.seed,
                            missing=ref.missing)
    except ValidationError as exc:
        raise InputError(f"baseline {path}: cannot fit: {exc}") from None


def run_batch(reference: Table, current: Table, *, types: Mapping[str, str] | None = None,
              policy: DecisionPolicy | None = None, bins: int = 10, n_sim: int = 200,
              seed: int = 0) -> dict[str, Any]:
    """Compare two tables; returns the report printed by ``driftwarden batch --json``.

    Raises :class:`~driftwarden.errors.InputError` for an empty table or no common columns.
    """
    policy = policy or DecisionPolicy()
    if reference.n_rows == 0:
        raise InputError("the reference table has no rows")
    if current.n_rows == 0:
        raise InputError("the current table has no rows")
    common = [c for c in reference.columns if c in current.columns]
    if not common:
        raise InputError("the reference and current tables have no column in common")
    types = {k: v for k, v in check_types(dict(types or {})).items() if k in common}
    ref, cur = reference.select(common), current.select(common)
    ref_cols, cur_cols = dict(ref.columns), dict(cur.columns)
    for name, kind in types.items():
        if kind == "numeric":
            ref_cols[name] = declared_numeric(name, ref_cols[name], ref.missing[name],
                                              "the reference table")
            cur_cols[name] = declared_numeric(name, cur_cols[name], cur.missing[name],
                                              "the current table")
    try:
        base = Baseline.fit(ref_cols, types=types, bins=bins, seed=seed, missing=ref.missing)
    except ValidationError as exc:
        raise InputError(f"cannot fit a baseline: {exc}") from None
    window = base.new_summary(seed=seed)
    window.update_columns(cur_cols, n_rows=cur.n_rows, missing=cur.missing)
    numeric = [n for n, k in base.types.items() if k == "numeric"]
    raw_ref = {n: _finite(ref_cols[n], ref.missing[n]) for n in numeric}
    raw_cur = {n: _finite(cur_cols[n], cur.missing[n]) for n in numeric}
    comparisons = compare(base, window, raw_reference=raw_ref, raw_current=raw_cur)
    needed = policy.calibrated_tests()
    cal = calibrate(base, cur.n_rows, n_sim=n_sim, seed=seed, tests=needed) if needed else None
    ev = evaluate(comparisons, policy, cal)
    drifting = set(ev.features)
    return {
        "drift": ev.drift,
        "n_reference": reference.n_rows,
        "n_current": current.n_rows,
        "features": {name: _feature_report(comparisons[name], name in drifting)
                     for name in common},
    }
