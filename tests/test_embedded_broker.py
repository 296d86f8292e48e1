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


def test_the_broker_command_prints_its_address_serves_and_stops_on_ctrl_c():
    """`driftwarden broker`: the embedded broker in the foreground for one's own data."""
    import signal
    import subprocess
    import sys

    from confluent_kafka import Producer

    from driftwarden.embedded import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "driftwarden.cli", "broker", "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        first = proc.stdout.readline()
        assert first.startswith(f"broker listening on 127.0.0.1:{port}"), first
        p = Producer({"bootstrap.servers": f"127.0.0.1:{port}"})
        p.produce("t", b"x")
        assert p.flush(15) == 0
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "broker stopped" in out and "Traceback" not in err
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert f"127.0.0.1:{port}" not in ps  # nothing left listening
