"""Checkpoints in the compacted state topic, on the real broker: chunked blobs larger than a
Kafka message round-trip; the pending-label table is saved as a base plus deltas that rebuild
it exactly; a checkpoint cut off half-way leaves the previous one readable."""

from __future__ import annotations

import numpy as np
import pytest
from confluent_kafka import Producer

from driftwarden.config import load_settings
from driftwarden.errors import DriftwardenError
from driftwarden.kafka import ensure_topics
from driftwarden.stream.checkpoint import StateStore, assemble, encode_state, split
from driftwarden.stream.labels import LabelJoiner


def test_split_and_assemble_refuse_missing_or_corrupt_chunks():
    chunks, ref = split("m2", b"x" * 100, chunk_bytes=30)
    latest = dict(chunks)
    assert ref["chunks"] == 4 and assemble(latest, ref) == b"x" * 100
    with pytest.raises(DriftwardenError, match="incomplete"):
        assemble({k: v for k, v in latest.items() if k != "m2/2"}, ref)
    with pytest.raises(DriftwardenError, match="corrupt"):
        assemble({**latest, "m2/1": b"y" * 30}, ref)


@pytest.fixture
def store_env(broker):
    settings = load_settings(env={"DRIFTWARDEN_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
                                  "DRIFTWARDEN_KAFKA__PARTITIONS": "2",
                                  "DRIFTWARDEN_TOPICS__STATE": f"ckpt{id(broker)}.state"})
    ensure_topics(settings)
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers,
                         "enable.idempotence": True})
    return settings, producer


def test_big_state_round_trips_and_a_torn_write_keeps_the_previous(store_env):
    settings, producer = store_env
    store = StateStore(settings, producer)
    assert store.read(1) is None
    rng = np.random.default_rng(0)
    big = {"offsets": {"p/1": 10}, "x": rng.random(300_000).tolist()}  # ~6 MB of JSON
    store.write(1, big)
    store.write(0, {"offsets": {"p/0": 3}})
    assert producer.flush(30) == 0
    fresh = StateStore(settings, producer)  # as a new worker would
    assert fresh.read(1).state == big and fresh.read(0).state == {"offsets": {"p/0": 3}}
    small = {"offsets": {"p/1": 20}}
    fresh.write(1, small)  # the big blob's chunks are tombstoned after the manifest
    assert producer.flush(30) == 0
    again = StateStore(settings, producer)
    assert again.read(1).state == small and set(again.present[1]) == {"m2"}
    # a write torn before its manifest: the next generation's chunks land, no manifest
    chunks, _ = split("m3", encode_state({"offsets": {"p/1": 99}}))
    for key, value in chunks:
        producer.produce(settings.topics.state, key=key.encode(), value=value, partition=1)
    assert producer.flush(30) == 0
    assert StateStore(settings, producer).read(1).state == small


def test_label_table_as_base_and_deltas_rebuilds_it_exactly(store_env):
    settings, producer = store_env
    store = StateStore(settings, producer, min_base_bytes=20_000)
    live = LabelJoiner(max_pending=5_000)
    live.journal = True
    rng = np.random.default_rng(1)
    kinds = []
    for step in range(12):
        ids = [f"r{step}-{i}" for i in range(700)]
        live.add_predictions("m", "1", ids, rng.random(700).tolist(),
                             (step + np.arange(700) / 700).tolist())
        for i in range(0, 700, 7):  # some labels come back
            live.add_label("m", f"r{step}-{i}", 1, ts=step + 1.0)
        store.write(0, {"offsets": {"p/0": step}}, live)
        m = store.manifests[0]
        kinds.append("base" if not m["deltas"] else "delta")
    assert producer.flush(30) == 0
    assert "delta" in kinds and kinds.count("base") >= 2  # deltas, then a new base
    saved = StateStore(settings, producer).read(0)
    rebuilt = LabelJoiner(max_pending=5_000)
    rebuilt.load_pending(saved.pending)
    for d in saved.deltas:
        rebuilt.apply_delta(d)
    assert list(rebuilt._pending.items()) == list(live._pending.items())
    assert live.expired > 0 and saved.state == {"offsets": {"p/0": 11}}  # the cap was hit
