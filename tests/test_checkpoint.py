"""Checkpoints in the compacted state topic, on the real broker: chunked blobs larger than a
Kafka message round-trip; a checkpoint cut off half-way leaves the previous one readable."""

from __future__ import annotations

import numpy as np
import pytest
from confluent_kafka import Producer

from driftwarden.config import load_settings
from driftwarden.errors import DriftwardenError
from driftwarden.stream.app import ensure_topics
from driftwarden.stream.checkpoint import StateStore, assemble, split


def test_split_and_assemble_refuse_missing_or_corrupt_chunks():
    chunks, manifest = split(b"x" * 100, generation=2, chunk_bytes=30)
    import orjson

    m = orjson.loads(manifest)
    latest = dict(chunks)
    assert m["chunks"] == 4 and assemble(latest, m) == b"x" * 100
    with pytest.raises(DriftwardenError, match="incomplete"):
        assemble({k: v for k, v in latest.items() if k != "s0/2"}, m)
    with pytest.raises(DriftwardenError, match="corrupt"):
        assemble({**latest, "s0/1": b"y" * 30}, m)


def test_state_store_round_trip_and_a_torn_write(broker):
    settings = load_settings(env={"DRIFTWARDEN_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
                                  "DRIFTWARDEN_KAFKA__PARTITIONS": "2",
                                  "DRIFTWARDEN_TOPICS__STATE": "ckpt.state"})
    ensure_topics(settings)
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers,
                         "enable.idempotence": True})
    store = StateStore(settings, producer)
    assert store.read(1) is None
    rng = np.random.default_rng(0)
    big = {"offsets": {"p/1": 10}, "x": rng.random(300_000).tolist()}  # ~6 MB of JSON
    store.write(1, big)
    store.write(0, {"offsets": {"p/0": 3}})
    assert producer.flush(30) == 0
    fresh = StateStore(settings, producer)  # as a new worker would
    assert fresh.read(1) == big and fresh.read(0) == {"offsets": {"p/0": 3}}
    small = {"offsets": {"p/1": 20}}
    fresh.write(1, small)  # fewer chunks than before, in the other slot
    assert producer.flush(30) == 0
    assert StateStore(settings, producer).read(1) == small
    # a write torn before its manifest: the chunks of the next slot land, the manifest not
    torn = StateStore(settings, producer)
    torn.read(1)
    blob_chunks, _ = split(b"garbage" * 200_000, generation=torn.generation[1] + 1)
    for key, value in blob_chunks:
        producer.produce("ckpt.state", key=key.encode(), value=value, partition=1)
    assert producer.flush(30) == 0
    assert StateStore(settings, producer).read(1) == small
