"""driftwarden.client against the real broker: every logged record arrives once, as column
batches the worker decodes into the same records; a full buffer drops and counts instead of
blocking; a broker that is gone costs the request path nothing and every record is accounted
for."""

from __future__ import annotations

import asyncio
import uuid

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from driftwarden.client import Client
from driftwarden.embedded import free_port
from driftwarden.schema import decode_predictions

PARTITIONS = 2


def new_topic(bootstrap: str) -> str:
    """A topic of its own, of PARTITIONS partitions (the client's records spread over them)."""
    topic = f"client-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
        f.result(30)
    return topic


def consume(bootstrap: str, topic: str, n_records: int, timeout: float = 60.0):
    """(message values, decoded records) until ``n_records`` records came."""
    import time

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4()}",
                  "auto.offset.reset": "earliest", "log.connection.close": False})
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    values, records = [], []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < n_records and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            values.append(m.value())
            d = decode_predictions(m.value(), now=0.0, clock=2e9)
            assert not d.rejections, d.rejections
            for b in d.batches:
                records += b.records()
            records += d.records
    finally:
        c.close()
    return values, records


def test_every_logged_record_arrives_once_in_column_batches(broker):
    topic = new_topic(broker.bootstrap_servers)
    dw = Client(broker.bootstrap_servers, model="fraud", version="7", topic=topic,
                batch_records=100, linger_seconds=0.2)
    sent = []
    for i in range(1050):
        version = "8" if i % 10 == 0 else None  # a shadow version now and then
        feats = {"amount": float(i), "country": ["DE", "FR"][i % 2]}
        if i % 7 == 0:
            feats["extra"] = i  # a feature some records carry
        assert dw.log(feats, i / 1050, id=f"r{i}", version=version,
                      latency_ms=None if i % 3 else 1.5 * i, ts=1.7e9 + i)
        sent.append((f"r{i}", version or "7", feats, i / 1050, None if i % 3 else 1.5 * i))
    stats = dw.close(timeout=30)
    assert stats == {"logged": 1050, "sent": 1050, "dropped": 0, "failed": 0, "buffered": 0,
                     "in_flight": 0, "messages": stats["messages"]}
    values, records = consume(broker.bootstrap_servers, topic, 1050)
    assert len(records) == 1050 and stats["messages"] == len(values) >= 11
    assert all(b'"columns"' in v for v in values)
    got = sorted((r.id, r.version, r.features, r.prediction, r.latency_ms) for r in records)
    assert got == sorted(sent)


def test_a_full_buffer_drops_and_counts_and_a_broker_that_is_gone_loses_nothing_silently():
    """No broker at all: log() keeps returning at once; beyond max_buffered records are
    dropped and counted; close() gives up after its timeout and counts the rest as failed —
    logged = sent + dropped + failed, nothing unaccounted."""
    # librdkafka's queue holds one batch: beyond 100 + 500 (+ 100 being retried) records
    # must be dropped, however fast the sender thread runs
    dw = Client(f"127.0.0.1:{free_port()}", model="m", batch_records=100, max_buffered=500,
                linger_seconds=0.05, producer_config={"message.timeout.ms": 1000,
                                                      "queue.buffering.max.messages": 1})
    accepted = sum(dw.log({"x": float(i)}, 0.5) for i in range(5000))
    stats = dw.close(timeout=3)
    assert stats["logged"] == 5000 and stats["sent"] == 0
    assert stats["dropped"] == 5000 - accepted >= 5000 - 700
    assert stats["failed"] == accepted and stats["buffered"] == stats["in_flight"] == 0
    assert not dw.log({"x": 1.0})  # closed: dropped, counted
    assert dw.stats()["dropped"] == 5000 - accepted + 1


def test_an_asyncio_server_logs_from_its_handlers_and_closes_without_blocking(broker):
    topic = new_topic(broker.bootstrap_servers)

    async def server():
        dw = Client(broker.bootstrap_servers, model="m", version="1", topic=topic,
                    linger_seconds=0.05)

        async def handler(i):
            await asyncio.sleep(0)
            return dw.log({"x": float(i)}, 0.1, id=str(i))

        assert all(await asyncio.gather(*(handler(i) for i in range(300))))
        return await dw.aclose(timeout=30)

    stats = asyncio.run(server())
    assert (stats["sent"], stats["failed"], stats["dropped"]) == (300, 0, 0)
    _, records = consume(broker.bootstrap_servers, topic, 300)
    assert sorted(int(r.id) for r in records) == list(range(300))


def test_a_batch_over_the_message_limit_is_split():
    dw = Client("127.0.0.1:1", model="m", start=False, max_message_bytes=2_000)
    for i in range(200):
        dw.log({"x": float(i), "c": "y" * 20}, 0.5, id=str(i), ts=1.0)
    values = dw.encode(dw.take())
    assert len(values) > 1 and all(len(v) <= 2_000 for v in values)
    ids = [i for v in values for i in orjson.loads(v)["columns"]["id"]]
    assert ids == [str(i) for i in range(200)]


def test_the_fastapi_example_logs_each_request_it_serves(monkeypatch):
    """examples/client_fastapi.py served by FastAPI's test client: each request answered and
    logged with its id, features, score and latency (the sender not started: no broker)."""
    import importlib
    import sys
    from pathlib import Path

    from fastapi.testclient import TestClient

    monkeypatch.setenv("DRIFTWARDEN_CLIENT_START", "0")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "examples"))
    sys.modules.pop("client_fastapi", None)
    example = importlib.import_module("client_fastapi")
    with TestClient(example.app) as http:
        for i in range(5):
            r = http.post("/predict", json={"id": f"t{i}", "amount": 10.0 * i,
                                            "country": "DE"})
            assert r.status_code == 200 and r.json()["id"] == f"t{i}"
        logged = example.dw.take()
    assert [r[1] for r in logged] == [f"t{i}" for i in range(5)]
    assert all(r[2] == "7" and r[3]["country"] == "DE" and 0 < r[4] < 1 and r[5] >= 0
               for r in logged)


def test_the_kserve_example_logs_each_instance_with_a_request_id(monkeypatch):
    import importlib
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "examples"))
    sys.modules.pop("client_kserve", None)
    example = importlib.import_module("client_kserve")
    dw = Client("127.0.0.1:1", model="fraud", start=False)
    out = example.FraudPredictor("fraud", dw).predict({"instances": [[50, 3], [150, 4]]},
                                                      {"ce-id": "ev-1"})
    assert out == {"predictions": [0.5, 1.0]}
    assert [(r[1], r[3], r[4]) for r in dw.take()] == [
        ("ev-1/0", {"amount": 50, "hour": 3}, 0.5), ("ev-1/1", {"amount": 150, "hour": 4}, 1.0)]


def test_arrow_encoded_batches_arrive_as_the_same_records(broker):
    topic = new_topic(broker.bootstrap_servers)
    dw = Client(broker.bootstrap_servers, model="fraud", version="7", topic=topic,
                batch_records=50, linger_seconds=0.1, encoding="arrow")
    sent = []
    for i in range(120):
        feats = {"amount": float(i), "country": ["DE", "FR"][i % 2]}
        dw.log(feats, i / 120, id=f"r{i}", latency_ms=float(i), ts=1.7e9 + i)
        sent.append((f"r{i}", feats, i / 120, float(i)))
    assert dw.close(timeout=30)["sent"] == 120
    values, records = consume(broker.bootstrap_servers, topic, 120)
    assert all(v[:4] == b"\xff\xff\xff\xff" for v in values)
    assert sorted((r.id, r.features, r.prediction, r.latency_ms) for r in records) == sorted(sent)


def test_an_arrow_batch_refuses_a_feature_named_like_a_record_field():
    """A feature called ``latency_ms`` (or ``id``, ``ts``, ``prediction``) would be read as that
    field from an Arrow batch: the client refuses to encode it rather than send it wrong."""
    import pytest

    dw = Client("127.0.0.1:1", model="m", start=False, encoding="arrow")
    dw.log({"latency_ms": 1.0, "x": 2.0}, 0.5, ts=1.0)
    with pytest.raises(ValueError, match="latency_ms"):
        dw.encode(dw.take())
