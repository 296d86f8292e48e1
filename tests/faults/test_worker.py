"""Faults of input and of the worker's own life, against the real broker, exact counts as the
oracle: a clean restart with nothing new (no false stall), what the worker's web server
exposes, an exception injected into every 1,000th message (R4), labels before their
predictions, out of order and late (R11)."""

from __future__ import annotations

import stat
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest
from conftest import get_json, wait_for
from faultkit import NOW, fates, metric, produce, producer, read_topic, record, scrape, worker_env

pytestmark = pytest.mark.faults

READ = "reader-token-1"


def status(port, path, token=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={
        "Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def models(port, token=READ):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/models",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return {m["model"]: m["records"] for m in orjson.loads(r.read())}


def test_a_clean_restart_stays_healthy_and_nothing_private_is_served(broker, spawn_worker):
    """Observation 6: after a clean restart with nothing new to read, /health and /ready went
    503 after stall_seconds (the watchdog compared the end offset with "nothing handled").
    Observation 9: Faust's /router/ pages answered 500 with a traceback, /models and
    /verdicts served without the token /api/v1 asks for, the data directory and the SQLite
    store were world-readable."""
    bs = broker.bootstrap_servers
    env = worker_env("rs", DRIFTWARDEN_KAFKA__STALL_SECONDS="4",
                     DRIFTWARDEN_API__READ_TOKENS=f'["{READ}"]')
    first, port, _ = spawn_worker(bs, env, warmup=500)
    p = producer(bs)
    produce(p, "rs.predictions", (record("m", i, NOW - 60 + i / 100) for i in range(1500)),
            partition=0)
    produce(p, "rs.predictions", (record("n", i, NOW - 60 + i / 100) for i in range(1500)),
            partition=1)
    wait_for("every record counted", lambda: models(port) == {"m": 1500, "n": 1500}, 60)
    wait_for("a checkpoint", lambda: (get_json(port, "/health") or {}).get("checkpoints"), 30)
    first.terminate()
    first.wait(30)

    second, port2, log2 = spawn_worker(bs, env, warmup=500)
    wait_for("ready", lambda: status(port2, "/ready") == 200, 30)
    answers = []
    for _ in range(24):  # 12 s: three times stall_seconds, nothing new to read
        answers += [status(port2, "/health"), status(port2, "/ready")]
        time.sleep(0.5)
    assert set(answers) == {200}, (answers, log2.read_text()[-2000:])
    assert models(port2) == {"m": 1500, "n": 1500}

    # only driftwarden's pages: Faust's router and table views are off
    for path in ("/router/", "/router/rs.predictions/0/", "/table/", "/graph/", "/stats/"):
        assert status(port2, path) == 404, path
    # the token /api/v1 asks for guards /models and /verdicts too; probes stay open
    for path in ("/models", "/verdicts"):
        assert status(port2, path) == 401 and status(port2, path, "wrong") == 401
        assert status(port2, path, READ) == 200
    for path in ("/health", "/ready", "/metrics"):
        assert status(port2, path) == 200
    refused = metric(scrape(port2), "driftwarden_api_refused_total")
    assert refused >= 4
    data_dir = Path(log2.parent / f"dw-{port2}")
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "faust").stat().st_mode) == 0o700
    db = data_dir / "driftwarden.db"
    wait_for("the store", db.exists, 30)
    assert stat.S_IMODE(db.stat().st_mode) & 0o077 == 0, oct(db.stat().st_mode)
    assert "Traceback" not in log2.read_text()


def test_r4_an_exception_in_every_1000th_message_dead_letters_only_that_one(broker,
                                                                             spawn_worker):
    """R4: the fault hook raises while the message at every offset 999 mod 1000 is handled.
    Processed + dead-lettered = produced, and nothing twice."""
    bs = broker.bootstrap_servers
    env = worker_env("r4", DRIFTWARDEN_FAULT_EVERY="1000")
    proc, port, log = spawn_worker(bs, env, warmup=500)
    p = producer(bs)
    n = {0: 3500, 1: 2200}
    for part, count in n.items():
        produce(p, "r4.predictions", (record(f"m{part}", i, NOW - 60 + i / 100)
                                      for i in range(count)), partition=part)
    produced = sum(n.values())
    wait_for("every message's fate", lambda: sum(fates(port).values()) >= produced, 90)
    time.sleep(2)  # anything handled twice would show now
    f = fates(port)
    faulted = sum(c // 1000 for c in n.values())
    assert f == {"used": produced - faulted, "dead_lettered": faulted}
    wait_for("every record merged", lambda: {
        x["model"]: x["records"] for x in get_json(port, "/models") or []} == {
        "m0": 3500 - 3, "m1": 2200 - 2}, 60)
    wait_for("the dead letters", lambda: len(read_topic(bs, "r4.dlq")) >= faulted, 30)
    letters = read_topic(bs, "r4.dlq")
    where = sorted((int(h["dw.source.partition"]), int(h["dw.source.offset"]))
                   for _, h in letters)
    assert where == [(0, 999), (0, 1999), (0, 2999), (1, 999), (1, 1999)]
    assert {h["dw.reason"] for _, h in letters} == {b"internal_error"}
    assert all(b"RuntimeError" in h["dw.detail"] for _, h in letters)
    assert proc.poll() is None and "Traceback" not in log.read_text()


def test_r11_labels_early_out_of_order_and_late_are_joined_or_counted_late(broker,
                                                                           spawn_worker):
    """R11: labels before their predictions (within the grace), the rest after them in
    shuffled order, and some for predictions that never come: every label is joined or on
    the late topic, none twice."""
    import random

    bs = broker.bootstrap_servers
    env = worker_env("r11", DRIFTWARDEN_DETECTION__LABEL_GRACE="5")
    proc, port, log = spawn_worker(bs, env, warmup=300)
    p = producer(bs)
    n = 3000
    rng = random.Random(11)
    t0 = NOW - 600

    def label(i, ts):
        return orjson.dumps({"model": "m", "id": f"m{i}", "label": i % 2, "ts": ts})

    early = list(range(40))  # before their predictions, within the grace of event time
    produce(p, "r11.labels", (label(i, t0 + i / 10 + 0.5) for i in early), key=b"m")
    produce(p, "r11.predictions", (record("m", i, t0 + i / 10) for i in range(n)), key=b"m")
    rest = list(range(40, n))
    rng.shuffle(rest)
    orphans = [f"ghost{i}" for i in range(200)]
    produce(p, "r11.labels", (label(i, t0 + n / 10 + 2) for i in rest), key=b"m")
    produce(p, "r11.labels", (orjson.dumps({"model": "m", "id": g, "label": 1,
                                            "ts": t0 + n / 10 + 3}) for g in orphans), key=b"m")
    # event time moves on past the grace: the orphans are handed over as late
    produce(p, "r11.predictions", (record("m", n + i, t0 + n / 10 + 30 + i / 10)
                                   for i in range(200)), key=b"m")
    labels = len(early) + len(rest) + len(orphans)

    def settled():
        s = scrape(port)
        joined = metric(s, "driftwarden_label_outcomes_total", model="m")
        return joined + len(read_topic(bs, "r11.late", 5)) >= labels and joined

    wait_for("every label joined or late", settled, 90)
    joined = metric(scrape(port), "driftwarden_label_outcomes_total", model="m")
    late = read_topic(bs, "r11.late")
    assert joined == n
    assert sorted(orjson.loads(v)["id"] for v, _ in late) == sorted(orphans)
    assert {h["dw.reason"] for _, h in late} == {b"no_pending_prediction"}
    assert proc.poll() is None

