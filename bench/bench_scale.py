"""Per-stage costs of the two-stage path, in process (no broker), for the README's N-worker
estimate.

    python bench/bench_scale.py [--records 200000] [--models 100] [--features 25]

In one run, on the same messages (single-record JSON messages, 20 numeric features, one model,
1,000 records per second of event time, 5-second slices, after the warm-up):

(a) the reference: ``orjson.loads`` of every message (the least any consumer does);
(b) stage 1 alone — what every worker does for its input partitions: decode, admit, add to
    the partial builders, publish partials, watermarks and join rows (``StreamService`` with
    ``loopback=False``: the outputs are built, not handled);
(c) the whole path in one process — stage 1, the join and stage 2 (merge, windows, tests,
    verdicts): ``loopback=True``, what one worker holding every partition does per record.

Then the message sizes: a partial summary of one 5-second slice (binary msgpack and JSON) for
``--features`` numeric features, and the watermark; and the resident memory of one process
monitoring ``--models`` models of ``--features`` features each after their warm-ups (the
stage-2 state of that many models: baselines, windows, calibrations).

Ratios are what to compare across machines (they differ ~3x in absolute speed).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from driftwarden.config import load_settings  # noqa: E402
from driftwarden.stream.output import RawMessage  # noqa: E402
from driftwarden.stream.service import StreamService  # noqa: E402

WARMUP = 2000
ENV = {"DRIFTWARDEN_DETECTION__WARMUP": str(WARMUP),
       "DRIFTWARDEN_DETECTION__SLICE_SECONDS": "5",
       "DRIFTWARDEN_DETECTION__CALIBRATION_SIMS": "50",
       "DRIFTWARDEN_DETECTION__IDLE_CLOSE_SECONDS": "0",
       "DRIFTWARDEN_DETECTION__ALLOWED_LATENESS": "0"}


def messages(n: int, n_features: int, model: str = "bench", start: int = 0,
             seed: int = 0) -> list[RawMessage]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(start, start + n):
        rec = {"model": model, "version": "1", "id": f"{model}-{i}", "ts": 1000 + i / 1000,
               "features": {f"f{k}": float(v) for k, v in
                            enumerate(rng.normal(size=n_features))},
               "prediction": float(rng.random())}
        # offsets: a message's identity (a worker skips what it has taken)
        out.append(RawMessage(orjson.dumps(rec), [], "driftwarden.predictions", 0, i,
                              time.time()))
    return out


def rate(svc_or_none: StreamService | None, msgs: list[RawMessage], batch: int = 500) -> float:
    """Records per second through ``svc.handle_predictions`` (or orjson alone)."""
    t0 = time.perf_counter()
    for j in range(0, len(msgs), batch):
        part = msgs[j:j + batch]
        if svc_or_none is None:
            for m in part:
                orjson.loads(m.value)
        else:
            svc_or_none.handle_predictions(part)
    return len(msgs) / (time.perf_counter() - t0)


def rss_mib() -> float:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--models", type=int, default=100)
    ap.add_argument("--features", type=int, default=25)
    ap.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_only:
        memory(args.models, args.features)
        return
    settings = load_settings(env=ENV)

    # throughput: warm every service up first, then time the same steady-state messages
    warm = messages(WARMUP + 6000, 20)
    msgs = messages(args.records, 20, start=len(warm))
    rows = []
    ceiling = rate(None, msgs)
    rows.append(("(a) orjson.loads per message", ceiling))
    for label, loopback in (("(b) stage 1 alone (loopback=False)", False),
                            ("(c) stage 1 + join + stage 2 (loopback=True)", True)):
        svc = StreamService(settings, loopback=loopback)
        svc.handle_predictions(warm)
        if not loopback:  # stage 1 bins from the baseline stage 2 would have published
            ref = StreamService(settings)
            ref.handle_predictions(warm)
            for (m, v), mon in ref.monitors.items():
                svc.set_baseline(m, v, mon.baseline)
        rows.append((label, rate(svc, msgs)))
    print(f"\nrecords/s, single-record messages, 20 features, {args.records:,} records "
          "after the warm-up")
    print(f"{'path':<48}{'records/s':>12}{'vs (a)':>9}")
    for label, r in rows:
        print(f"{label:<48}{r:>12,.0f}{r / ceiling:>9.2f}")
    stage1, whole = rows[1][1], rows[2][1]
    print(f"stage 2 + join per record (from (c) - (b)): "
          f"{(1 / whole - 1 / stage1) * 1e6:,.1f} us; stage 1: {1 / stage1 * 1e6:,.1f} us")

    # message sizes: one 5-second slice of one source, n features
    from driftwarden.partials import Partial, Watermark, encode

    svc = StreamService(settings, loopback=False)
    ref = StreamService(settings)
    warm = messages(WARMUP + 6000, args.features, seed=1)
    ref.handle_predictions(warm)
    for (m, v), mon in ref.monitors.items():
        svc.set_baseline(m, v, mon.baseline)
    out = svc.handle_predictions(messages(20_000, args.features, start=len(warm), seed=2))
    from driftwarden.partials import decode

    sizes, marks = [], []
    for o in out:
        if o.topic != settings.topics.summaries:
            continue
        msg = decode(o.value)
        if isinstance(msg, Partial) and msg.summary is not None:
            sizes.append((len(encode(msg, binary=True)), len(encode(msg)), msg.rows))
        elif isinstance(msg, Watermark):
            marks.append(len(o.value))
    if sizes:
        b, j, r = (float(np.median([s[i] for s in sizes])) for i in range(3))
        print(f"\npartial summary of one 5 s slice, {args.features} numeric features + the "
              f"prediction, {r:,.0f} records: {b / 1024:,.1f} KiB msgpack, {j / 1024:,.1f} KiB "
              f"JSON ({b / r:,.1f} bytes per record in the slice); a watermark "
              f"{np.median(marks):,.0f} bytes")

    # memory: many models' state in a process of its own (this one holds the parts above)
    import subprocess

    got = subprocess.run([sys.executable, __file__, "--memory-only", "--models",
                          str(args.models), "--features", str(args.features)],
                         capture_output=True, text=True, check=True)
    print(got.stdout, end="")


def memory(n_models: int, n_features: int) -> None:
    """RSS of a fresh process before and after monitoring ``n_models`` models."""
    small = load_settings(env={**ENV, "DRIFTWARDEN_DETECTION__WARMUP": "1000",
                               "DRIFTWARDEN_DETECTION__SLICE_SECONDS": "0.5"})
    gc.collect()
    before = rss_mib()
    svc = StreamService(small, max_models=n_models)
    for k in range(n_models):
        svc.handle_predictions(messages(3000, n_features, model=f"m{k:03d}",
                                        start=3000 * k, seed=k))
    gc.collect()
    after = rss_mib()
    print(f"\nresident memory of one process with {len(svc.monitors)} models x {n_features} "
          f"features (warm-up 1,000, then 2,000 records in 0.5 s slices): {after:,.0f} MiB; "
          f"{before:,.0f} MiB before the models ({(after - before) / max(1, n_models):,.2f} "
          "MiB per model)")


if __name__ == "__main__":
    main()
