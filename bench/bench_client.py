"""Cost of ``driftwarden.client.Client.log`` on a model server's request path.

    python bench/bench_client.py [--calls 200000]

In one run, on one embedded broker, for the same records (20 numeric features, a prediction,
an id, a latency):

(floor) appending the record's tuple to a deque — what any buffering client pays at least;
(naive) what a model server does with a plain producer: ``orjson.dumps`` of the record and a
    confluent-kafka ``produce`` per call (librdkafka batches in its own thread);
(client) ``Client.log`` with its sender thread running and sending column batches to the
    broker.

Each is timed over ``--calls`` calls, best of 5 repetitions (microseconds per call), and
``client / naive`` is the ratio that carries across machines. The sender's throughput (records
delivered per second while the calls run) is printed too.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import deque
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from driftwarden.client import Client  # noqa: E402
from driftwarden.embedded import EmbeddedBroker  # noqa: E402

N_FEATURES = 20


def records(n: int) -> list[dict]:
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, N_FEATURES))
    return [{f"f{k}": float(v) for k, v in enumerate(row)} for row in x]


def per_call(fn, feats: list[dict], reps: int = 5) -> float:
    """Best-of-``reps`` microseconds per call of ``fn(i, features)``."""
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        for i, f in enumerate(feats):
            fn(i, f)
        best = min(best, (time.perf_counter() - t) / len(feats))
    return best * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=200_000)
    args = ap.parse_args()
    feats = records(args.calls)
    rows = []
    with EmbeddedBroker() as broker:
        bs = broker.bootstrap_servers

        buf: deque = deque(maxlen=10 * args.calls)
        floor = per_call(lambda i, f: buf.append((1.7e9, i, "1", f, 0.5, 3.0, None)), feats)

        from confluent_kafka import Producer

        p = Producer({"bootstrap.servers": bs, "linger.ms": 20, "log.connection.close": False,
                      "queue.buffering.max.messages": 2_000_000})

        def naive(i: int, f: dict) -> None:
            p.produce("bench.client.naive", value=orjson.dumps(
                {"model": "m", "version": "1", "id": i, "ts": 1.7e9, "features": f,
                 "prediction": 0.5, "latency_ms": 3.0}))
            p.poll(0)

        naive_us = per_call(naive, feats)
        p.flush(60)

        dw = Client(bs, model="m", version="1", topic="bench.client", batch_records=1000,
                    max_buffered=10 * args.calls)
        t0 = time.perf_counter()
        client_us = per_call(lambda i, f: dw.log(f, 0.5, id=i, latency_ms=3.0, ts=1.7e9),
                             feats)
        stats = dw.close(timeout=120)
        took = time.perf_counter() - t0
    rows.append(("deque.append of the record (floor)", f"{floor:.2f} µs", ""))
    rows.append(("orjson + producer.produce per call (naive)", f"{naive_us:.2f} µs", ""))
    rows.append(("Client.log (sender thread running)", f"{client_us:.2f} µs",
                 f"client / naive {client_us / naive_us:.2f}; client / floor "
                 f"{client_us / floor:.1f}"))
    rows.append(("records delivered by the client", f"{stats['sent']:,}",
                 f"{stats['sent'] / took:,.0f} records/s incl. close; dropped "
                 f"{stats['dropped']:,}, failed {stats['failed']:,}"))
    print(f"driftwarden client benchmark — {N_FEATURES} features per record, {args.calls:,} "
          f"calls × 5, Tansu broker, {os.cpu_count()} cores")
    for r in rows:
        print(f"{r[0]:<46} {r[1]:<14} {r[2]}")


if __name__ == "__main__":
    main()
