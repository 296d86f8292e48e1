"""A real worker process against the real broker: drift at a known record becomes a drift
event and an action event; malformed messages land in the DLQ with their reason while the
good ones around them are counted; a label join feeds the concept detector."""

from __future__ import annotations

import json
import time
import urllib.request

import numpy as np
import orjson
import pytest
from confluent_kafka import Consumer, Producer
from prometheus_client.parser import text_string_to_metric_families

from driftwarden.config import Topics

SHIFT_AT = 12  # seconds of event time; one record every 2 ms
PREFIX = "wi"  # topics and group of this test's own: the session broker keeps other tests'


def topic(name):
    return f"{PREFIX}.{name}"


@pytest.fixture
def worker(broker, spawn_worker):
    env = {f"DRIFTWARDEN_TOPICS__{t.upper()}": topic(t) for t in Topics.__struct_fields__}
    env |= {"DRIFTWARDEN_KAFKA__GROUP_ID": f"{PREFIX}-workers",
           "DRIFTWARDEN_DETECTION__SLICES": "3", "DRIFTWARDEN_DETECTION__SLICE_SECONDS": "1",
           "DRIFTWARDEN_DETECTION__ALLOWED_LATENESS": "0.2",
           "DRIFTWARDEN_DETECTION__CALIBRATION_SIMS": "50",
           "DRIFTWARDEN_KAFKA__MAX_MESSAGE_BYTES": "100000"}
    proc, port, log = spawn_worker(broker.bootstrap_servers, env)
    return broker, port, proc, log


def consume(bootstrap, topics, until, timeout=60.0):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{time.monotonic_ns()}",
                  "auto.offset.reset": "earliest", "session.timeout.ms": 6000})
    c.subscribe(topics)
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(got):
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            got.append((m.topic(), m.value(), dict(m.headers() or [])))
    c.close()
    return got


def test_drift_events_actions_dlq_and_labels(worker):
    broker, port, proc, log = worker
    p = Producer({"bootstrap.servers": broker.bootstrap_servers})
    rng = np.random.default_rng(0)
    bad = {b"{bad json": b"bad_json", b"\xff\xfe": b"bad_utf8",
           b'{"model": "fraud", "features": [1]}': b"invalid_record",
           b'{"nothing": 1}': b"unknown_format",
           b'{"model": "fraud", "features": {}, "ts": "noon"}': b"bad_timestamp",
           b'{"model_name": "fraud", "inputs": [{"name": "x", "shape": [2], "data": [1]}]}':
               b"shape_mismatch"}
    n = 0
    for t in range(20):
        for i in range(500):
            rec = {"model": "fraud", "version": "1", "id": f"{t}-{i}", "ts": 1000 + t + i / 500,
                   "features": {"amount": float(rng.normal(1.0 if t >= SHIFT_AT else 0.0, 1))},
                   "prediction": float(rng.random())}
            p.produce(topic("predictions"), key=b"fraud", value=orjson.dumps(rec))
            n += 1
        if t == 4:
            for body in bad:
                p.produce(topic("predictions"), key=b"fraud", value=body)
        p.poll(0)
    big = b'{"model": "fraud", "features": {"x": "' + b"a" * 200_000 + b'"}}'
    p.produce(topic("predictions"), key=b"fraud", value=big)
    # labels for the last second: the model's scores are random, so ~half are errors
    for i in range(500):
        p.produce(topic("labels"), key=b"fraud",
                  value=orjson.dumps({"model": "fraud", "id": f"19-{i}", "label": 1}))
    p.produce(topic("labels"), key=b"fraud",
              value=b'{"model":"fraud","id":"zz","label":1,"ts":900}')  # grace long passed
    assert p.flush(30) == 0

    got = consume(broker.bootstrap_servers,
                  [topic("drift"), topic("actions"), topic("dlq"),
                   topic("late")],
                  lambda g: sum(t == topic("dlq") for t, _, _ in g) >= len(bad) + 1
                  and any(t == topic("actions") for t, _, _ in g)
                  and any(t == topic("late") for t, _, _ in g)
                  # the topics are read in no particular order: the onset too
                  and any(t == topic("drift") and b'"onset"' in v for t, v, _ in g))
    dlq = {v: h for t, v, h in got if t == topic("dlq")}
    for body, reason in bad.items():
        assert dlq[body]["dw.reason"] == reason
        assert dlq[body]["dw.source.topic"] == topic("predictions").encode()
    assert dlq[big]["dw.reason"] == b"oversized"
    drift = [json.loads(v) for t, v, _ in got if t == topic("drift")]
    onset = next(e for e in drift if e["state"] == "onset" and e["kind"] == "data")
    assert onset["features"] == ["amount"] and 1000 + SHIFT_AT <= onset["ts"] <= 1000 + 15
    actions = [json.loads(v) for t, v, _ in got if t == topic("actions")]
    assert actions[0]["incident_id"] == onset["incident_id"]
    # the public contracts: every event as the typed structs and the committed JSON Schemas
    from test_events import check_events

    check_events([v for t, v, _ in got if t == topic("drift")],
                 [v for t, v, _ in got if t == topic("actions")])
    assert [json.loads(v)["id"] for t, v, _ in got if t == topic("late")] == ["zz"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/verdicts", timeout=5) as r:
        verdicts = json.loads(r.read())
    assert any(v["kind"] == "data" and v["drift"] for v in verdicts)
    # the last slices (data and outcomes) close once their sources are idle (10 s)
    deadline = time.monotonic() + 60
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/models", timeout=5) as r:
            status = json.loads(r.read())[0]
        if (status["records"], status["outcomes"]) == (n, 500) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert status["records"] == n and status["outcomes"] == 500
    assert 0.4 < status["accuracy"] < 0.6  # random scores against label 1: about half right
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as r:
        ready = json.loads(r.read())
    assert r.status == 200 and ready["status"] == "ok" and not ready["stalled"]
    # the same state in Prometheus' text format, parsed by prometheus_client's own parser
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for fam in text_string_to_metric_families(r.read().decode())
                   for s in fam.samples}
    mv = (("model", "fraud"), ("version", "1"))
    assert samples[("driftwarden_drift_detected", (("kind", "data"), *mv))] == 1.0
    assert samples[("driftwarden_events_total", (("kind", "prediction"), *mv))] == n
    assert samples[("driftwarden_invalid_events_total", (("reason", "bad_json"),))] == 1
    assert samples[("driftwarden_label_outcomes_total", mv)] == 500
    assert samples[("driftwarden_processing_lag_seconds_count", ())] >= n
    assert proc.poll() is None, log.read_text()[-2000:]
    # the log says what the worker found, one line each
    text = log.read_text()
    assert "baseline fitted: fraud v1 from warm-up" in text
    assert "drift onset: fraud v1 data" in text and "action " in text
