"""Per-partition checkpoints of a worker's state in a compacted topic: its changelog.

A worker keeps one :class:`~driftwarden.stream.service.StreamService` per source partition
number (the prediction, feature and label topics are co-partitioned: same key, same count).
Every few seconds it saves each changed one — monitors, the response policy's memory, counters
and **the offset of the last message applied per topic partition** — to partition *p* of the
state topic, and only then lets Faust commit the source offsets up to it. After a crash, the
partition's next owner restores it and skips the messages it already holds; the ones after it
are replayed and give the same events with the same ids. Every record is counted once.

The pending-label table can hold a million predictions, too many to rewrite every few
seconds: it is saved as a **base** (the whole table, now and then) plus **deltas** (what was
added and joined since), and a new base is written once the deltas outgrow the last one — so
the cost of a checkpoint follows the traffic since the previous one, not the table's size.

Every saved piece is a **blob** (JSON; the producer compresses it with lz4 in librdkafka's own
threads, off the GIL — blobs of older versions are zlib and still read) written in chunks of at
most 512 kB under keys
``NAME/i``; names are unique per checkpoint generation. The last message of a checkpoint is
the ``manifest`` naming its blobs with their SHA-256; blobs no longer named are tombstoned
after it, so compaction keeps the topic at about one checkpoint per partition. A crash half-way
leaves the previous manifest and everything it names intact.

>>> blob = encode_state({"offsets": {"t/0": 41}})
>>> chunks, ref = split("m3", blob, chunk_bytes=8)
>>> [k for k, _ in chunks][:2], ref["chunks"] == len(chunks)
(['m3/0', 'm3/1'], True)
>>> decode_state(assemble(dict(chunks), ref))
{'offsets': {'t/0': 41}}
"""

from __future__ import annotations

import hashlib
import logging
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from driftwarden.config import Settings
from driftwarden.errors import DriftwardenError
from driftwarden.kafka import client_config, produce
from driftwarden.stream.labels import JoinerTables, LabelJoiner

log = logging.getLogger("driftwarden.checkpoint")

CHUNK_BYTES = 512 * 1024
MANIFEST = "manifest"


def encode_state(state: Any) -> bytes:
    """JSON; not compressed here: compressing a checkpoint in Python held the event loop for
    ~0.16 s per 35 MB of label-table delta (5 s of batch traffic), lz4 in the producer does
    it on librdkafka's threads."""
    return orjson.dumps(state, option=orjson.OPT_SERIALIZE_NUMPY)


def decode_state(blob: bytes) -> Any:
    """A blob of :func:`encode_state`, or a zlib one of an earlier version.

    >>> decode_state(zlib.compress(b'{"a": 1}')), decode_state(encode_state({"a": 1}))
    ({'a': 1}, {'a': 1})
    """
    if blob[:1] == b"\x78":  # zlib's header; JSON starts with { [ or a value
        blob = zlib.decompress(blob)
    return orjson.loads(blob)


def split(name: str, blob: bytes, chunk_bytes: int = CHUNK_BYTES
          ) -> tuple[list[tuple[str, bytes]], dict[str, Any]]:
    """The chunk messages (key, value) of one blob and the manifest's reference to it."""
    chunks = [(f"{name}/{i}", blob[o:o + chunk_bytes])
              for i, o in enumerate(range(0, max(len(blob), 1), chunk_bytes))]
    return chunks, {"name": name, "chunks": len(chunks), "bytes": len(blob),
                    "sha256": hashlib.sha256(blob).hexdigest()}


def assemble(latest: Mapping[str, bytes], ref: Mapping[str, Any]) -> bytes:
    """The blob a manifest reference names, from the newest value of every key; checked."""
    parts = [latest.get(f"{ref['name']}/{i}") for i in range(ref["chunks"])]
    if any(p is None for p in parts):
        raise DriftwardenError(f"checkpoint blob {ref['name']} is incomplete")
    blob = b"".join(parts)  # type: ignore[arg-type]
    if hashlib.sha256(blob).hexdigest() != ref["sha256"]:
        raise DriftwardenError(f"checkpoint blob {ref['name']} is corrupt")
    return blob


@dataclass
class Restored:
    """A partition's checkpoint: the service state, the label table's base and deltas."""

    state: Any
    pending: Any
    deltas: list[Any]
    generation: int


class StateStore:
    """Writes and reads the checkpoints of the state topic (see the module docstring).

    Writes go through the caller's confluent-kafka producer (the worker's idempotent output
    producer, so one flush covers the events and the checkpoint that follows them).
    """

    def __init__(self, settings: Settings, producer: Any, chunk_bytes: int = CHUNK_BYTES,
                 min_base_bytes: int = 1 << 20) -> None:
        self.settings = settings
        self.topic = settings.topics.state
        self.producer = producer
        self.chunk_bytes = chunk_bytes
        self.min_base_bytes = min_base_bytes
        self.manifests: dict[int, dict[str, Any]] = {}  # partition -> last manifest
        self.present: dict[int, dict[str, int]] = {}    # partition -> blob name -> chunks

    def _produce(self, partition: int, key: str, value: bytes | None) -> None:
        # the worker's OutputProducer (whose client may be renewed) or a plain Producer
        put = getattr(self.producer, "put", None)
        if put is not None:
            put(self.topic, value, key.encode(), partition)
        else:
            produce(self.producer, self.topic, value, key.encode(), partition=partition)

    def forget_delivery(self) -> None:
        """What was produced may not have been delivered (the producer was renewed after a
        fatal error): the next checkpoint of every partition writes a whole new base instead
        of a delta on blobs that may be missing."""
        for p, m in self.manifests.items():
            self.manifests[p] = {"generation": m["generation"], "base": None, "deltas": []}

    def _put(self, partition: int, name: str, blob: bytes) -> dict[str, Any]:
        chunks, ref = split(name, blob, self.chunk_bytes)
        for key, value in chunks:
            self._produce(partition, key, value)
        self.present.setdefault(partition, {})[name] = len(chunks)
        return ref

    def write(self, partition: int, state: Mapping[str, Any],
              labels: JoinerTables | LabelJoiner | None = None) -> int:
        """Produce one checkpoint of ``partition`` (not flushed): ``state`` whole, and the
        changes of the ``labels`` table since the last one (journal on), or a new base of it.
        Returns the bytes written."""
        prev = self.manifests.get(partition, {"generation": 0, "base": None, "deltas": []})
        gen = prev["generation"] + 1
        main = encode_state(state)  # everything is encoded before anything is produced
        if labels is not None:
            changes = labels.take_delta()
            try:
                delta = encode_state(changes)
            except Exception:
                labels.restore_delta(changes)  # saved with the next checkpoint
                raise
        refs = {"main": self._put(partition, f"m{gen}", main),
                "base": prev["base"], "deltas": list(prev["deltas"])}
        if labels is not None:
            grown = sum(d["bytes"] for d in refs["deltas"]) + len(delta)
            base_bytes = prev["base"]["bytes"] if prev["base"] else 0
            if prev["base"] is None or grown > max(base_bytes, self.min_base_bytes):
                refs["base"] = self._put(partition, f"b{gen}",
                                         encode_state(labels.pending_state()))
                refs["deltas"] = []
            else:
                refs["deltas"].append(self._put(partition, f"d{gen}", delta))
        manifest = {"generation": gen, **refs, "written_at": time.time()}
        self._produce(partition, MANIFEST, orjson.dumps(manifest))
        self.manifests[partition] = manifest
        # what the new manifest no longer names can go (after it, so a crash keeps the old)
        named = {manifest["main"]["name"]} | {d["name"] for d in manifest["deltas"]}
        if manifest["base"]:
            named.add(manifest["base"]["name"])
        present = self.present.setdefault(partition, {})
        for name in [n for n in present if n not in named]:
            for i in range(present.pop(name)):
                self._produce(partition, f"{name}/{i}", None)
        return sum(r["bytes"] for r in [refs["main"], refs["base"], *refs["deltas"]] if r)

    def read(self, partition: int, timeout: float = 30.0) -> Restored | None:
        """The newest complete checkpoint of ``partition``, or None."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer(client_config(self.settings, {
            "group.id": "driftwarden-restore", "enable.auto.commit": False}), logger=log)
        latest: dict[str, bytes] = {}
        try:
            tp = TopicPartition(self.topic, partition)
            low, high = consumer.get_watermark_offsets(tp, timeout=timeout)
            if high <= low:
                return None
            consumer.assign([TopicPartition(self.topic, partition, OFFSET_BEGINNING)])
            deadline = time.monotonic() + timeout
            position = low
            while position < high:
                if time.monotonic() > deadline:
                    raise DriftwardenError(f"reading checkpoint of partition {partition} "
                                           f"timed out at offset {position} of {high}")
                for m in consumer.consume(1000, 0.5):
                    if m.error() is not None:
                        continue
                    key = (m.key() or b"").decode()
                    value = m.value()
                    if value is None:
                        latest.pop(key, None)
                    else:
                        latest[key] = value
                    position = int(m.offset() or 0) + 1
        finally:
            consumer.close()
        present: dict[str, int] = {}
        for key in latest:
            if "/" in key:
                name, i = key.rsplit("/", 1)
                present[name] = max(present.get(name, 0), int(i) + 1)
        self.present[partition] = present  # the next write tombstones what is not named
        if MANIFEST not in latest:
            return None
        manifest = orjson.loads(latest[MANIFEST])
        self.manifests[partition] = manifest
        state = decode_state(assemble(latest, manifest["main"]))
        pending = (decode_state(assemble(latest, manifest["base"]))
                   if manifest["base"] else None)
        deltas = [decode_state(assemble(latest, d)) for d in manifest["deltas"]]
        log.info("restored partition %d from checkpoint generation %d (%d deltas)",
                 partition, manifest["generation"], len(deltas))
        return Restored(state, pending, deltas, manifest["generation"])
