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

(encoding) the choice of the column batch's encoding, in process: a batch of 1,000 such
records as column JSON (what the client sends; decoded by the worker's ``decode_predictions``
into a RecordBatch) against Arrow IPC (pyarrow: the ids as Python strings, the features as
one float64 matrix) — bytes, and microseconds per record to encode and to decode.
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


def encodings() -> list[tuple[str, str, str]]:
    """Column JSON against Arrow IPC for one batch of 1,000 records (see the docstring)."""
    import numpy as np
    import pyarrow as pa

    from driftwarden.schema import decode_predictions

    feats = records(1000)
    cols = {"id": [f"r{i}" for i in range(1000)], "ts": [1.7e9 + i for i in range(1000)],
            "prediction": [0.5] * 1000,
            "features": {f"f{k}": [f[f"f{k}"] for f in feats] for k in range(N_FEATURES)}}
    body = {"model": "m", "version": "1", "columns": cols}

    def arrow_table():
        return pa.table({"id": cols["id"], "ts": cols["ts"], "prediction": cols["prediction"],
                         **cols["features"]})

    def arrow_encode():
        sink = pa.BufferOutputStream()
        table = arrow_table()
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
        return sink.getvalue().to_pybytes()

    ipc, js = arrow_encode(), orjson.dumps(body)

    def arrow_decode():
        t = pa.ipc.open_stream(ipc).read_all()
        return t.column("id").to_pylist(), np.column_stack(
            [t.column(f"f{k}").to_numpy() for k in range(N_FEATURES)])

    def per_record(fn) -> float:
        return per_call(lambda i, f: fn(), [{}] * 200) / 1000

    dec_j = per_record(lambda: decode_predictions(js, now=0.0, clock=2e9))
    dec_a = per_record(arrow_decode)
    return [("column JSON: bytes / encode / decode per record",
             f"{len(js) / 1000:.0f} B", f"{per_record(lambda: orjson.dumps(body)):.2f} µs / "
             f"{dec_j:.2f} µs"),
            ("Arrow IPC: bytes / encode / decode per record", f"{len(ipc) / 1000:.0f} B",
             f"{per_record(arrow_encode):.2f} µs / {dec_a:.2f} µs  (decode JSON / Arrow "
             f"{dec_j / dec_a:.1f})")]


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
    rows += encodings()
    print(f"driftwarden client benchmark — {N_FEATURES} features per record, {args.calls:,} "
          f"calls × 5, Tansu broker, {os.cpu_count()} cores")
    for r in rows:
        print(f"{r[0]:<46} {r[1]:<14} {r[2]}")


if __name__ == "__main__":
    main()
