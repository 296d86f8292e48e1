"""Per-partition checkpoints of a worker's state in a compacted topic: its changelog.

A worker keeps one :class:`~driftwarden.stream.service.StreamService` per source partition
number (the prediction, feature and label topics are co-partitioned: same key, same count).
Every few seconds it saves each changed one — monitors, pending labels, the response policy's
memory and **the offset of the last message applied per topic partition** — as one blob
(JSON, zlib) to partition *p* of the state topic, and only then lets Faust commit the source
offsets up to it. After a crash, the partition's next owner restores the blob and skips the
messages it already holds; the ones after it are replayed and give the same events with the
same ids. Every record is counted once, none is lost.

A blob may be larger than a Kafka message, so it is written in chunks under keys of one of two
slots, then a ``manifest`` naming the slot, the chunk count and the blob's SHA-256. A crash
half-way through leaves the previous manifest pointing at the other, intact slot. Compaction
keeps the newest value per key, so the topic stays about two blobs per partition.

>>> blob = encode_state({"offsets": {"t/0": 41}})
>>> chunks, manifest = split(blob, generation=3, chunk_bytes=8)
>>> [k for k, _ in chunks][:2], orjson.loads(manifest)["slot"]
(['s1/0', 's1/1'], 1)
>>> decode_state(assemble(dict(chunks), orjson.loads(manifest)))
{'offsets': {'t/0': 41}}
"""

from __future__ import annotations

import hashlib
import logging
import time
import zlib
from collections.abc import Mapping
from typing import Any

import orjson

from driftwarden.config import Settings
from driftwarden.errors import DriftwardenError

log = logging.getLogger("driftwarden.checkpoint")

CHUNK_BYTES = 512 * 1024
MANIFEST = "manifest"


def encode_state(state: Mapping[str, Any]) -> bytes:
    return zlib.compress(orjson.dumps(state, option=orjson.OPT_SERIALIZE_NUMPY), 1)


def decode_state(blob: bytes) -> Any:
    return orjson.loads(zlib.decompress(blob))


def split(blob: bytes, generation: int, chunk_bytes: int = CHUNK_BYTES
          ) -> tuple[list[tuple[str, bytes]], bytes]:
    """The chunk messages (key, value) of one blob and its manifest."""
    slot = generation % 2
    chunks = [(f"s{slot}/{i}", blob[o:o + chunk_bytes])
              for i, o in enumerate(range(0, max(len(blob), 1), chunk_bytes))]
    manifest = orjson.dumps({"generation": generation, "slot": slot, "chunks": len(chunks),
                             "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest(),
                             "written_at": time.time()})
    return chunks, manifest


def assemble(latest: Mapping[str, bytes], manifest: Mapping[str, Any]) -> bytes:
    """The blob a manifest names, from the newest value of every key; checked."""
    parts = [latest.get(f"s{manifest['slot']}/{i}") for i in range(manifest["chunks"])]
    if any(p is None for p in parts):
        raise DriftwardenError(f"checkpoint generation {manifest['generation']} is incomplete")
    blob = b"".join(parts)  # type: ignore[arg-type]
    if hashlib.sha256(blob).hexdigest() != manifest["sha256"]:
        raise DriftwardenError(f"checkpoint generation {manifest['generation']} is corrupt")
    return blob


class StateStore:
    """Writes and reads the checkpoints of the state topic (see the module docstring).

    Writes go through the caller's confluent-kafka producer (the worker's idempotent output
    producer, so one flush covers the events and the checkpoint that follows them).
    """

    def __init__(self, settings: Settings, producer: Any) -> None:
        self.settings = settings
        self.topic = settings.topics.state
        self.producer = producer
        self.generation: dict[int, int] = {}       # partition -> last generation written
        self.chunks: dict[tuple[int, int], int] = {}  # (partition, slot) -> chunks written

    def write(self, partition: int, state: Mapping[str, Any]) -> int:
        """Produce one checkpoint of ``partition`` (not flushed); returns its size in bytes."""
        blob = encode_state(state)
        gen = self.generation.get(partition, 0) + 1
        chunks, manifest = split(blob, gen)
        slot = gen % 2
        produce = self.producer.produce
        for key, value in chunks:
            produce(self.topic, key=key.encode(), value=value, partition=partition)
        for i in range(len(chunks), self.chunks.get((partition, slot), 0)):
            produce(self.topic, key=f"s{slot}/{i}".encode(), value=None, partition=partition)
        produce(self.topic, key=MANIFEST.encode(), value=manifest, partition=partition)
        self.generation[partition] = gen
        self.chunks[(partition, slot)] = len(chunks)
        return len(blob)

    def read(self, partition: int, timeout: float = 30.0) -> Any | None:
        """The newest complete checkpoint of ``partition`` (decoded), or None."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.settings.kafka.bootstrap_servers,
                             "group.id": "driftwarden-restore", "enable.auto.commit": False,
                             "enable.partition.eof": True, "log.connection.close": False,
                             **self.settings.kafka.client})
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
        if MANIFEST not in latest:
            return None
        manifest = orjson.loads(latest[MANIFEST])
        self.generation[partition] = manifest["generation"]
        for key in latest:
            if key.startswith("s") and "/" in key:
                slot, i = key[1:].split("/")
                k = (partition, int(slot))
                self.chunks[k] = max(self.chunks.get(k, 0), int(i) + 1)
        blob = assemble(latest, manifest)
        log.info("restored partition %d from checkpoint generation %d (%d bytes)",
                 partition, manifest["generation"], len(blob))
        return decode_state(blob)
