"""Anytime-valid comparisons of a candidate model version with its baseline.

A rollout looks at its evidence again at every slice, and a gate may be rerun as an
evaluation set grows: a fixed-sample test repeated like that rejects far more often than its
level (peeking — Kayenta's and the analysis tools' repeated interval checks have that
problem). A **confidence sequence** is a sequence of intervals that all hold at once with
probability ≥ 1 − α, so a verdict may be taken at any look, as often as one likes, without
inflating the false-verdict rate.

This module uses the asymptotic confidence sequence of Waudby-Smith, Arnold, Wu, Howard and
Ramdas ("Time-uniform central limit theory and asymptotic confidence sequences", 2021,
Theorem 2.2): for the mean of i.i.d. observations with running mean ``m_t`` and variance
``v_t`` after ``t`` of them,

    m_t ± sqrt( 2 (t v_t ρ² + 1) / (t² ρ²) · log( sqrt(t v_t ρ² + 1) / α ) )

with ``ρ`` tuned to be tightest around ``t*`` observations (their eq. 2.4). It adapts to the
variance — a candidate that agrees with its baseline on most examples has paired differences
of small variance and is decided with far fewer samples than a range-based (Hoeffding)
sequence would need — and, being asymptotic, is meant for the hundreds of samples and more a
rollout sees (:data:`MIN_SAMPLES` below that, no verdict).

A comparison is a **non-inferiority** test on a loss (an error, 1 − accuracy, an absolute
error): ``d`` = candidate's loss − baseline's, ``margin`` ≥ 0 how much worse the candidate may
be. ``promote`` once the upper bound of ``d`` is below the margin (no worse than allowed),
``rollback`` once the lower bound is above it (worse than allowed), ``continue`` meanwhile,
``inconclusive`` when a guard-rail ends the rollout first. Each direction is wrong with
probability ≤ α / 2 over the whole rollout, however often it is looked at.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> base = (rng.random(20_000) < 0.10).astype(float)   # baseline errs 10 %
>>> worse = np.where(rng.random(20_000) < 0.03, 1.0, base)  # the candidate errs 3 points more
>>> c = paired(worse - base, margin=0.01, alpha=0.05)
>>> c.verdict, round(c.estimate, 3), c.lower > 0.01
('rollback', 0.027, True)
>>> paired(base - base, margin=0.01, alpha=0.05).verdict     # identical: no worse
'promote'
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

Verdict = Literal["continue", "promote", "rollback", "inconclusive"]
MIN_SAMPLES = 100  # fewer: no verdict (the sequence is asymptotic)
DEFAULT_TARGET = 1000  # the sample size the boundary is tightest around


def rho_squared(alpha: float, target: int = DEFAULT_TARGET) -> float:
    """The mixing parameter that makes the boundary tightest at ``target`` samples (eq. 2.4
    of Waudby-Smith et al. 2021).

    >>> a = -2 * math.log(0.05)
    >>> rho_squared(0.05, 1000) == (a + math.log(a + 1)) / 1000
    True
    """
    a = -2.0 * math.log(alpha)
    return (a + math.log(a + 1.0)) / max(1, target)


def radius(n: int, variance: float, alpha: float, target: int = DEFAULT_TARGET) -> float:
    """Half-width of the two-sided (1 − α) asymptotic confidence sequence after ``n``
    observations of running variance ``variance`` (+inf for none).

    It is wider than a fixed-n interval (1.96 · sqrt(0.25 / 1000) = 0.031 here) — the price
    of looking at every n — and shrinks like sqrt(log n / n):

    >>> r1, r2 = radius(1_000, 0.25, 0.05), radius(100_000, 0.25, 0.05)
    >>> round(r1, 3), r2 < r1 / 9
    (0.052, True)
    """
    if n <= 0:
        return math.inf
    r2 = rho_squared(alpha, target)
    tv = n * max(variance, 0.0) * r2 + 1.0
    return math.sqrt(2.0 * tv / (n * n * r2) * math.log(math.sqrt(tv) / alpha))


@dataclass(frozen=True)
class Comparison:
    """A signal's evidence at one look: the estimated difference of losses (candidate −
    baseline), its anytime-valid bounds, the samples, the margin and the verdict."""

    estimate: float
    lower: float
    upper: float
    n: int
    margin: float
    alpha: float
    verdict: Verdict

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in asdict(self).items()}


def decide(estimate: float, lower: float, upper: float, n: int, margin: float,
           alpha: float, *, final: bool = False) -> Comparison:
    """The verdict of bounds on ``d`` (candidate − baseline loss) against ``margin``;
    ``final``: no more samples will come (a guard-rail, the end of a gate's file), so
    ``continue`` becomes ``inconclusive``."""
    verdict: Verdict = "continue"
    if n >= MIN_SAMPLES:
        if upper < margin:
            verdict = "promote"
        elif lower > margin:
            verdict = "rollback"
    if verdict == "continue" and final:
        verdict = "inconclusive"
    return Comparison(estimate, lower, upper, n, margin, alpha, verdict)


def paired(d: Any, *, margin: float, alpha: float, target: int = DEFAULT_TARGET,
           final: bool = False) -> Comparison:
    """Both versions on the same examples (a shadow, a gate's evaluation set): ``d`` the
    per-example differences of loss, candidate − baseline."""
    x = np.asarray(d, dtype=np.float64)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return decide(math.nan, -math.inf, math.inf, 0, margin, alpha, final=final)
    m = float(x.mean())
    r = radius(n, float(x.var()), alpha, target)
    return decide(m, m - r, m + r, n, margin, alpha, final=final)


@dataclass
class RunningMean:
    """Count, mean and sum of squared deviations (Welford), mergeable (Chan et al.): the
    state a rollout keeps per version and signal, slice by slice.

    >>> a, b = RunningMean(), RunningMean()
    >>> a.add([1.0, 2.0]); b.add([3.0, 4.0, 5.0]); a.merge(b)
    >>> a.n, a.mean, round(a.variance, 6)
    (5, 3.0, 2.0)
    """

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, values: Any) -> None:
        x = np.asarray(values, dtype=np.float64)
        x = x[np.isfinite(x)]
        if len(x):
            self.merge(RunningMean(len(x), float(x.mean()), float(((x - x.mean()) ** 2).sum())))

    def merge(self, other: RunningMean) -> None:
        if other.n == 0:
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean += delta * other.n / n
        self.m2 += other.m2 + delta * delta * self.n * other.n / n
        self.n = n

    @property
    def variance(self) -> float:
        return self.m2 / self.n if self.n else math.nan


def unpaired(candidate: RunningMean, baseline: RunningMean, *, margin: float, alpha: float,
             target: int = DEFAULT_TARGET, final: bool = False) -> Comparison:
    """The versions on different requests (a canary, blue-green, challengers): one
    confidence sequence per version at α / 2 each, combined — d's bounds hold whenever both
    do."""
    n = min(candidate.n, baseline.n)
    if n == 0:
        return decide(math.nan, -math.inf, math.inf, 0, margin, alpha, final=final)
    rc = radius(candidate.n, candidate.variance, alpha / 2, target)
    rb = radius(baseline.n, baseline.variance, alpha / 2, target)
    est = candidate.mean - baseline.mean
    return decide(est, est - rc - rb, est + rc + rb, n, margin, alpha, final=final)


__all__ = ["Comparison", "RunningMean", "decide", "paired", "radius", "rho_squared",
           "unpaired"]
