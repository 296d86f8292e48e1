"""What hostile input costs the worker: good records/s with and without 10 % hostile messages.

    python bench/bench_hostile.py [--records 100000]

In one run, on one embedded broker, the worker (its own process) consumes from a backlog:

(clean)   ``--records`` good single-record messages (20 numeric features);
(hostile) the same good messages with 10 % more messages mixed in at random places: the fuzz
          corpus's cases that are dead-lettered whole (deep nesting, broken UTF-8, integers
          beyond a double, too many features, names and values over their bounds, ...) and
          generated ones.

Printed: good records/s of each run after the warm-up and their ratio (the fault suite's R12
expects ≥ 0.8; it is measured here, not asserted in a test: machines differ ~3× in speed,
ratios much less), and the worker's RSS at the end of each.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
from confluent_kafka import Producer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_stream import get, record, rss_mib, start_worker  # noqa: E402

from driftwarden.config import load_settings  # noqa: E402
from driftwarden.embedded import EmbeddedBroker  # noqa: E402
from driftwarden.kafka import ensure_topics  # noqa: E402
from driftwarden.stream.service import RawMessage, StreamService  # noqa: E402

CORPUS = HERE.parent / "tests" / "fuzz_corpus"


def hostile_bodies() -> list[bytes]:
    """Corpus cases (and generated ones) that one dead letter and no record come of."""
    bodies = [p.read_bytes() for p in sorted(CORPUS.glob("*.pred"))
              if not p.with_suffix(".headers").exists()]
    rng = random.Random(1)
    bodies += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80)))
               for _ in range(200)]
    svc = StreamService(load_settings(env={}))
    out = []
    for i, body in enumerate(bodies):
        before = svc.messages.copy()
        outs = svc.handle_predictions([RawMessage(body, [], "t", 0, i, time.time())])
        if svc.messages - before == {"dead_lettered": 1} and len(outs) == 1 \
                and len(body) < 65_536:
            out.append(body)
    return out


def produce(bootstrap: str, topic: str, messages: list[bytes]) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.size": 1_000_000,
                  "message.max.bytes": 4_000_000, "log.connection.close": False})
    for i, m in enumerate(messages):
        while True:
            try:
                p.produce(topic, value=m, partition=0)
                break
            except BufferError:
                p.poll(0.05)
        if i % 5000 == 0:
            p.poll(0)
    assert p.flush(120) == 0


def good_rate(bootstrap: str, topic: str, n_good: int, tmp: Path) -> tuple[float, float]:
    """Good records/s from the 20,000th record on (the warm-up done), and RSS at the end."""
    proc, port = start_worker(bootstrap, topic, tmp, slice_seconds=5.0)
    t_from = n_from = None
    try:
        while True:
            n = sum(m["records"] for m in get(port, "/models") or [])
            now = time.perf_counter()
            if t_from is None and n >= 20_000:
                t_from, n_from = now, n
            if n >= n_good:
                break
            if proc.poll() is not None:
                raise RuntimeError("worker died")
            time.sleep(0.05)
        rss = rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    assert t_from is not None and n_from is not None
    return (n - n_from) / (now - t_from), rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    t0 = time.time() - 3600
    good = [orjson.dumps(record(rng, i, t0 + i / 1000)) for i in range(args.records)]
    hostile = hostile_bodies()
    mixed = list(good)
    r = random.Random(2)
    for k in range(args.records // 10):
        mixed.insert(r.randrange(len(mixed) + 1), hostile[k % len(hostile)])
    with tempfile.TemporaryDirectory() as d, EmbeddedBroker(log_path=Path(d) / "b.log") as b:
        tmp = Path(d)
        settings = load_settings(env={"DRIFTWARDEN_KAFKA__BOOTSTRAP_SERVERS": b.bootstrap_servers,
                                      "DRIFTWARDEN_KAFKA__PARTITIONS": "1"})
        ensure_topics(settings)
        rows = []
        for name, msgs in (("clean", good), ("hostile", mixed)):
            topic = f"bench-hostile-{name}"
            from confluent_kafka.admin import AdminClient, NewTopic

            admin = AdminClient({"bootstrap.servers": b.bootstrap_servers})
            for t in (topic, topic + ".features", topic + ".state"):
                admin.create_topics([NewTopic(t, 1, 1)])[t].result(15)
            produce(b.bootstrap_servers, topic, msgs)
            rate, rss = good_rate(b.bootstrap_servers, topic, args.records, tmp)
            rows.append((name, len(msgs), rate, rss))
            print(f"{name:8s} {len(msgs):>9,} messages  {rate:>10,.0f} good records/s  "
                  f"RSS {rss:,.0f} MiB", flush=True)
    clean, hostile_row = rows[0][2], rows[1][2]
    print(json.dumps({"clean_records_per_s": round(clean), "hostile_records_per_s":
                      round(hostile_row), "ratio": round(hostile_row / clean, 3),
                      "hostile_kinds": len(hostile)}))
    print("| run | messages | good records/s | RSS |\n|---|---|---|---|\n" + "\n".join(
        f"| {n} | {m:,} | {r:,.0f} | {s:,.0f} MiB |" for n, m, r, s in rows) +
        f"\n\nratio hostile / clean: {hostile_row / clean:.2f}")


if __name__ == "__main__":
    main()
