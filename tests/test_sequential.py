"""Anytime-valid comparisons (driftwarden/detectors/sequential.py) on simulated rollouts with
known truth, looked at after every slice: false verdicts stay within the level however often
one looks — where a fixed-sample test repeated at every slice does not — and real
differences are decided."""

from __future__ import annotations

import math

import numpy as np
import pytest

from driftwarden.detectors.sequential import RunningMean, paired, radius, unpaired

ALPHA, SLICE, SLICES = 0.05, 200, 50


def rollouts(rng, runs, d_true, disagree=0.06, slices=SLICES):
    """Per-example paired loss differences (candidate − baseline error) of ``runs``
    rollouts: the versions disagree on ``disagree`` of the examples, and where they do the
    candidate is the one wrong with probability 1/2 + d_true / (2 · disagree)."""
    n = SLICE * slices
    differ = rng.random((runs, n)) < disagree
    cand_wrong = rng.random((runs, n)) < 0.5 + d_true / (2 * disagree)
    return np.where(differ, np.where(cand_wrong, 1.0, -1.0), 0.0)


def first_verdicts(d, margin, alpha=ALPHA):
    """The first verdict of each run, looking after every slice (None: none by the end),
    and the samples it took."""
    out = []
    for row in d:
        verdict = (None, None)
        for k in range(1, len(row) // SLICE + 1):
            c = paired(row[:k * SLICE], margin=margin, alpha=alpha)
            if c.verdict != "continue":
                verdict = (c.verdict, c.n)
                break
        out.append(verdict)
    return out


def fixed_sample_check(d, margin, z=1.96):
    """What a repeated fixed-sample check does: a normal interval at every slice, stopping
    at the first one that excludes the margin."""
    n = np.arange(1, SLICES + 1) * SLICE
    s = np.cumsum(d, axis=1)[:, n - 1]
    s2 = np.cumsum(d * d, axis=1)[:, n - 1]
    mean = s / n
    sd = np.sqrt(np.maximum(s2 / n - mean ** 2, 1e-12))
    half = z * sd / np.sqrt(n)
    return ((mean - half > margin) | (mean + half < margin)).any(axis=1)


def test_equal_versions_rarely_get_a_verdict_however_often_one_looks():
    """(a) 300 rollouts of a candidate equal to its baseline, margin 0, a look after every
    one of 50 slices: a promote or a rollback is a false verdict either way."""
    rng = np.random.default_rng(1)
    d = rollouts(rng, 300, 0.0)
    verdicts = first_verdicts(d, margin=0.0)
    false = sum(v is not None for v, _ in verdicts) / len(verdicts)
    # 3 binomial standard deviations above the level: a valid sequence passes, one that
    # peeks like a fixed-sample test fails (next line)
    assert false <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / len(verdicts))
    peeking = fixed_sample_check(d, 0.0).mean()
    assert peeking > 2 * ALPHA, peeking  # the same data, checked the usual way


def test_a_candidate_two_points_worse_is_rolled_back_and_never_promoted():
    """(b) 100 rollouts of up to 30,000 labelled examples, the candidate errs 2 points more,
    margin 1 point."""
    rng = np.random.default_rng(2)
    verdicts = first_verdicts(rollouts(rng, 100, 0.02, slices=150), margin=0.01)
    kinds = [v for v, _ in verdicts]
    assert kinds.count("promote") <= 2  # promote-when-worse: within the level's share
    assert kinds.count("rollback") >= 95
    samples = sorted(n for v, n in verdicts if v == "rollback")
    print("samples to rollback: median", samples[len(samples) // 2], "p90",
          samples[len(samples) * 9 // 10])
    assert samples[len(samples) // 2] <= 10_000  # the median samples to decision (README)


def test_a_better_candidate_is_promoted():
    """(c) the candidate errs 1 point less; non-inferiority margin 0."""
    rng = np.random.default_rng(3)
    kinds = [v for v, _ in first_verdicts(rollouts(rng, 100, -0.01), margin=0.0)]
    assert kinds.count("rollback") <= 2 and kinds.count("promote") >= 90


def test_unpaired_canary_bounds_hold_and_decide():
    """A 10 % canary against the other 90 % (different requests): equal error rates give
    rare false verdicts over 200 rollouts; a candidate 6 points worse is rolled back (the
    canary's 20 samples a slice are what limit it)."""
    rng = np.random.default_rng(4)

    def run(p_cand, p_base, slices=SLICES):
        cand, base = RunningMean(), RunningMean()
        for _ in range(slices):
            cand.add(rng.random(SLICE // 10) < p_cand)
            base.add(rng.random(SLICE * 9 // 10) < p_base)
            c = unpaired(cand, base, margin=0.0, alpha=ALPHA)
            if c.verdict != "continue":
                return c.verdict
        return None

    equal = [run(0.1, 0.1) for _ in range(200)]
    assert sum(v is not None for v in equal) / len(equal) <= ALPHA + 0.05
    worse = [run(0.16, 0.10, slices=200) for _ in range(30)]
    assert worse.count("rollback") >= 20 and worse.count("promote") == 0


def test_running_mean_merges_like_one_pass():
    rng = np.random.default_rng(5)
    x = rng.normal(3.0, 2.0, 1000)
    parts = RunningMean()
    for chunk in np.array_split(x, 7):
        part = RunningMean()
        part.add(chunk)
        parts.merge(part)
    assert parts.n == 1000 and parts.mean == pytest.approx(x.mean())
    assert parts.variance == pytest.approx(x.var())


def test_the_radius_is_wider_than_a_fixed_sample_interval_and_shrinks():
    for n in (200, 1000, 10_000, 100_000):
        fixed = 1.96 * math.sqrt(0.09 / n)
        assert radius(n, 0.09, ALPHA) > fixed
    assert radius(100_000, 0.09, ALPHA) < radius(10_000, 0.09, ALPHA) / 2.5


def test_no_verdict_before_the_minimum_samples_and_a_final_look_is_inconclusive():
    few = paired(np.full(50, 1.0), margin=0.0, alpha=ALPHA)
    assert few.verdict == "continue"
    end = paired(np.zeros(5000), margin=0.0, alpha=ALPHA, final=True)
    assert end.verdict == "inconclusive" and end.estimate == 0.0
