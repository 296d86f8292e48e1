"""A worker killed with SIGKILL mid-stream and restarted: its successor restores the state
from the checkpoint topic, counts every produced record exactly once (none lost, none twice)
and re-sends the events it replays with the ids they had."""

from __future__ import annotations

import signal
import threading
import time
from collections import defaultdict

import numpy as np
import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from conftest import get_json

from driftwarden.config import Topics

TOPICS = Topics.__struct_fields__  # every topic, so a test's worker shares none
PER_MODEL = 16_000  # records of each model; 1,000 per second of event time
SHIFT_AT = 8  # seconds: model "a" drifts from here on


def env(prefix, rare_commits):
    e = {f"DRIFTWARDEN_TOPICS__{t.upper()}": f"{prefix}.{t}" for t in TOPICS}
    if rare_commits:  # the successor replays from far behind the checkpoint: skips
        e.update({"DRIFTWARDEN_KAFKA__COMMIT_SECONDS": "60",
                  "DRIFTWARDEN_KAFKA__COMMIT_EVERY": "100000000"})
    else:  # commits as often as Faust likes: holding messages until a checkpoint matters
        e.update({"DRIFTWARDEN_KAFKA__COMMIT_SECONDS": "0.5",
                  "DRIFTWARDEN_KAFKA__COMMIT_EVERY": "100"})
    return {**e, "DRIFTWARDEN_KAFKA__GROUP_ID": f"{prefix}-workers",
            "DRIFTWARDEN_KAFKA__PARTITIONS": "2", "DRIFTWARDEN_KAFKA__CHECKPOINT_SECONDS": "1",
            "DRIFTWARDEN_DETECTION__SLICES": "3", "DRIFTWARDEN_DETECTION__SLICE_SECONDS": "1",
            "DRIFTWARDEN_DETECTION__ALLOWED_LATENESS": "0",
            "DRIFTWARDEN_DETECTION__CALIBRATION_SIMS": "50"}


def produce_all(bootstrap, prefix, start=0, stop=PER_MODEL):
    """Records ``start`` … ``stop - 1`` of both models (the same values whatever the cut)."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    rng = np.random.default_rng(7)
    for i in range(stop):
        ts = 5000 + i / 1000
        for model in ("a", "b"):
            shift = 1.5 if model == "a" and ts >= 5000 + SHIFT_AT else 0.0
            rec = {"model": model, "version": "1", "id": f"{model}{i}", "ts": ts,
                   "features": {"x": float(rng.normal(shift, 1)), "y": float(rng.normal())},
                   "prediction": float(rng.random())}
            if i < start:
                continue
            p.produce(f"{prefix}.predictions", key=model.encode(), value=orjson.dumps(rec))
        if i % 1000 == 0:
            p.poll(0)
    assert p.flush(30) == 0


def records(port):
    status = get_json(port, "/models") or []
    return {m["model"]: m["records"] for m in status}


def read_all(bootstrap, topic):
    """Every message of a topic, read to its end (no group: assign and go)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader",
                  "enable.auto.commit": False})
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    out = []
    for p in parts:
        low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        if high <= low:
            continue
        c.assign([TopicPartition(topic, p, low)])
        pos = low
        while pos < high:
            for m in c.consume(500, 1.0):
                if m.error() is None:
                    out.append(orjson.loads(m.value()))
                    pos = m.offset() + 1
    c.close()
    return out


@pytest.mark.parametrize("rare_commits", [True, False], ids=["replay", "frequent-commits"])
def test_sigkill_mid_stream_then_restart_counts_every_record_once(broker, spawn_worker,
                                                                  rare_commits):
    prefix = f"k9{'r' if rare_commits else 'f'}"
    bs = broker.bootstrap_servers
    first, port, log = spawn_worker(bs, env(prefix, rare_commits))
    # three quarters first: stage 1 is fast enough to read the whole stream before a test
    # can see it half done, so the rest is produced while the worker is being killed
    cut = 3 * PER_MODEL // 4
    produce_all(bs, prefix, 0, cut)
    deadline = time.monotonic() + 120
    # kill after the drift was acted on and checkpoints were written
    while time.monotonic() < deadline:
        done = records(port)
        health = get_json(port, "/health") or {}
        if done.get("a", 0) >= cut - 1000 and health.get("checkpoints", 0) >= 2:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the first worker did not get far:\n" + log.read_text()[-3000:])
    rest = threading.Thread(target=produce_all, args=(bs, prefix, cut, PER_MODEL))
    rest.start()
    time.sleep(0.3)  # mid-stream: the rest arriving as the worker dies
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    rest.join(60)
    assert done["a"] < PER_MODEL
    actions_before = read_all(bs, f"{prefix}.actions")
    assert actions_before, "the drift should have been acted on before the kill"

    second, port2, log2 = spawn_worker(bs, env(prefix, rare_commits))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = records(port2)
        if len(done) == 2 and min(done.values()) >= PER_MODEL:
            break
        time.sleep(0.3)
    time.sleep(2)  # anything counted twice would show up now
    health = get_json(port2, "/health")
    assert records(port2) == {"a": PER_MODEL, "b": PER_MODEL}, log2.read_text()[-3000:]
    assert health["restored"], "the successor should have restored a checkpoint"
    if rare_commits:
        assert health["replayed"] > 0, "the successor should have skipped what it held"

    actions = read_all(bs, f"{prefix}.actions")
    ids = defaultdict(set)
    for a in actions:
        ids[(a["incident_id"], a["action"])].add(a["event_id"])
    assert ids and all(len(v) == 1 for v in ids.values()), ids
    assert {a["event_id"] for a in actions_before} <= {a["event_id"] for a in actions}
    drift = read_all(bs, f"{prefix}.drift")
    onsets = {(e["model"], e["kind"]) for e in drift if e["state"] == "onset"}
    assert ("a", "data") in onsets and ("b", "data") not in onsets
    by_state = defaultdict(set)
    for e in drift:
        by_state[(e["incident_id"], e["state"], e["ts"])].add(e["event_id"])
    assert all(len(v) == 1 for v in by_state.values())
    assert second.poll() is None
