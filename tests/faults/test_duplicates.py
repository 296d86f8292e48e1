"""R10: the producer sends 10 % of its messages twice (a retry without idempotence). The
worker's statistics, drift events and actions are those of the stream without the
duplicates — computed in process by the same service as the oracle — and each incident's
action appears with one event_id."""

from __future__ import annotations

import random
import time
from collections import defaultdict

import orjson
import pytest
from conftest import get_json, wait_for
from faultkit import NOW, fates, metric, produce, producer, read_topic, record, scrape, worker_env

from driftwarden.config import load_settings
from driftwarden.stream.service import RawMessage, StreamService

pytestmark = pytest.mark.faults

N = 12_000
SHIFT_AT = 7_000
WARMUP = 2000


def stream() -> list[bytes]:
    return [record("m", i, NOW - 900 + i / 200, 1.5 if i >= SHIFT_AT else 0.0)
            for i in range(N)]


def test_r10_duplicated_messages_leave_statistics_events_and_actions_as_they_were(
        broker, spawn_worker):
    bs = broker.bootstrap_servers
    env = worker_env("r10")
    clean = stream()
    rng = random.Random(10)
    sent = []
    for i, m in enumerate(clean):
        sent.append(m)
        if rng.random() < 0.1:  # re-sent at once, or a little later, before any label
            if rng.random() < 0.5:
                sent.append(m)
            else:
                sent.insert(max(0, len(sent) - rng.randrange(1, 50)), clean[i])
    extra = len(sent) - N
    assert extra > 0.08 * N

    # the oracle: the same service, in process, on the stream without its duplicates — each
    # record where it first came. A copy re-sent ahead of records before it makes them late
    # (allowed_lateness 0): that is the order the producer gave, not the duplicates' doing
    firsts = list(dict.fromkeys(sent))
    assert sorted(firsts) == sorted(clean)
    oracle = StreamService(load_settings(env={**env, "DRIFTWARDEN_DETECTION__WARMUP":
                                              str(WARMUP)}))
    outs = oracle.handle_predictions([RawMessage(m, [], "r10.predictions", 0, i, NOW)
                                      for i, m in enumerate(firsts)])
    want_drift = sorted((e["event_id"], e["state"]) for e in
                        (orjson.loads(o.value) for o in outs if o.topic == "r10.drift"))
    want_actions = sorted(orjson.loads(o.value)["event_id"] for o in outs
                          if o.topic == "r10.actions")
    assert want_drift and want_actions

    proc, port, log = spawn_worker(bs, env, warmup=WARMUP)
    produce(producer(bs), "r10.predictions", sent, partition=0)
    wait_for("every message's fate", lambda: sum(fates(port).values()) >= len(sent), 90)
    time.sleep(2)
    assert fates(port) == {"used": N, "duplicate": extra}  # none dead-lettered
    wait_for("every record merged, once", lambda: [
        m["records"] for m in get_json(port, "/models") or []] == [N], 60)
    assert metric(scrape(port), "driftwarden_duplicates_total", model="m") == extra
    wait_for("the drift events on the topic", lambda: len(read_topic(bs, "r10.drift", 10)) >=
             len(want_drift), 60)
    live = [orjson.loads(v) for v, _ in read_topic(bs, "r10.drift")]
    drift = sorted((e["event_id"], e["state"]) for e in live)
    assert drift == want_drift, [(e["state"], e["ts"] - NOW, e["evidence"][:1]) for e in live]
    actions = [orjson.loads(v) for v, _ in read_topic(bs, "r10.actions")]
    assert sorted({a["event_id"] for a in actions}) == want_actions
    ids = defaultdict(set)
    for a in actions:
        ids[(a["incident_id"], a["action"])].add(a["event_id"])
    assert all(len(v) == 1 for v in ids.values())
    assert proc.poll() is None
