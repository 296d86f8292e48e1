"""Simulated rollouts with known truth: false verdicts and samples to decision of the
anytime-valid comparison (driftwarden/detectors/sequential.py) against the usual repeated
fixed-sample check, both looking after every slice.

    python bench/bench_rollout.py [--runs 1000] [--canary-runs 200]

Live canaries (the stream's Rollout, driftwarden/detectors/rollout.py, fed slice by slice):
500 requests a slice, 10 % to the candidate, baseline error 10 %, 300 slices, margin 1 point;
the candidate equal, exactly at the margin (promote is false), 2 points worse, 2 points
better. "fixed" is a normal 95 % interval on the difference of the two error rates,
recomputed at every slice.

Paired rollouts (a shadow, a gate's evaluation set): the versions disagree on 6 % of the
examples; 200 labelled examples per slice, 50 slices (10,000 examples) — 150 slices for the
worse candidate. Rows: a candidate equal to its baseline (margin 0: any verdict is false), a
candidate 2 points worse (margin 1 point: promote is false, rollback right), 1 point better
(margin 0). "fixed" is a normal 95 % interval recomputed at every slice, stopping at the
first that excludes the margin — what repeated threshold checks amount to.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from driftwarden.config import RolloutSpec  # noqa: E402
from driftwarden.detectors.rollout import Rollout  # noqa: E402
from driftwarden.detectors.sequential import decide, radius  # noqa: E402

SLICE = 200


def rollouts(rng, runs, d_true, slices, disagree=0.06):
    n = SLICE * slices
    differ = rng.random((runs, n)) < disagree
    cand_wrong = rng.random((runs, n)) < 0.5 + d_true / (2 * disagree)
    return np.where(differ, np.where(cand_wrong, 1.0, -1.0), 0.0)


def sequential(d, margin, alpha=0.05):
    """The module's bounds at every look (running mean and variance from cumulative sums,
    the radius and the verdict from driftwarden.detectors.sequential)."""
    n = np.arange(1, d.shape[1] // SLICE + 1) * SLICE
    mean = np.cumsum(d, axis=1)[:, n - 1] / n
    var = np.maximum(np.cumsum(d * d, axis=1)[:, n - 1] / n - mean ** 2, 0.0)
    out = []
    for i in range(len(d)):
        got = (None, None)
        for k, nk in enumerate(n.tolist()):
            r = radius(nk, float(var[i, k]), alpha)
            c = decide(float(mean[i, k]), mean[i, k] - r, mean[i, k] + r, nk, margin, alpha)
            if c.verdict != "continue":
                got = (c.verdict, nk)
                break
        out.append(got)
    return out


def fixed(d, margin, z=1.96):
    out = []
    n = np.arange(1, d.shape[1] // SLICE + 1) * SLICE
    s = np.cumsum(d, axis=1)[:, n - 1]
    s2 = np.cumsum(d * d, axis=1)[:, n - 1]
    mean = s / n
    half = z * np.sqrt(np.maximum(s2 / n - mean ** 2, 1e-12)) / np.sqrt(n)
    for i in range(len(d)):
        hit = np.nonzero((mean[i] - half[i] > margin) | (mean[i] + half[i] < margin))[0]
        if not len(hit):
            out.append((None, None))
        else:
            k = hit[0]
            out.append(("rollback" if mean[i, k] - half[i, k] > margin else "promote",
                        int(n[k])))
    return out


def summary(got, wrong):
    verdicts = [v for v, _ in got]
    false = sum(v in wrong for v in verdicts) / len(got)
    right = [n for v, n in got if v is not None and v not in wrong]
    med = int(np.median(right)) if right else None
    return false, (sum(v is not None and v not in wrong for v in verdicts) / len(got)), med


def canary(seed, cand_error, slices=300, per_slice=500, share=0.10, base_error=0.10,
           margin=0.01):
    """One live canary judged by the stream's Rollout and, on the same counts, by a fixed
    95 % interval at every slice: ((verdict, candidate samples), (verdict, samples))."""
    rng = np.random.default_rng(seed)
    r = Rollout("bench", RolloutSpec(model="m", baseline="1", candidates=["2"], margin=margin,
                                     min_samples=300), slice_seconds=60.0)
    seq = fix = (None, None)
    nb = nc = eb = ec = 0
    for sid in range(slices):
        n_c = int(rng.binomial(per_slice, share))
        errs_b = rng.random(per_slice - n_c) < base_error
        errs_c = rng.random(n_c) < cand_error
        if seq[0] is None:
            r.observe_outcomes("1", sid, errs_b * 1.0)
            r.observe_outcomes("2", sid, errs_c * 1.0)
            r.advance(sid + 1, sid + 1)  # stage 2's clocks: this slice is final
            for d in r.evaluate():
                seq = (d.verdict, d.samples["2"])
        nb, nc = nb + len(errs_b), nc + n_c
        eb, ec = eb + int(errs_b.sum()), ec + int(errs_c.sum())
        if fix[0] is None and min(nb, nc) >= 300:
            pb, pc = eb / nb, ec / nc
            half = 1.96 * np.sqrt(pb * (1 - pb) / nb + pc * (1 - pc) / nc)
            if pc - pb - half > margin:
                fix = ("rollback", nc)
            elif pc - pb + half < margin:
                fix = ("promote", nc)
        if seq[0] is not None and fix[0] is not None:
            break
    return seq, fix


def canary_rows(runs):
    rows = []
    for name, cand, wrong in (("equal to baseline", 0.10, {"rollback"}),
                              ("exactly at the margin", 0.11, {"promote"}),
                              ("2 points worse", 0.12, {"promote"}),
                              ("2 points better", 0.08, {"rollback"})):
        got = [canary(1000 * i + int(cand * 100), cand) for i in range(runs)]
        for method, k in (("sequential (driftwarden)", 0), ("fixed 95 % interval", 1)):
            false, right, med = summary([g[k] for g in got], wrong)
            rows.append((name, method, false, right, med))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--canary-runs", type=int, default=200)
    args = ap.parse_args()
    rng = np.random.default_rng(7)
    rows = []
    for name, d_true, margin, slices, wrong in (
            ("equal to baseline, margin 0", 0.0, 0.0, 50, {"promote", "rollback"}),
            ("2 points worse, margin 1 point", 0.02, 0.01, 150, {"promote"}),
            ("1 point better, margin 0", -0.01, 0.0, 50, {"rollback"})):
        d = rollouts(rng, args.runs, d_true, slices)
        for method, got in (("sequential (driftwarden)", sequential(d, margin)),
                            ("fixed 95 % interval, every slice", fixed(d, margin))):
            false, right, med = summary(got, wrong)
            rows.append((name, method, false, right, med))
    print(f"simulated rollouts: {args.runs} per row, {SLICE} examples per slice, a look after "
          "every slice, alpha 0.05")
    print(f"{'candidate':<34} {'check':<34} {'false verdicts':>15} {'right verdicts':>15} "
          f"{'median samples':>15}")
    for name, method, false, right, med in rows:
        print(f"{name:<34} {method:<34} {false:>15.3f} {right:>15.3f} "
              f"{med if med is not None else '–':>15}")


    print()
    print(f"live canaries: {args.canary_runs} per row, 500 requests a slice, 10 % to the "
          "candidate, baseline error 10 %, margin 1 point, a look after every slice")
    print(f"{'candidate':<34} {'check':<34} {'false verdicts':>15} {'right verdicts':>15} "
          f"{'median candidate samples':>25}")
    for name, method, false, right, med in canary_rows(args.canary_runs):
        print(f"{name:<34} {method:<34} {false:>15.3f} {right:>15.3f} "
              f"{med if med is not None else '–':>25}")


if __name__ == "__main__":
    main()
