"""Concept-drift quality on river's synthetic streams: false alarms and detection delay.

For each family (SEA, Agrawal, hyperplane) and seed, a Hoeffding tree trained on the first
2,000 samples and then deployed — frozen, as a served model is (an online learner's own error
moves as it restructures, which is not a concept change) — predicts 20,000 samples, with an
abrupt concept change at 10,000 (one generator, then another: another SEA variant, Agrawal
function or hyperplane) or without one (the control). Its errors go to a driftwarden
ModelMonitor in calls of 100 outcomes and, as the reference measured in the same run, to
river's ADWIN directly; ``dw-slices`` is the worker's path — each 100 outcomes one merged
outcome slice, its errors replayed to the detector from the counts. Counted: runs with an
alarm before the change (false alarms: every alarm of a control run counts), changes found,
and the delay.

    python bench/bench_concept.py [--seeds 10] [--n 20000]

Prints a table; the figures go to the README's concept-drift section.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from river import drift, tree  # noqa: E402
from river.datasets import synth  # noqa: E402

from driftwarden.config import Detection  # noqa: E402
from driftwarden.detectors.summary import OutcomeSummary  # noqa: E402
from driftwarden.partials import replay_errors  # noqa: E402
from driftwarden.stream.monitor import ModelMonitor  # noqa: E402


def stream(family: str, seed: int, n: int, change: int | None):
    def gen(variant: int):
        if family == "sea":
            return synth.SEA(variant=variant, seed=seed)
        if family == "agrawal":
            return synth.Agrawal(classification_function=variant, seed=seed)
        return synth.Hyperplane(seed=seed + 100 * variant, n_features=10)

    before, after = (0, 2) if family != "hyperplane" else (0, 1)
    if change is None:
        return gen(before).take(n)
    # an abrupt change: one generator, then the other (river's ConceptDriftStream overflows
    # at width 1)
    return itertools.chain(gen(before).take(change), gen(after).take(n - change))


def run(family: str, seed: int, n: int, change: int | None, warm: int
        ) -> tuple[list[int], list[int]]:
    """Outcome indexes of driftwarden's concept onsets and of raw ADWIN's detections; the
    model learns from the first ``warm`` samples only, and is monitored after them."""
    model = tree.HoeffdingTreeClassifier()
    monitor = ModelMonitor("m", "1", Detection())
    merged = ModelMonitor("m", "1", Detection())  # the worker's path: merged outcome slices
    adwin = drift.ADWIN()
    ours, raw, slices = [], [], []
    preds, labels = [], []
    for i, (x, y) in enumerate(stream(family, seed, n, change)):
        if i < warm:
            model.learn_one(x, y)
            continue
        p = model.predict_one(x)
        p = 0 if p is None else p
        adwin.update(float(p != y))
        if adwin.drift_detected:
            raw.append(i)
        preds.append(p)
        labels.append(y)
        if len(preds) == 100:
            for e in monitor.add_outcomes(preds, labels, ts=float(i)):
                if e["state"] == "onset":
                    ours.append(i)
            # one slice of 100 outcomes, as stage 2 gets it: counts, errors replayed from them
            summary = OutcomeSummary()
            summary.update(np.array(preds, dtype=float), np.array(labels, dtype=float))
            errors = sum(float(a != b) for a, b in zip(preds, labels))
            for e in merged.add_outcome_slice(i // 100, summary,
                                              replay_errors(len(preds), errors, None)):
                if e["state"] == "onset":
                    slices.append(i)
            preds, labels = [], []
    return ours, raw, slices


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--n", type=int, default=20_000)
    args = ap.parse_args()
    change = args.n // 2
    warm = 2_000  # training samples; the model is deployed (frozen) after them
    rows = []
    t0 = time.perf_counter()
    for family in ("sea", "agrawal", "hyperplane"):
        stats = {k: {"false": 0, "found": 0, "delays": []}
                 for k in ("driftwarden", "dw-slices", "adwin")}
        for seed in range(args.seeds):
            for with_change in (True, False):
                ours, raw, merged = run(family, seed, args.n,
                                        change if with_change else None, warm)
                for name, hits in (("driftwarden", ours), ("dw-slices", merged), ("adwin", raw)):
                    s = stats[name]
                    early = [h for h in hits if h < change] if with_change else hits
                    s["false"] += bool(early)
                    if with_change:
                        late = [h for h in hits if h >= change]
                        if late:
                            s["found"] += 1
                            s["delays"].append(late[0] - change)
        for name, s in stats.items():
            d = s["delays"]
            rows.append((family, name, f"{s['false']}/{2 * args.seeds}",
                         f"{s['found']}/{args.seeds}",
                         f"{statistics.median(d):.0f}" if d else "–",
                         f"{max(d):.0f}" if d else "–"))
    print(f"{'stream':<11} {'detector':<12} {'runs with a false alarm':>24} "
          f"{'changes found':>14} {'median delay':>13} {'max delay':>10}")
    for r in rows:
        print(f"{r[0]:<11} {r[1]:<12} {r[2]:>24} {r[3]:>14} {r[4]:>13} {r[5]:>10}")
    print(f"({args.seeds} seeds x (a change at {change:,} + a control run) per stream, "
          f"{args.n:,} samples, the model trained on the first {warm:,}; "
          f"{time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
