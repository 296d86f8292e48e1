"""Faults of the broker, each on a broker of the test's own: paused (SIGSTOP) for 30 s (R6),
restarted — this Tansu build keeps everything in memory, so it comes back empty (R7)."""

from __future__ import annotations

import time

import orjson
import pytest
from conftest import get_json, wait_for
from faultkit import NOW, fates, produce, producer, record, worker_env

from driftwarden.embedded import EmbeddedBroker

pytestmark = pytest.mark.faults


@pytest.fixture
def own_broker(tmp_path):
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as b:
        yield b


def health(port):
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def first_part(broker, spawn_worker, prefix):
    """A worker (stall_seconds 8) that has taken 2,000 records: (proc, port, log, producer)."""
    bs = broker.bootstrap_servers
    proc, port, log = spawn_worker(bs, worker_env(prefix, DRIFTWARDEN_KAFKA__STALL_SECONDS="8"),
                                   warmup=500)
    p = producer(bs)
    produce(p, f"{prefix}.predictions", (record("m", i, NOW - 600 + i / 100)
                                         for i in range(2000)), partition=0)
    wait_for("the first part", lambda: sum(fates(port).values()) >= 2000, 60)
    return proc, port, log, p


def test_r6_a_paused_broker_is_reported_and_the_lag_recovers(own_broker, spawn_worker):
    proc, port, log, p = first_part(own_broker, spawn_worker, "r6")
    own_broker.pause()
    seen = []
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end:
            seen.append(health(port))
            time.sleep(1)
    finally:
        own_broker.resume()
    assert 503 in seen, seen  # the stall is reported while it lasts
    resumed = time.monotonic()
    produce(p, "r6.predictions", (record("m", i, NOW - 600 + i / 100)
                                  for i in range(2000, 6000)), partition=0)
    wait_for("the lag back to zero", lambda: sum(fates(port).values()) >= 6000, 60)
    assert time.monotonic() - resumed < 60
    print(f"R6: 503 after {seen.index(503) + 1} s of the pause; lag back to zero "
          f"{time.monotonic() - resumed:.1f} s after it")
    wait_for("healthy again", lambda: health(port) == 200, 30)
    # the merge stage has every record once the last slices close (the source idle)
    wait_for("every record merged", lambda: sum(
        m["records"] for m in get_json(port, "/models") or []) == 6000, 60)
    assert proc.poll() is None


def test_r7_a_restarted_empty_broker_is_reported_then_the_worker_resumes(own_broker,
                                                                       spawn_worker):
    bs = own_broker.bootstrap_servers
    proc, port, log, _ = first_part(own_broker, spawn_worker, "r7")
    # merged before the broker goes: partials in flight would go with its data
    wait_for("the first part merged", lambda: sum(
        m["records"] for m in get_json(port, "/models") or []) == 2000, 60)
    own_broker.stop()
    stopped = time.monotonic()
    wait_for("unhealthy", lambda: health(port) == 503, 120)
    assert time.monotonic() - stopped < 120
    print(f"R7: unhealthy {time.monotonic() - stopped:.1f} s after the broker stopped")
    time.sleep(5)
    own_broker.start()  # same port, empty: no topics, no groups, no offsets
    # the worker recreates its topics and resumes without being restarted
    back = time.monotonic()
    wait_for("healthy again", lambda: health(port) == 200, 120)
    print(f"R7: healthy {time.monotonic() - back:.1f} s after the broker came back")
    p2 = producer(bs)
    produce(p2, "r7.predictions", (record("m", i, NOW - 600 + i / 100)
                                   for i in range(2000, 3000)), partition=0)
    # the 1,000 records of the new log are counted, once; the old state survives only if
    # the worker still held its partitions (the checkpoints went with the broker's data)
    wait_for("the records after the restart counted",
             lambda: fates(port)["used"] in (1000, 3000), 120)
    time.sleep(3)
    assert fates(port)["used"] in (1000, 3000)
    wait_for("every record merged", lambda: sum(
        m["records"] for m in get_json(port, "/models") or []) in (1000, 3000), 60)
    assert proc.poll() is None
    assert "We experienced a crash" not in log.read_text()


def test_r8_actions_due_while_the_broker_refuses_writes_for_two_minutes_are_delivered_once(
        tmp_path, spawn_worker):
    """R8: the broker unreachable for writes for 2 minutes (a relay freezes every connection
    that produces) while the worker keeps consuming and its drift calls for actions; after it
    returns every action is delivered exactly once — librdkafka retries what it holds and the
    outbox does not queue a second copy of what is still in flight.

    With two stages a decision needs the partials on the broker: the drifted records' partials
    are written before the hold, and a second partition that is behind in event time keeps
    the merge stage from closing their slices until it falls silent (source_idle_seconds),
    during the hold — so the actions fall due while writes are refused."""
    from confluent_kafka import Producer
    from faultkit import ProduceHold

    from driftwarden.embedded import free_port
    from driftwarden.store import Store

    relay_port = free_port()
    with EmbeddedBroker(log_path=tmp_path / "broker.log", advertised_port=relay_port) as b:
        relay = ProduceHold(relay_port, b.port)
        try:
            bs = f"127.0.0.1:{relay_port}"
            env = worker_env("r8", DRIFTWARDEN_OUTBOX_SECONDS="5",
                             DRIFTWARDEN_KAFKA__STALL_SECONDS="20",
                             DRIFTWARDEN_DETECTION__IDLE_CLOSE_SECONDS="0",
                             DRIFTWARDEN_DETECTION__SOURCE_IDLE_SECONDS="20")
            proc, port, log = spawn_worker(bs, env, warmup=2000)
            p = Producer({"bootstrap.servers": bs, "client.id": "fault-test", "linger.ms": 20})

            def behind(j0, j1):  # partition 1: a few records, its event time far behind
                produce(p, "r8.predictions", (record("m", 100_000 + j, NOW - 900 + j / 1000)
                                              for j in range(j0, j1)), partition=1)

            behind(0, 10)
            produce(p, "r8.predictions", (record("m", i, NOW - 900 + i / 200)
                                          for i in range(4000)), partition=0)
            wait_for("the calm part", lambda: sum(fates(port).values()) >= 4010, 60)
            wait_for("a checkpoint", lambda: (get_json(port, "/health") or {}).get(
                "checkpoints"), 30)
            behind(10, 20)  # still there: the merge stage waits for it
            produce(p, "r8.predictions", (record("m", i, NOW - 900 + i / 200, 1.5)
                                          for i in range(4000, 9000)), partition=0)
            wait_for("the drifted part", lambda: sum(fates(port).values()) >= 9020, 60)
            time.sleep(1)  # its partials on the broker
            relay.hold()
            held_at = time.monotonic()
            db = f"sqlite:///{tmp_path / f'dw-{port}' / 'driftwarden.db'}"

            def pending_actions():
                try:
                    store = Store(db, migrate=False)
                except Exception:  # noqa: BLE001 - not created yet
                    return []
                try:
                    return [a for a in store.actions() if a["status"] == "pending"]
                finally:
                    store.close()

            due = wait_for("actions due while writes are refused", pending_actions, 60)
            assert relay.frozen >= 1
            time.sleep(max(0.0, 120 - (time.monotonic() - held_at)))
            relay.release()

            def all_delivered():
                store = Store(db, migrate=False)
                try:
                    acts = store.actions()
                finally:
                    store.close()
                return acts if acts and all(a["status"] == "delivered" for a in acts) else None

            released = time.monotonic()
            recorded = wait_for("every action delivered", all_delivered, 120)
            print(f"R8: {len(due)} action(s) due during the 120 s hold, {len(recorded)} in "
                  f"all, every one delivered {time.monotonic() - released:.1f} s after it")
            assert {a["event_id"] for a in due} <= {a["event_id"] for a in recorded}
            time.sleep(12)  # two outbox rounds: nothing is re-sent after delivery
            from faultkit import read_topic

            sent = [orjson.loads(v)["event_id"] for v, _ in read_topic(b.bootstrap_servers,
                                                                         "r8.actions")]
            assert sorted(sent) == sorted(a["event_id"] for a in recorded)  # once each
            assert proc.poll() is None
            proc.terminate()  # while its broker is there: stopping flushes what it holds
            proc.wait(30)
        finally:
            relay.release()
            relay.close()
