"""What the fault suite's tests share: per-test topic names, producing and reading topics of
the real broker, the worker's metrics and memory."""

from __future__ import annotations

import contextlib
import time
import urllib.request
from collections import Counter

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from driftwarden.config import Topics

TOPICS = Topics.__struct_fields__  # every topic, so a test's worker shares none
NOW = time.time()


def worker_env(prefix: str, **extra: str) -> dict[str, str]:
    """Settings of a worker of its own (topics, group) with small windows."""
    env = {f"DRIFTWARDEN_TOPICS__{t.upper()}": f"{prefix}.{t}" for t in TOPICS}
    env.update({"DRIFTWARDEN_KAFKA__GROUP_ID": f"{prefix}-workers",
                "DRIFTWARDEN_KAFKA__PARTITIONS": "2",
                "DRIFTWARDEN_KAFKA__CHECKPOINT_SECONDS": "1",
                "DRIFTWARDEN_DETECTION__SLICES": "3", "DRIFTWARDEN_DETECTION__SLICE_SECONDS": "1",
                "DRIFTWARDEN_DETECTION__ALLOWED_LATENESS": "0",
                "DRIFTWARDEN_DETECTION__CALIBRATION_SIMS": "30",
                # sources idle soon: the last slices reach the merge stage in seconds
                "DRIFTWARDEN_DETECTION__IDLE_CLOSE_SECONDS": "2"})
    env.update(extra)
    return env


def record(model: str, i: int, ts: float, shift: float = 0.0) -> bytes:
    """A good single-record message (deterministic values)."""
    x = ((i * 7919) % 1000) / 1000.0
    return orjson.dumps({"model": model, "version": "1", "id": f"{model}{i}", "ts": ts,
                         "features": {"x": x * 4 - 2 + shift, "c": "ab"[i % 2]},
                         "prediction": x})


def producer(bootstrap: str) -> Producer:
    return Producer({"bootstrap.servers": bootstrap, "linger.ms": 20,
                     "message.max.bytes": 4_000_000, "enable.idempotence": True})


def produce(p: Producer, topic: str, values, partition: int | None = None,
            key: bytes | None = None) -> int:
    """Produce every value (waiting while the local queue is full) and flush."""
    from driftwarden.kafka import produce as produce_one

    n = 0
    kwargs = {} if partition is None else {"partition": partition}
    for v in values:
        produce_one(p, topic, v, key, **kwargs)
        n += 1
        if n % 1000 == 0:
            p.poll(0)
    assert p.flush(60) == 0
    return n


def read_topic(bootstrap: str, topic: str, timeout: float = 30.0, idle: float = 2.0) -> list:
    """Every message of ``topic`` now: (value, headers dict). Read until the reported end
    offsets are reached and then nothing more comes for ``idle`` seconds — this broker's end
    offsets can trail the data it serves (FIELD-NOTES), so they are a floor, not the end."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "fault-reader",
                  "enable.auto.commit": False})
    try:
        meta = c.list_topics(topic, timeout=10).topics.get(topic)
        parts = sorted(meta.partitions) if meta else []
        if not parts:
            return []
        high = {}
        start = []
        for p in parts:
            low, high[p] = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            start.append(TopicPartition(topic, p, low))
        c.assign(start)
        pos = {tp.partition: tp.offset for tp in start}
        out = []
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            got = c.consume(1000, 0.3)
            for m in got:
                if m.error() is None:
                    out.append((m.value(), dict(m.headers() or [])))
                    pos[m.partition()] = m.offset() + 1
            if got:
                quiet_since = time.monotonic()
            elif (all(pos[p] >= high[p] for p in parts)
                  and time.monotonic() - quiet_since >= idle):
                break
        return out
    finally:
        c.close()


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """The worker's /metrics as {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def metric(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, lab), v in samples.items()
               if n == name and all(dict(lab).get(k) == w for k, w in labels.items()))


def fates(port: int) -> Counter:
    """messages_total by outcome (used, dead_lettered, held)."""
    samples = scrape(port)
    return Counter({dict(lab)["outcome"]: v for (n, lab), v in samples.items()
                    if n == "driftwarden_messages_total"})


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class ProduceHold:
    """A TCP relay in front of the broker (which advertises the relay's port) that can make
    the broker unreachable for writes only: while held, a connection that sends a Produce
    request (Kafka API key 0) from any client but ``exempt`` is frozen — that request and
    everything after it wait — and on release such connections are closed, as a network
    partition would leave them; the client retries on a new one. Fetches go on, so the
    worker keeps consuming and making actions it cannot deliver."""

    def __init__(self, port: int, upstream: int, exempt: bytes = b"fault-test") -> None:
        import socket
        import threading

        self.upstream = upstream
        self.exempt = exempt
        self.held = threading.Event()
        self.released = threading.Event()
        self.frozen = 0
        self.listener = socket.create_server(("127.0.0.1", port))
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def hold(self) -> None:
        self.released.clear()
        self.held.set()

    def release(self) -> None:
        self.held.clear()
        self.released.set()

    def close(self) -> None:
        self._stop = True
        self.listener.close()

    def _accept(self) -> None:
        import socket
        import threading

        while not self._stop:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            threading.Thread(target=self._requests, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client), daemon=True).start()

    @staticmethod
    def _recv(sock, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise OSError("closed")
            buf += chunk
        return buf

    def _requests(self, client, server) -> None:
        try:
            while True:
                size = self._recv(client, 4)
                body = self._recv(client, int.from_bytes(size, "big"))
                api_key = int.from_bytes(body[0:2], "big", signed=True)
                n = int.from_bytes(body[8:10], "big", signed=True)
                client_id = body[10:10 + max(n, 0)]
                if self.held.is_set() and api_key == 0 and client_id != self.exempt:
                    self.frozen += 1
                    self.released.wait()
                    raise OSError("partitioned")  # close: the client retries elsewhere
                server.sendall(size + body)
        except OSError:
            pass
        finally:
            _close(client, server)

    @staticmethod
    def _pipe(src, dst) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(src, dst)


def _close(*socks) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.close()
