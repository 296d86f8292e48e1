"""Benchmark of the stream worker against the consumption ceilings, on one embedded broker.

    python bench/bench_stream.py [--records 200000] [--batch-records 2000000]

In one run, on the same broker and the same messages (20 numeric features per record):

(a) the ceiling: aiokafka ``getmany`` + orjson decoding of every message (pyarrow for Arrow);
(b) a bare Faust agent that only decodes (``take_events`` + orjson / pyarrow), in its own
    process;
(c) driftwarden's worker (``driftwarden worker``, its own process, both stages): records/s
    stage 1 takes for single-record messages, for batch messages of 100 records and for
    column batches of 1,000 records (``{"columns": {...}}``, what ``driftwarden.client``
    sends; the ceilings decode the same messages), after
    its first 20k records (the model has a configured baseline, a reference file of the same
    distribution); the ratios c/a and c/b; latency from a record's produce time to the verdict
    on the window slice that holds it, through both stages (p50 / p99 in the steady state,
    at 2,000 records/s, 1-second slices); and the worker's resident memory after 5·10^5,
    10^6 and 2·10^6 records (with the pending-label table, which holds predictions until
    their labels come, capped at 10^5);
(scale) one hot model produced without keys over two partitions, read by one worker and
    then by two workers in one group: records/s together and each (the merge stage of the
    model runs on one of them).

Event time: single records advance 1,000 records per second of event time; batches advance
as fast as the 200k target. Throughput runs use the default 5-second slices (a slice
evaluation every 5,000 single records, or every 5 seconds at the batch target rate).
Parts can be run alone: ``--only single|batch|columns|arrow|latency|scale`` (repeatable);
``arrow``: the column batches as Arrow IPC streams (``Client(encoding="arrow")``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np
import orjson
from confluent_kafka import Producer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from driftwarden.config import load_settings  # noqa: E402
from driftwarden.embedded import EmbeddedBroker, free_port  # noqa: E402
from driftwarden.kafka import ensure_topics  # noqa: E402

N_FEATURES = 20


def record(rng: np.random.Generator, i: int, ts: float) -> dict:
    return {"model": "bench", "version": "1", "id": f"r{i}", "ts": ts,
            "features": {f"f{k}": float(v) for k, v in enumerate(rng.normal(size=N_FEATURES))},
            "prediction": float(rng.random())}


def columns_body(recs: list[dict]) -> dict:
    """Records as a column batch (what driftwarden.client sends)."""
    return {"model": "bench", "version": "1", "columns": {
        "id": [r["id"] for r in recs], "ts": [r["ts"] for r in recs],
        "prediction": [r["prediction"] for r in recs],
        "features": {f"f{k}": [r["features"][f"f{k}"] for r in recs]
                     for k in range(N_FEATURES)}}}


def arrow_body(recs: list[dict]) -> bytes:
    """Records as an Arrow IPC column batch (``Client(encoding="arrow")``)."""
    import pyarrow as pa

    from driftwarden.arrow import encode_table

    cols = columns_body(recs)["columns"]
    t = pa.table({"id": cols["id"], "ts": cols["ts"], "prediction": cols["prediction"],
                  **cols["features"]})
    return encode_table(t.replace_schema_metadata({"driftwarden.model": "bench",
                                                   "driftwarden.version": "1"}))


def produce(bootstrap: str, topic: str, n_records: int, per_message: int, t0: float,
            event_rate: float = 1000.0, key: bytes | None = b"bench",
            columns: bool | str = False) -> int:
    """Produce n_records (single records, row batches or, with ``columns``, column batches),
    ``event_rate`` records per second of event time (a window slice is evaluated once per
    second of event time); ``key`` None: spread over the partitions, as a producer without
    keys does."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.size": 1_000_000,
                  "log.connection.close": False})
    rng = np.random.default_rng(0)
    sent = 0
    i = 0
    while i < n_records:
        if per_message == 1:
            value = orjson.dumps(record(rng, i, t0 + i / event_rate))
            i += 1
        else:
            recs = [record(rng, i + k, t0 + (i + k) / event_rate) for k in range(per_message)]
            value = arrow_body(recs) if columns == "arrow" else orjson.dumps(
                columns_body(recs) if columns else
                {"model": "bench", "version": "1", "records": recs})
            i += per_message
        while True:
            try:
                p.produce(topic, key=key, value=value)
                break
            except BufferError:
                p.poll(0.05)
        sent += 1
        if sent % 1000 == 0:
            p.poll(0)
    p.flush(60)
    return sent


def decode_any(value: bytes) -> object:
    """What the ceilings do with a message: orjson, or pyarrow for an Arrow IPC stream."""
    if value[:4] == b"\xff\xff\xff\xff":
        import pyarrow as pa

        return pa.ipc.open_stream(value).read_all()
    return orjson.loads(value)


async def aiokafka_ceiling(bootstrap: str, topic: str, n_messages: int) -> float:
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                         group_id=None, enable_auto_commit=False, fetch_max_bytes=50_000_000,
                         max_partition_fetch_bytes=10_000_000)
    await c.start()
    got = 0
    start = None
    try:
        while got < n_messages:
            batches = await c.getmany(timeout_ms=500, max_records=10_000)
            for msgs in batches.values():
                if start is None:
                    start = time.perf_counter()
                for m in msgs:
                    decode_any(m.value)
                got += sum(len(v) for v in batches.values())
    finally:
        await c.stop()
    return time.perf_counter() - (start or time.perf_counter())


FAUST_BARE = textwrap.dedent('''
    import sys, time, orjson, faust
    import pyarrow as pa
    bootstrap, topic, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    # the same consumer and GC tuning as the worker's (fetch size, fetch wait, batches of
    # 2,000 messages or 1 MB, GC thresholds), so (b) isolates what driftwarden adds
    from driftwarden.stream.app import BatchLimit, _limit_fetch_wait, tune_gc
    _limit_fetch_wait(100)
    app = faust.App("bench-bare-%d" % time.time_ns(), broker="kafka://" + bootstrap,
                    web_enabled=False, broker_session_timeout=6, topic_allow_declare=False,
                    value_serializer="raw", datadir=out + ".d",
                    consumer_auto_offset_reset="earliest",
                    consumer_max_fetch_size=16 * 1024 * 1024)
    t = app.topic(topic, value_serializer="raw")
    state = {"n": 0, "start": None}
    @app.agent(t)
    async def bare(stream):
        limit = BatchLimit(2000, 1 << 20)
        stream.add_processor(limit.count)
        async for events in stream.take_events(limit, within=0.2):
            limit.reset()
            if state["start"] is None:
                state["start"] = time.perf_counter()
            for e in events:
                v = e.message.value
                if v[:4] == b"\\xff\\xff\\xff\\xff":
                    pa.ipc.open_stream(v).read_all()
                else:
                    orjson.loads(v)
            state["n"] += len(events)
            if state["n"] >= n:
                open(out, "w").write(str(time.perf_counter() - state["start"]))
                sys.exit(0)
    from faust.worker import Worker
    tune_gc()
    Worker(app, loglevel="warning", quiet=True).execute_from_commandline()
''')


def faust_bare(bootstrap: str, topic: str, n_messages: int, tmp: Path) -> float:
    script = tmp / "bare.py"
    script.write_text(FAUST_BARE)
    out = tmp / f"bare-{topic}.out"
    out.unlink(missing_ok=True)  # a previous part's result is not this one's
    proc = subprocess.Popen([sys.executable, str(script), bootstrap, topic, str(n_messages),
                             str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve()
                                                                 .parent.parent)})
    deadline = time.monotonic() + 600
    while not out.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    return float(out.read_text())


def get(port: int, path: str):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return json.loads(r.read())
    except OSError:
        return None


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def topic_env(topic: str) -> dict[str, str]:
    """Each run its own topics and group: a worker restores its partitions' state, and the
    merge stage reads the summaries topic (a shared one would mix the runs)."""
    env = {f"DRIFTWARDEN_TOPICS__{k.upper()}": f"{topic}.{k}"
           for k in ("features", "labels", "summaries", "joins", "baselines", "state", "late")}
    return {**env, "DRIFTWARDEN_TOPICS__PREDICTIONS": topic,
            "DRIFTWARDEN_KAFKA__GROUP_ID": "bench-" + topic}


def reference_file(tmp: Path, n: int = 5000) -> Path:
    """The model's reference table (what a team fits its baseline from): the records'
    distribution, so nothing drifts."""
    path = tmp / "reference.csv"
    if not path.exists():
        rng = np.random.default_rng(99)
        rows = rng.normal(size=(n, N_FEATURES))
        path.write_text(",".join(f"f{k}" for k in range(N_FEATURES)) + "\n" + "".join(
            ",".join(f"{v:.6f}" for v in row) + "\n" for row in rows))
    return path


def start_worker(bootstrap: str, topic: str, tmp: Path, slice_seconds: float = 1.0,
                 partitions: int = 1, wait: bool = True):
    port = free_port()
    env = {**os.environ, **topic_env(topic),
           # a configured baseline, as in production: stage 1 bins from the first record (a
           # warm-up baseline reaches it only once the merge stage has closed the warm-up
           # slices — a worker starting on a backlog sends its first seconds as records)
           "DRIFTWARDEN_MODELS__BENCH__BASELINE": str(reference_file(tmp)),
           "DRIFTWARDEN_KAFKA__PARTITIONS": str(partitions),
           "DRIFTWARDEN_DETECTION__SLICE_SECONDS": str(slice_seconds),
           "DRIFTWARDEN_DETECTION__ALLOWED_LATENESS": "0",
           "DRIFTWARDEN_DETECTION__CALIBRATION_SIMS": "50",
           "DRIFTWARDEN_DATA_DIR": str(tmp / f"w{port}"), "DRIFTWARDEN_LOG_LEVEL": "WARNING",
           # the pending-label table is bounded by this; it is the one structure that grows
           # with the records seen (until the bound), so keep it small to show the plateau
           "DRIFTWARDEN_DETECTION__MAX_PENDING_LABELS": "100000"}
    proc = subprocess.Popen([sys.executable, "-m", "driftwarden.cli", "worker",
                             "--bootstrap-servers", bootstrap, "--warmup", "2000",
                             "--web-port", str(port), "--session-timeout", "6"], env=env,
                            stdout=(tmp / f"worker{port}.log").open("wb"),
                            stderr=subprocess.STDOUT)
    if wait:
        wait_healthy(proc, port)
    return proc, port


def wait_healthy(proc: subprocess.Popen, port: int) -> None:
    while get(port, "/health") is None:
        if proc.poll() is not None:
            raise RuntimeError("worker died")
        time.sleep(0.3)


_TAKEN = re.compile(r'^driftwarden_events_total\{[^}]*kind="prediction"[^}]*\} (\S+)$', re.M)


def taken(port: int) -> int:
    """Records stage 1 of a worker took (``driftwarden_events_total``): stage 2 counts a
    slice's records only once it closes, which the stream's last slice never does."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return int(sum(float(v) for v in _TAKEN.findall(r.read().decode())))
    except OSError:
        return 0


def worker_rate(bootstrap: str, topic: str, n_records: int, tmp: Path, workers: int = 1,
                partitions: int = 1) -> tuple[float, list[float], dict[int, float]]:
    """Records/s of ``workers`` workers together after the warm-up (from 20k records on, once
    every worker has taken some), each one's, and the first worker's RSS at marks; the
    default 5-second slices (the latency run uses 1-second slices)."""
    procs = [start_worker(bootstrap, topic, tmp, slice_seconds=5.0, partitions=partitions,
                          wait=False) for _ in range(workers)]
    for proc, port in procs:
        wait_healthy(proc, port)
    marks = {m: 0.0 for m in (500_000, 1_000_000, 2_000_000) if m <= n_records}
    t_from = None
    from_counts: list[int] = []
    try:
        while True:
            counts = [taken(port) for _, port in procs]
            n = sum(counts)
            now = time.perf_counter()
            if t_from is None and n >= 20_000 and all(counts):
                t_from, from_counts = now, counts
            for mark in marks:
                if n >= mark and not marks[mark]:
                    marks[mark] = rss_mib(procs[0][0].pid)
            if n >= n_records:
                break
            if any(proc.poll() is not None for proc, _ in procs):
                raise RuntimeError(f"a worker died (logs in {tmp})")
            time.sleep(0.05)
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            proc.wait(30)
    assert t_from is not None
    each = [(c - c0) / (now - t_from) for c, c0 in zip(counts, from_counts)]
    return sum(each), each, marks


def latency(bootstrap: str, topic: str, tmp: Path, seconds: float = 30.0,
            rate: int = 2000) -> tuple[float, float, float]:
    """Produce at a steady rate with ts = produce time; latency of each record = when the
    worker's verdict for its 1-second slice appears minus its produce time. Measured in the
    steady state: from 2 s after the first verdict (the model's warm-up and calibration are
    over) for ``seconds``; the time from the first record to the first verdict is returned
    too."""
    proc, port = start_worker(bootstrap, topic, tmp)
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "log.connection.close": False})
    rng = np.random.default_rng(1)
    produced: list[float] = []
    seen_slice: dict[int, float] = {}
    start = next_at = time.time()
    t_from = t_end = first_verdict = None
    i = 0
    try:
        while t_end is None or time.time() < t_end + 3:
            now = time.time()
            if t_end is None or now < t_end:
                while next_at <= now:
                    p.produce(topic, key=b"bench", value=orjson.dumps(record(rng, i, next_at)))
                    produced.append(next_at)
                    next_at += 1 / rate
                    i += 1
                p.poll(0)
            verdicts = get(port, "/verdicts") or []
            if verdicts:  # verdicts at ts = end of slice sid: every slice up to it is done
                if first_verdict is None:
                    first_verdict = time.time()
                    t_from, t_end = first_verdict + 2, first_verdict + 2 + seconds
                newest = max(int(round(v["ts"])) - 1 for v in verdicts)
                first = min(seen_slice, default=newest)
                for sid in range(first, newest + 1):
                    seen_slice.setdefault(sid, time.time())
            if time.time() - start > 300:
                raise RuntimeError("no verdict within 300 s")
            time.sleep(0.02)
    finally:
        p.flush(10)
        proc.terminate()
        proc.wait(30)
    assert t_from is not None and first_verdict is not None
    lat = [seen_slice[int(t)] - t for t in produced if t >= t_from and int(t) in seen_slice]
    if not lat:
        raise RuntimeError(f"no verdict after the first one (slices seen: {sorted(seen_slice)}"
                           f"; worker log {tmp})")
    return (float(np.percentile(lat, 50)), float(np.percentile(lat, 99)),
            first_verdict - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--batch-records", type=int, default=2_000_000)
    ap.add_argument("--only", choices=("single", "batch", "columns", "arrow", "latency",
                                       "scale"),
                    action="append",
                    help="run only these parts (repeatable); default: all")
    args = ap.parse_args()
    parts = set(args.only or ("single", "batch", "columns", "arrow", "latency", "scale"))
    tmp = Path(tempfile.mkdtemp(prefix="dw-bench-"))
    rows = []
    with EmbeddedBroker(log_path=tmp / "broker.log") as broker:
        bs = broker.bootstrap_servers
        env = {"DRIFTWARDEN_KAFKA__BOOTSTRAP_SERVERS": bs}
        for name, n_part in (("bench.single", 1), ("bench.batch", 1), ("bench.columns", 1),
                             ("bench.arrow", 1),
                             ("bench.latency", 1), ("bench.scale1", 2), ("bench.scale2", 2)):
            ensure_topics(load_settings(env={**env, **topic_env(name),
                                             "DRIFTWARDEN_KAFKA__PARTITIONS": str(n_part)}))
        t0 = time.time() - 3600
        for part, topic, n, per in (("single", "bench.single", args.records, 1),
                                    ("batch", "bench.batch", args.batch_records, 100),
                                    ("columns", "bench.columns", args.batch_records, 1000),
                                    ("arrow", "bench.arrow", args.batch_records, 1000)):
            if part not in parts:
                continue
            # batches: event time advances as fast as the target throughput, so a slice is
            # evaluated about once per second of processing, as it would be live at that rate
            n_msgs = produce(bs, topic, n, per, t0, event_rate=1000 if per == 1 else 200_000,
                             columns="arrow" if part == "arrow" else part == "columns")
            ra = n / asyncio.run(aiokafka_ceiling(bs, topic, n_msgs))
            rb = n / faust_bare(bs, topic, n_msgs, tmp)
            c, _, rss = worker_rate(bs, topic, n, tmp)
            label = {"single": "single-record messages, records/s",
                     "batch": "batch messages of 100 records, records/s",
                     "columns": "column batches of 1,000 records, records/s",
                     "arrow": "Arrow IPC column batches of 1,000, records/s"}[part]
            rows.append((label, f"{c:,.0f}", f"(a) aiokafka+orjson {ra:,.0f}",
                         f"(b) bare Faust {rb:,.0f}", f"c/a {c / ra:.2f}  c/b {c / rb:.2f}"))
            print(*rows[-1], sep="  ", file=sys.stderr, flush=True)  # in case a later part fails
            if per > 1 and rss:
                rows.append(("worker RSS after " + " / ".join(f"{m:,}" for m in rss)
                             + " records", " / ".join(f"{v:.0f}" for v in rss.values())
                             + " MiB", "", "", "pending-label table capped at 10^5"))
        if "scale" in parts:  # one hot model, null keys, two partitions: one worker, then two
            n = args.records
            got = {}
            for workers, topic in ((1, "bench.scale1"), (2, "bench.scale2")):
                produce(bs, topic, n, 1, t0, key=None)
                got[workers] = worker_rate(bs, topic, n, tmp, workers=workers, partitions=2)
            one, two = got[1][0], got[2][0]
            rows.append(("one hot model, 2 partitions, single records/s: 1 worker",
                         f"{one:,.0f}", "", "", "null keys: the model spans both partitions"))
            rows.append(("  the same on 2 workers: together (each)", f"{two:,.0f}",
                         "(" + " / ".join(f"{r:,.0f}" for r in got[2][1]) + ")", "",
                         f"2 workers / 1 worker {two / one:.2f} ({os.cpu_count()} cores, "
                         "broker included)"))
            print(*rows[-2], sep="  ", file=sys.stderr, flush=True)
            print(*rows[-1], sep="  ", file=sys.stderr, flush=True)
        if "latency" in parts:
            p50, p99, first = latency(bs, "bench.latency", tmp)
            rows.append(("latency produce → verdict, two stages (1 s slices, 2,000 rec/s)",
                         f"p50 {p50:.2f} s  p99 {p99:.2f} s", "", "",
                         f"target p99 < 2 s; first verdict after {first:.1f} s "
                         "(calibration, the sources' idle close)"))
    print(f"driftwarden stream benchmark — {N_FEATURES} features per record, one worker, "
          f"Tansu broker, {os.cpu_count()} cores")
    for r in rows:
        print(f"{r[0]:<58} {r[1]:<24} {r[2]:<28} {r[3]:<24} {r[4]}")
    print(f"(worker logs in {tmp})")


if __name__ == "__main__":
    main()
