"""Decisions with few false alarms: calibration, multiple testing, hysteresis, severity.

Continuous monitoring of many features with repeated tests floods users with false alarms
when each test is read at its own 5 % level. driftwarden decides in four steps:

1. **p-values for every decision test.** KS and chi-square have analytic p-values. PSI,
   Jensen-Shannon, Hellinger and Wasserstein do not; :func:`calibrate` simulates no-drift
   windows of the monitored size, drawn with replacement from the baseline's own row sample,
   and fits a gamma law (method of moments) to the statistic under no drift (to its square for
   the distances, which behave like the square root of a chi-square). Bootstrapping from the
   reference ignores the reference's own sampling error, so the fitted scale is inflated by
   ``1 + n_window / n_reference`` (the ratio of the two-sample to the one-sample variance of a
   chi-square-like statistic; windows larger than ``max_sim_rows`` are simulated at that size
   and rescaled the same way). A p-value is then the fitted law's upper tail.
2. **Multiple-testing control across the model.** The family is every (feature, decision
   test) pair of the model. With ``correction="holm"`` (default) the chance that a no-drift
   window raises any alarm — the false-alarm rate per model and evaluation — is at most
   ``budget`` whatever the correlation between features (Holm 1979). ``"bh"`` controls the
   false-discovery rate instead (more power, fewer guarantees); ``"none"`` reads each test at
   ``budget``. A feature drifts when one of its tests is rejected and, to ignore changes too
   small to matter on huge windows, its PSI is at least ``min_psi``. Fixed per-test
   ``thresholds`` (e.g. ``{"psi": 0.2}``) may replace a test's p-value by a plain cut-off.
3. **Severity.** ``critical`` when a drifting feature has PSI ≥ ``critical_psi`` (0.25, the
   industry's "major shift"), ``warning`` otherwise.
4. **Hysteresis and cooldown** (:class:`Decider`). Drift must hold for ``hysteresis``
   consecutive evaluations to open (``onset``), a critical evaluation of an open drift
   ``escalation``\\s it, ``recovery`` takes ``recovery`` consecutive clear evaluations, and after
   a recovery a new onset is held back for ``cooldown`` evaluations.

Each verdict carries its evidence: per feature and test, the statistic, p-value, adjusted
p-value, threshold (the statistic at which that test alone would flag, at the family's
strictest level ``budget / m``) and the sample sizes.

>>> import numpy as np
>>> from driftwarden.detectors.baseline import Baseline
>>> from driftwarden.detectors.compare import compare
>>> rng = np.random.default_rng(3)
>>> base = Baseline.fit({f"f{i}": rng.normal(size=5000) for i in range(5)})
>>> cal = calibrate(base, window_size=500, n_sim=100, seed=1)
>>> decider = Decider(DecisionPolicy(budget=1e-3, hysteresis=2))
>>> for step in range(4):
...     shift = 0.0 if step < 2 else 0.5          # feature f2 drifts from the third window on
...     cols = {f"f{i}": rng.normal(shift if i == 2 else 0.0, 1, 500) for i in range(5)}
...     w = base.new_summary(); w.update_columns(cols)
...     v = decider.update(evaluate(compare(base, w), decider.policy, cal))
...     print(step, v.state, v.features)
0 None ()
1 None ()
2 None ('f2',)
3 onset ('f2',)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import special as _sp
from scipy import stats as _st

from driftwarden.detectors import stats
from driftwarden.detectors.baseline import Baseline
from driftwarden.detectors.compare import FeatureComparison, TestValue, compare
from driftwarden.errors import ValidationError

CORRECTIONS = ("holm", "bh", "none")
SCORE_TESTS = ("psi", "jensenshannon", "hellinger", "wasserstein")
# Exponent applied before fitting the gamma law: distances are square roots of divergences.
POWER = {"psi": 1.0, "jensenshannon": 2.0, "hellinger": 2.0, "wasserstein": 2.0}
SEVERITIES = ("none", "warning", "critical")


# ---------------------------------------------------------------------------------------------
# multiple testing


def holm(pvalues: np.ndarray | list[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error control, any dependence).

    >>> holm([0.01, 0.04, 0.03]).tolist()
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(pvalues, dtype=np.float64)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adj, 1.0)
    return out


def benjamini_hochberg(pvalues: np.ndarray | list[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false-discovery-rate control).

    >>> benjamini_hochberg([0.01, 0.04, 0.03]).tolist()
    [0.03, 0.04, 0.04]
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if len(p) == 0:
        return p
    return np.asarray(_st.false_discovery_control(p, method="bh"))


def adjust(pvalues: np.ndarray | list[float], correction: str) -> np.ndarray:
    if correction == "holm":
        return holm(pvalues)
    if correction == "bh":
        return benjamini_hochberg(pvalues)
    if correction == "none":
        return np.asarray(pvalues, dtype=np.float64)
    raise ValidationError(f"correction must be one of {CORRECTIONS}, got {correction!r}")


# ---------------------------------------------------------------------------------------------
# calibration


@dataclass(frozen=True)
class NullModel:
    """The no-drift law of one statistic: ``statistic ** power ~ Gamma(shape, scale)``.

    ``scale`` holds for windows of ``n_current`` values against ``n_reference``. Under no
    drift these statistics scale like ``1/n_current + 1/n_reference``, so a window of another
    size (a window still filling up, values missing, a batch table) gets the scale rescaled
    by that ratio instead of p-values meant for a different size.

    >>> m = NullModel.fit(np.random.default_rng(0).chisquare(9, 4000) / 1000, power=1.0)
    >>> round(2 * m.shape), 0.0005 < m.pvalue(0.0277) < 0.005   # chi2(9) = Gamma(4.5, 2)
    (9, True)
    """

    shape: float
    scale: float
    power: float = 1.0
    location: float = 0.0  # used when the simulated statistic never varied
    n_current: int = 0     # sizes the scale refers to (0: no rescaling)
    n_reference: int = 0

    @classmethod
    def fit(cls, samples: np.ndarray, power: float = 1.0, inflate: float = 1.0, *,
            n_current: int = 0, n_reference: int = 0) -> NullModel:
        y = np.asarray(samples, dtype=np.float64) ** power
        y = y[np.isfinite(y)]
        mean = float(y.mean()) if len(y) else 0.0
        var = float(y.var(ddof=1)) if len(y) > 1 else 0.0
        if mean <= 0 or var <= 0:
            return cls(0.0, 0.0, power, mean, n_current, n_reference)
        return cls(mean * mean / var, var / mean * inflate, power, 0.0, n_current, n_reference)

    def _factor(self, n_current: int | None) -> float:
        if not n_current or not self.n_current or n_current == self.n_current:
            return 1.0
        inv_ref = 1.0 / self.n_reference if self.n_reference else 0.0
        return (1.0 / n_current + inv_ref) / (1.0 / self.n_current + inv_ref)

    def pvalue(self, statistic: float, n_current: int | None = None) -> float:
        """Upper-tail probability of ``statistic`` under no drift, for a window of
        ``n_current`` values (default: the calibrated size)."""
        if not math.isfinite(statistic):
            return 0.0 if statistic > 0 else 1.0
        y = max(statistic, 0.0) ** self.power
        f = self._factor(n_current)
        if self.shape == 0.0:
            return 1.0 if y <= self.location * f * (1 + 1e-9) + 1e-12 else 0.0
        return float(_sp.gammaincc(self.shape, y / (self.scale * f)))

    def threshold(self, level: float, n_current: int | None = None) -> float:
        """The statistic whose p-value is ``level``."""
        f = self._factor(n_current)
        if self.shape == 0.0:
            return (self.location * f * (1 + 1e-9) + 1e-12) ** (1 / self.power)
        y = float(_sp.gammainccinv(self.shape, level) * self.scale * f)
        return y ** (1 / self.power)

    def to_state(self) -> dict[str, float]:
        return {"shape": self.shape, "scale": self.scale, "power": self.power,
                "location": self.location, "n_current": self.n_current,
                "n_reference": self.n_reference}


@dataclass(frozen=True)
class Calibration:
    """Null laws per feature and score test, for windows of ``window_size`` rows."""

    window_size: int
    n_sim: int
    seed: int
    nulls: dict[str, dict[str, NullModel]]
    _thresholds: dict[tuple[str, str, float, int | None], float] = field(
        default_factory=dict, repr=False, compare=False)

    def pvalue(self, feature: str, test: str, statistic: float,
               n_current: int | None = None) -> float:
        model = self.nulls.get(feature, {}).get(test)
        return math.nan if model is None else model.pvalue(statistic, n_current)

    def threshold(self, feature: str, test: str, level: float,
                  n_current: int | None = None) -> float:
        key = (feature, test, level, n_current)
        out = self._thresholds.get(key)
        if out is None:
            model = self.nulls.get(feature, {}).get(test)
            out = math.nan if model is None else model.threshold(level, n_current)
            if len(self._thresholds) > 100_000:
                self._thresholds.clear()
            self._thresholds[key] = out
        return out

    def to_state(self) -> dict[str, Any]:
        return {"window_size": self.window_size, "n_sim": self.n_sim, "seed": self.seed,
                "nulls": {f: {t: m.to_state() for t, m in d.items()}
                          for f, d in self.nulls.items()}}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Calibration:
        return cls(state["window_size"], state["n_sim"], state["seed"],
                   {f: {t: NullModel(**m) for t, m in d.items()}
                    for f, d in state["nulls"].items()})


def calibrate(base: Baseline, window_size: int, *, n_sim: int = 200, seed: int = 0,
              tests: Collection[str] = SCORE_TESTS, reservoir_size: int = 1024,
              max_sim_rows: int = 20_000) -> Calibration:
    """Fit the no-drift law of each score test for windows of ``window_size`` rows.

    Draws ``n_sim`` windows with replacement from the baseline's row sample (so correlations
    between features are kept), summarises each exactly as the stream would, and fits a
    :class:`NullModel` per (feature, test). Cost: ``n_sim`` window evaluations. Windows larger
    than ``max_sim_rows`` are simulated at that size and the fitted scale is rescaled, since
    these statistics shrink like 1/n under no drift.
    """
    if window_size < 1:
        raise ValidationError(f"window_size must be >= 1, got {window_size}")
    if n_sim < 10:
        raise ValidationError(f"n_sim must be >= 10, got {n_sim}")
    unknown = set(tests) - set(SCORE_TESTS)
    if unknown:
        raise ValidationError(f"calibration takes tests from {SCORE_TESTS}, got {sorted(unknown)}")
    rng = np.random.default_rng(seed)
    cols, masks = base.sample_columns()
    n_sample = base.n_sample
    sim_rows = min(window_size, max_sim_rows)
    collected: dict[str, dict[str, list[float]]] = {}
    sizes: dict[str, dict[str, int]] = {}
    for i in range(n_sim):
        idx = rng.integers(0, n_sample, sim_rows)
        window = base.new_summary(reservoir_size=reservoir_size, seed=seed + 7919 * (i + 1))
        window.update_columns({name: col[idx] for name, col in cols.items()}, n_rows=sim_rows,
                              missing={name: m[idx] for name, m in masks.items()})
        for name, comp in compare(base, window, tests=tests).items():
            per = collected.setdefault(name, {})
            for test, value in comp.tests.items():
                per.setdefault(test, []).append(value.statistic)
                sizes.setdefault(name, {})[test] = value.n_reference
    nulls: dict[str, dict[str, NullModel]] = {}
    for name, per in collected.items():
        nulls[name] = {}
        for test, values in per.items():
            n_ref = max(sizes[name][test], 1)
            if test == "wasserstein":  # runs on reservoirs: the window side is capped
                n_sim_cur = n_cur = min(sim_rows, reservoir_size)
            else:
                n_sim_cur, n_cur = sim_rows, window_size
            # bootstrap variance ~ 1/n_sim_cur; wanted: 1/n_cur + 1/n_ref (two samples)
            inflate = n_sim_cur * (1.0 / n_cur + 1.0 / n_ref)
            nulls[name][test] = NullModel.fit(np.asarray(values), POWER[test], inflate,
                                              n_current=n_cur, n_reference=n_ref)
    return Calibration(window_size, n_sim, seed, nulls)


# ---------------------------------------------------------------------------------------------
# policy and evaluation


@dataclass(frozen=True)
class DecisionPolicy:
    """How test results become verdicts; see the module docstring.

    >>> DecisionPolicy(budget=2)
    Traceback (most recent call last):
    ...
    driftwarden.errors.ValidationError: budget must be in (0, 1), got 2
    """

    budget: float = 1e-4
    correction: str = "holm"
    numeric_tests: tuple[str, ...] = ("ks", "psi")
    categorical_tests: tuple[str, ...] = ("chi2", "psi")
    thresholds: Mapping[str, float] = field(default_factory=dict)
    min_psi: float = 0.01
    critical_psi: float = 0.25
    hysteresis: int = 2
    recovery: int = 2
    cooldown: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.budget < 1:
            raise ValidationError(f"budget must be in (0, 1), got {self.budget}")
        if self.correction not in CORRECTIONS:
            raise ValidationError(f"correction must be one of {CORRECTIONS}, "
                                  f"got {self.correction!r}")
        from driftwarden.detectors.compare import ALL_TESTS, CATEGORICAL_TESTS, NUMERIC_TESTS
        for attr, allowed in (("numeric_tests", NUMERIC_TESTS),
                              ("categorical_tests", CATEGORICAL_TESTS)):
            bad = set(getattr(self, attr)) - set(allowed)
            if bad:
                raise ValidationError(f"{attr} must be among {allowed}, got {sorted(bad)}")
        bad = set(self.thresholds) - set(ALL_TESTS)
        if bad:
            raise ValidationError(f"thresholds name unknown tests {sorted(bad)}")
        for attr in ("hysteresis", "recovery"):
            if getattr(self, attr) < 1:
                raise ValidationError(f"{attr} must be >= 1, got {getattr(self, attr)}")
        if self.cooldown < 0:
            raise ValidationError(f"cooldown must be >= 0, got {self.cooldown}")
        if self.min_psi < 0 or self.critical_psi < 0:
            raise ValidationError("min_psi and critical_psi must be >= 0")

    def tests_for(self, kind: str) -> tuple[str, ...]:
        return self.numeric_tests if kind == "numeric" else self.categorical_tests

    def calibrated_tests(self) -> list[str]:
        """The decision tests that need :func:`calibrate` (score tests without a fixed
        threshold).

        >>> DecisionPolicy().calibrated_tests()
        ['psi']
        """
        wanted = set(self.numeric_tests) | set(self.categorical_tests)
        return sorted((wanted & set(SCORE_TESTS)) - set(self.thresholds))


@dataclass(frozen=True)
class TestEvidence:
    """One test on one feature, as it entered the decision."""

    __test__ = False  # not a pytest test class

    feature: str
    test: str
    statistic: float
    pvalue: float
    adjusted_pvalue: float
    threshold: float
    n_reference: int
    n_current: int
    decision: bool       # whether this test counts in the decision
    rejected: bool       # whether it flagged (before the feature's min_psi check)

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Evaluation:
    """The verdict of one window, before hysteresis."""

    drift: bool
    severity: str
    features: tuple[str, ...]
    evidence: tuple[TestEvidence, ...]
    n_tests: int


@functools.lru_cache(maxsize=4096)
def _analytic_threshold(test: str, n_reference: int, n_current: int, dof: int,
                        level: float) -> float:
    if test == "ks":
        return stats.ks_critical(level, n_reference, n_current)
    if test == "chi2" and dof > 0:
        return float(_sp.chdtri(dof, level))
    return math.nan


def evaluate(comparisons: Mapping[str, FeatureComparison], policy: DecisionPolicy,
             calibration: Calibration | None = None) -> Evaluation:
    """Turn one window's comparisons into a drift decision with evidence (no state)."""
    rows: list[tuple[str, str, TestValue, float, bool]] = []  # feature, test, value, p, family
    for name, comp in comparisons.items():
        decision_tests = policy.tests_for(comp.kind)
        for test, value in comp.tests.items():
            if test in policy.thresholds:
                rows.append((name, test, value, math.nan, False))
                continue
            p = value.pvalue
            if not math.isfinite(p) and calibration is not None:
                p = calibration.pvalue(name, test, value.statistic, value.n_current)
            in_family = test in decision_tests and math.isfinite(p)
            rows.append((name, test, value, p, in_family))
    family = [i for i, r in enumerate(rows) if r[4]]
    m = max(len(family), 1)
    adjusted = np.full(len(rows), math.nan)
    if family:
        adjusted[family] = adjust([rows[i][3] for i in family], policy.correction)
    level = policy.budget / m if policy.correction != "none" else policy.budget
    evidence: list[TestEvidence] = []
    flagged: dict[str, bool] = {}
    for i, (name, test, value, p, in_family) in enumerate(rows):
        if test in policy.thresholds:
            threshold = float(policy.thresholds[test])
            rejected = value.statistic >= threshold
            decision = True
        else:
            if math.isfinite(value.pvalue):
                threshold = _analytic_threshold(test, value.n_reference, value.n_current,
                                                value.dof, level)
            elif calibration is not None:
                threshold = calibration.threshold(name, test, level, value.n_current)
            else:
                threshold = math.nan
            rejected = bool(in_family and adjusted[i] <= policy.budget)
            decision = in_family
        if decision and rejected:
            flagged[name] = True
        evidence.append(TestEvidence(name, test, value.statistic, p, float(adjusted[i]),
                                     threshold, value.n_reference, value.n_current, decision,
                                     bool(rejected)))
    drifting = []
    severity = "none"
    for name in flagged:
        psi_value = comparisons[name].tests.get("psi")
        psi_stat = psi_value.statistic if psi_value is not None else math.inf
        if psi_stat < policy.min_psi:
            continue
        drifting.append(name)
        if psi_stat >= policy.critical_psi:
            severity = "critical"
        elif severity == "none":
            severity = "warning"
    return Evaluation(bool(drifting), severity, tuple(drifting), tuple(evidence), len(family))


# ---------------------------------------------------------------------------------------------
# hysteresis, cooldown, state changes


@dataclass(frozen=True)
class Verdict:
    """The state of a model's drift after one evaluation.

    ``state`` is ``"onset"``, ``"escalation"`` or ``"recovery"`` on the evaluation where the
    state changed, else ``None``; ``drift`` / ``severity`` describe the open state.
    """

    drift: bool
    severity: str
    state: str | None
    features: tuple[str, ...]
    evaluation: Evaluation
    n_evaluations: int


class Decider:
    """Hysteresis, recovery and cooldown over a sequence of :class:`Evaluation`\\s."""

    def __init__(self, policy: DecisionPolicy | None = None) -> None:
        self.policy = policy or DecisionPolicy()
        self._reset()

    def _reset(self) -> None:
        self.active = False
        self.severity = "none"
        self.drift_streak = 0
        self.clear_streak = 0
        self.cooldown_left = 0
        self.n_evaluations = 0
        self.incident_features: list[str] = []  # of the last drifting evaluation while open

    @property
    def phase(self) -> str:
        """``ok``, ``pending`` (drifting, not yet for ``hysteresis`` evaluations), ``drifting``
        or ``recovering`` (open, clear for fewer than ``recovery`` evaluations).

        >>> d = Decider(DecisionPolicy(hysteresis=2, recovery=2))
        >>> ev = Evaluation(True, "warning", ("x",), (), 1)
        >>> [(d.update(ev).state, d.phase) for _ in range(2)]
        [(None, 'pending'), ('onset', 'drifting')]
        >>> d.update(Evaluation(False, "none", (), (), 1)).features, d.phase
        ((), 'recovering')
        >>> d.incident_features
        ['x']
        """
        if self.active:
            return "recovering" if self.clear_streak else "drifting"
        return "pending" if self.drift_streak else "ok"

    def __repr__(self) -> str:
        return (f"Decider(active={self.active}, severity={self.severity!r}, "
                f"n_evaluations={self.n_evaluations})")

    def update(self, ev: Evaluation) -> Verdict:
        p = self.policy
        self.n_evaluations += 1
        state = None
        if ev.drift:
            self.drift_streak += 1
            self.clear_streak = 0
        else:
            self.clear_streak += 1
            self.drift_streak = 0
        if not self.active:
            if self.cooldown_left > 0:
                self.cooldown_left -= 1
            elif ev.drift and self.drift_streak >= p.hysteresis:
                self.active, self.severity, state = True, ev.severity, "onset"
        elif ev.drift and ev.severity == "critical" and self.severity != "critical":
            self.severity, state = "critical", "escalation"
        elif not ev.drift and self.clear_streak >= p.recovery:
            self.active, self.severity, state = False, "none", "recovery"
            self.cooldown_left = p.cooldown
        if ev.drift and self.active:
            self.incident_features = list(ev.features)
        elif not self.active:
            self.incident_features = []
        return Verdict(self.active, self.severity, state, ev.features, ev, self.n_evaluations)

    def to_state(self) -> dict[str, Any]:
        return {"active": self.active, "severity": self.severity,
                "drift_streak": self.drift_streak, "clear_streak": self.clear_streak,
                "cooldown_left": self.cooldown_left, "n_evaluations": self.n_evaluations,
                "incident_features": list(self.incident_features)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], policy: DecisionPolicy | None = None
                   ) -> Decider:
        out = cls(policy)
        for key, value in state.items():
            setattr(out, key, value)
        return out

