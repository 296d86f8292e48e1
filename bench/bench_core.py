"""Benchmark of the detection core, with the references a user would otherwise use.

    python bench/bench_core.py                      # driftwarden + scipy-on-raw-windows
    EVIDENTLY_PYTHON=/path/to/venv/bin/python python bench/bench_core.py   # + Evidently

Measured in one run, on one core, for a model with 20 numeric + 5 categorical features:

1. summary updates from batches of 1,000 rows (rows/s and feature-values/s), next to the
   ceiling of merely copying the same batch into a raw ring buffer;
2. sliding a 12-slice window (merge the closed slice, subtract the expired one) and reading
   the window (rebuilding reservoirs from the live slices);
3. evaluating every test of the model on a window of 12,000 rows against a 20,000-row
   baseline — driftwarden (summaries + reservoirs) vs scipy on the raw windows (what a user
   writes by hand: ks_2samp, wasserstein_distance, histogram PSI / JS / Hellinger,
   chi2_contingency) vs Evidently's DataDriftPreset (in its own environment, since it needs
   pandas < 3);
4. resident memory after 10^4, 10^5 and 10^6 rows have flowed through the window.

Evidently runs in a separate interpreter given by EVIDENTLY_PYTHON (e.g. a venv with
``pip install evidently==0.7.23 'pandas<3'``); without it that row says "not run".
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats as sst
from scipy.spatial.distance import jensenshannon

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from driftwarden.detectors.baseline import Baseline  # noqa: E402
from driftwarden.detectors.compare import compare  # noqa: E402
from driftwarden.detectors.decide import DecisionPolicy, calibrate, evaluate  # noqa: E402
from driftwarden.detectors.window import SlidingWindow  # noqa: E402

N_NUM, N_CAT = 20, 5
BATCH = 1000
SLICES = 12
REF_ROWS = 20_000
CATS = np.array(list("abcdefgh"))


def table(rng: np.random.Generator, n: int, shift: float = 0.0) -> dict[str, np.ndarray]:
    cols = {f"n{i}": rng.normal(shift if i == 0 else 0.0, 1.0 + i / 10, n) for i in range(N_NUM)}
    for j in range(N_CAT):
        cols[f"c{j}"] = CATS[rng.integers(0, 8, n)]
    return cols


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def timed(fn, min_seconds: float = 1.5, min_runs: int = 3) -> float:
    """Median seconds per call over repeated runs lasting at least ``min_seconds``."""
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def scipy_reference(ref: dict[str, np.ndarray], cur: dict[str, np.ndarray]) -> None:
    """All tests on raw windows, as a user would write them with scipy/numpy."""
    for name, r in ref.items():
        c = cur[name]
        if r.dtype.kind == "f":
            sst.ks_2samp(r, c)
            sst.wasserstein_distance(r, c)
            edges = np.quantile(r, np.linspace(0, 1, 11))
            pr = np.histogram(np.clip(r, edges[0], edges[-1]), edges)[0] / len(r)
            pc = np.histogram(np.clip(c, edges[0], edges[-1]), edges)[0] / len(c)
        else:
            cats, inv = np.unique(np.concatenate([r, c]), return_inverse=True)
            pr = np.bincount(inv[:len(r)], minlength=len(cats)) / len(r)
            pc = np.bincount(inv[len(r):], minlength=len(cats)) / len(c)
            sst.chi2_contingency(np.vstack([pr * len(r), pc * len(c)]) + 0, correction=False)
        a, b = np.maximum(pr, 1e-4), np.maximum(pc, 1e-4)
        np.sum((b - a) * np.log(b / a))
        jensenshannon(pr, pc, base=2)
        np.sqrt(max(0.0, 1 - np.sum(np.sqrt(pr * pc))))


EVIDENTLY_SCRIPT = r"""
import sys, time, json
import numpy as np, pandas as pd
from evidently import Report, Dataset, DataDefinition
from evidently.presets import DataDriftPreset
ref = pd.read_parquet(sys.argv[1]); cur = pd.read_parquet(sys.argv[2])
dd = DataDefinition(numerical_columns=[c for c in ref if c.startswith("n")],
                    categorical_columns=[c for c in ref if c.startswith("c")])
times = []
for _ in range(3):
    t = time.perf_counter()
    Report([DataDriftPreset()]).run(current_data=Dataset.from_pandas(cur, data_definition=dd),
                                    reference_data=Dataset.from_pandas(ref, data_definition=dd))
    times.append(time.perf_counter() - t)
import evidently
print(json.dumps({"seconds": sorted(times)[1], "version": evidently.__version__}))
"""


def evidently_reference(ref: dict[str, np.ndarray], cur: dict[str, np.ndarray]) -> str:
    python = os.environ.get("EVIDENTLY_PYTHON")
    if not python:
        return "not run (set EVIDENTLY_PYTHON)"
    import pyarrow as pa
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(pa.table(ref), f"{tmp}/ref.parquet")
        pq.write_table(pa.table(cur), f"{tmp}/cur.parquet")
        script = Path(tmp) / "ev.py"
        script.write_text(EVIDENTLY_SCRIPT)
        out = subprocess.run([python, str(script), f"{tmp}/ref.parquet", f"{tmp}/cur.parquet"],
                             capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        return "failed: " + (out.stderr.strip().splitlines() or ["?"])[-1]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return f"{res['seconds'] * 1000:,.1f} ms  (Evidently {res['version']}, DataDriftPreset)"


def main() -> None:
    rng = np.random.default_rng(0)
    rows: list[tuple[str, str, str]] = []
    ref_cols = table(rng, REF_ROWS)
    base = Baseline.fit(ref_cols, seed=0)
    assert list(base.types.values()).count("numeric") == N_NUM

    # 1. summary updates -------------------------------------------------------------------
    batches = [table(rng, BATCH) for _ in range(20)]
    summary = base.new_summary()
    it = iter(range(10**9))

    def update() -> None:
        summary.update_columns(batches[next(it) % 20], n_rows=BATCH)

    t_update = timed(update)
    ring = {k: np.empty(BATCH * SLICES, dtype=v.dtype) for k, v in batches[0].items()}

    def copy_only() -> None:
        b = batches[next(it) % 20]
        for k, v in b.items():
            ring[k][:BATCH] = v

    t_copy = timed(copy_only)
    fv = BATCH * (N_NUM + N_CAT)
    rows.append(("summary update, batch of 1,000 rows × 25 features",
                 f"{t_update * 1e3:.3f} ms = {BATCH / t_update:,.0f} rows/s = "
                 f"{fv / t_update / 1e6:.2f} M feature-values/s",
                 f"raw copy into a ring buffer: {t_copy * 1e3:.3f} ms "
                 f"({fv / t_copy / 1e6:.1f} M values/s)"))

    # 2. sliding ------------------------------------------------------------------------------
    window = SlidingWindow(lambda: base.new_summary(), slices=SLICES, slice_rows=BATCH)
    for b in batches[:SLICES]:
        window.add(b)
    slices = [base.new_summary() for _ in range(2)]
    for s, b in zip(slices, batches[:2]):
        s.update_columns(b)
    total = window.summary()

    def slide() -> None:
        total.merge(slices[0], samples=False).subtract(slices[1], samples=False)

    t_slide = timed(slide)
    t_read = timed(window.summary)
    rows.append(("slide the window (merge new slice, subtract expired)",
                 f"{t_slide * 1e3:.3f} ms", "recomputing 12k raw rows' histograms: see 3."))
    rows.append(("read the window (rebuild reservoirs from 12 slices)", f"{t_read * 1e3:.3f} ms",
                 ""))

    # 3. evaluation -----------------------------------------------------------------------------
    t0 = time.perf_counter()
    cal = calibrate(base, BATCH * SLICES, n_sim=200, seed=1)
    t_cal = time.perf_counter() - t0
    cur_cols = table(rng, BATCH * SLICES, shift=0.5)
    w = base.new_summary()
    w.update_columns(cur_cols)
    policy = DecisionPolicy()

    def evaluate_all() -> None:
        evaluate(compare(base, w), policy, cal)

    t_eval = timed(evaluate_all)
    t_scipy = timed(lambda: scipy_reference(ref_cols, cur_cols), min_seconds=3.0)
    ev = evaluate(compare(base, w), policy, cal)
    assert ev.drift and ev.features == ("n0",), ev.features
    rows.append(("evaluate all tests, 25 features, 12k-row window vs 20k baseline",
                 f"{t_eval * 1e3:.2f} ms (verdict: {', '.join(ev.features)} drifted)",
                 f"scipy on raw windows: {t_scipy * 1e3:,.1f} ms "
                 f"({t_scipy / t_eval:.0f}× slower)"))
    rows.append(("same, Evidently", "", evidently_reference(ref_cols, cur_cols)))
    rows.append(("calibration (one-off per baseline and window size, 200 windows)",
                 f"{t_cal:.2f} s", ""))

    # 4. memory ---------------------------------------------------------------------------------
    window = SlidingWindow(lambda: base.new_summary(), slices=SLICES, slice_rows=BATCH)
    marks = {10**4: 0.0, 10**5: 0.0, 10**6: 0.0}
    seen = 0
    while seen < 10**6:
        window.add(batches[(seen // BATCH) % 20])
        seen += BATCH
        if seen in marks:
            window.summary()
            gc.collect()
            marks[seen] = rss_mib()
    rows.append(("resident memory after 10^4 / 10^5 / 10^6 rows through the window",
                 " / ".join(f"{v:.1f}" for v in marks.values()) + " MiB",
                 "growth 10^5 → 10^6: " + f"{marks[10**6] - marks[10**5]:+.1f} MiB"))

    width = max(len(r[0]) for r in rows)
    print(f"driftwarden detection-core benchmark — Python {sys.version.split()[0]}, "
          f"numpy {np.__version__}, {os.cpu_count()} cores (one used)")
    print(f"{'measurement':<{width}}  {'driftwarden':<60}  reference")
    print("-" * (width + 100))
    for name, ours, ref in rows:
        print(f"{name:<{width}}  {ours:<60}  {ref}")


if __name__ == "__main__":
    main()
