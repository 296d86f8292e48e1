"""The embedded broker: a real Kafka-protocol broker, spoken to by confluent-kafka."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from driftwarden.embedded import EmbeddedBroker


def test_topics_produce_and_consume_with_headers(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
    for f in admin.create_topics([NewTopic("dw.test.roundtrip", num_partitions=3,
                                           replication_factor=1)]).values():
        f.result(10)
    assert len(admin.list_topics(timeout=5).topics["dw.test.roundtrip"].partitions) == 3
    p = Producer({"bootstrap.servers": broker.bootstrap_servers, "enable.idempotence": True,
                  "acks": "all"})
    for i in range(20):
        p.produce("dw.test.roundtrip", key=f"m{i % 3}", value=b'{"i": %d}' % i,
                  headers=[("reason", b"test")])
    assert p.flush(10) == 0
    c = Consumer({"bootstrap.servers": broker.bootstrap_servers, "group.id": "dw-test",
                  "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
                  "heartbeat.interval.ms": 500})
    c.subscribe(["dw.test.roundtrip"])
    got = []
    deadline = time.monotonic() + 30
    while len(got) < 20 and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            got.append((m.value(), m.headers()))
    c.close()
    assert sorted(v for v, _ in got) == sorted(b'{"i": %d}' % i for i in range(20))
    assert all(h == [("reason", b"test")] for _, h in got)


def test_broker_stops_and_leaves_no_process():
    b = EmbeddedBroker().start()
    proc = b._proc
    assert proc is not None and proc.poll() is None
    b.stop()
    assert proc.poll() is not None
