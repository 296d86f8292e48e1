"""R3: the worker killed with SIGKILL five times while traffic flows. Each successor is ready
again within 30 s, every record is counted exactly once at the end, and no action appears
with two event_ids (replays re-send the same ids)."""

from __future__ import annotations

import signal
import threading
import time
from collections import defaultdict

import orjson
import pytest
from conftest import get_json, wait_for
from faultkit import NOW, producer, read_topic, record, worker_env

pytestmark = pytest.mark.faults

PER_MODEL = 24_000
RATE = 2_000  # records per second of wall clock, both models together
SHIFT_AT = 6_000  # model "a" drifts from this record on


def traffic(bootstrap: str, done: threading.Event) -> None:
    p = producer(bootstrap)
    t_start = time.monotonic()
    for i in range(PER_MODEL):
        ts = NOW - 1200 + i / 100
        for model in ("a", "b"):
            shift = 1.5 if model == "a" and i >= SHIFT_AT else 0.0
            p.produce("k9.predictions", key=model.encode(), value=record(model, i, ts, shift))
        if i % 500 == 0:
            p.poll(0)
            lag = (2 * i / RATE) - (time.monotonic() - t_start)
            if lag > 0:
                time.sleep(lag)
    assert p.flush(60) == 0
    done.set()


def counts(port):
    out: dict[str, int] = defaultdict(int)
    for m in get_json(port, "/models") or []:
        out[m["model"]] += m["records"]
    return dict(out)


def test_r3_five_kills_during_traffic_count_every_record_once(broker, spawn_worker):
    bs = broker.bootstrap_servers
    env = worker_env("k9", DRIFTWARDEN_KAFKA__COMMIT_SECONDS="0.5",
                     DRIFTWARDEN_KAFKA__COMMIT_EVERY="500")
    proc, port, log = spawn_worker(bs, env, warmup=2000)
    done = threading.Event()
    sender = threading.Thread(target=traffic, args=(bs, done), daemon=True)
    sender.start()
    ready_after = []
    for _ in range(5):
        time.sleep(2.5)  # some traffic handled (and a checkpoint or two) by this one
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed = time.monotonic()
        proc, port, log = spawn_worker(bs, env, warmup=2000)
        wait_for("the successor ready", lambda p=port: (get_json(p, "/ready") or {}).get(
            "ready"), 30)
        ready_after.append(time.monotonic() - killed)
    assert done.wait(120), "the producer did not finish"
    wait_for("every record counted", lambda: counts(port) == {"a": PER_MODEL, "b": PER_MODEL},
             120)
    time.sleep(3)  # anything counted twice would show now
    assert counts(port) == {"a": PER_MODEL, "b": PER_MODEL}
    assert max(ready_after) < 30, ready_after
    print(f"R3: ready again {min(ready_after):.1f}-{max(ready_after):.1f} s after each kill")
    wait_for("the drift acted on", lambda: read_topic(bs, "k9.actions", 10), 60)
    actions = [orjson.loads(v) for v, _ in read_topic(bs, "k9.actions")]
    ids = defaultdict(set)  # an action of an incident has one id, however often it is sent
    for a in actions:
        ids[(a["incident_id"], a["action"])].add(a["event_id"])
    assert all(len(v) == 1 for v in ids.values()), ids
    drift = [orjson.loads(v) for v, _ in read_topic(bs, "k9.drift")]
    assert {e["model"] for e in drift if e["state"] == "onset"} == {"a"}
