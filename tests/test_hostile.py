"""The observations of the hardening issue, one test each at the level where they broke (the
stream service, the dead-letter path, the output producer); the worker-level ones (a false
stall after a restart, Faust's pages, tokens on /models) are in tests/faults/."""

from __future__ import annotations

import time

import orjson
import pytest

from driftwarden.config import load_settings
from driftwarden.stream.checkpoint import decode_state, encode_state
from driftwarden.stream.service import RawMessage, StreamService

NOW = time.time()
PRED, LABEL = "driftwarden.predictions", "driftwarden.labels"
SETTINGS = load_settings(env={"DRIFTWARDEN_DETECTION__WARMUP": "500",
                              "DRIFTWARDEN_DETECTION__SLICES": "3",
                              "DRIFTWARDEN_DETECTION__SLICE_SECONDS": "1",
                              "DRIFTWARDEN_DETECTION__ALLOWED_LATENESS": "0",
                              "DRIFTWARDEN_DETECTION__CALIBRATION_SIMS": "20"})


def good(i, ts=None, model="m"):
    return orjson.dumps({"model": model, "version": "1", "id": f"p{i}",
                         "ts": NOW - 100 + i / 100 if ts is None else ts,
                         "features": {"a": float(i % 13), "c": "x" if i % 3 else "y"},
                         "prediction": (i % 10) / 10})


def msgs(bodies, topic=PRED, offset0=0):
    return [RawMessage(b, [], topic, 0, offset0 + i, NOW) for i, b in enumerate(bodies)]


def dlq(outs, svc):
    return [(dict(o.headers)["dw.reason"].decode(), int(dict(o.headers)["dw.source.offset"]))
            for o in outs if o.topic == svc.topics.dlq]


def counted(svc, model="m"):
    return svc.counts[f"{model}\x1f1\x1fprediction"]


# 1. one integer beyond 64 bits took every worker down (checkpoint encoding), for good
@pytest.mark.parametrize("where", ["prediction", "feature", "id", "version", "latency_ms"])
def test_an_integer_beyond_64_bits_is_normalised_and_the_state_still_encodes(where):
    big = 18446744073709551616
    rec = {"model": "m", "version": "1", "id": "p1", "ts": NOW, "features": {"a": 1.0},
           "prediction": 0.5}
    if where == "feature":
        rec["features"]["a"] = big
    else:
        rec[where] = big
    svc = StreamService(SETTINGS)
    outs = svc.handle_predictions(msgs([_json(rec)]))
    state = decode_state(encode_state(svc.to_state()))  # raised TypeError before
    again = StreamService(SETTINGS)
    again.restore(state)
    if where in ("prediction", "feature", "latency_ms"):
        assert counted(svc) == 1 and not dlq(outs, svc)
    else:  # an id or a version of 20 digits is text; the version is then another version
        assert sum(svc.counts.values()) == 1 and not dlq(outs, svc)


def _json(obj):
    import json

    return json.dumps(obj).encode()


# 2. broken UTF-8 inside a message of the fast paths, or deep nesting: the batch was lost
@pytest.mark.parametrize("bad", [
    b'{"model":"m","version":"1","features":{"a":"\xff"},"prediction":1}',
    b'{"model":"m","version":"1","records":[{"features":{"a":"\xc3"}}]}',
    b'{"model":"m","features":{"a":' + b"[" * 3000 + b"]" * 3000 + b"}}",
    b'{"model":"m","records":[' + b"[" * 5000 + b"]" * 5000 + b"]}",
    b"[" * 100_000 + b"]" * 100_000,
])
@pytest.mark.parametrize("topic", [PRED, LABEL])
def test_a_bad_message_among_good_ones_is_dead_lettered_and_none_is_lost(bad, topic):
    svc = StreamService(SETTINGS)
    if topic == LABEL:
        svc.handle_predictions(msgs([good(i) for i in range(1000)]))
        labels = [orjson.dumps({"model": "m", "id": f"p{i}", "label": i % 2, "ts": NOW - 50})
                  for i in range(1000)]
        outs = svc.handle_labels(msgs(labels[:500] + [bad] + labels[500:], LABEL))
        assert svc.labels.joined == 1000
    else:
        outs = svc.handle_predictions(msgs([good(i) for i in range(500)] + [bad] +
                                           [good(i) for i in range(500, 1000)]))
        assert counted(svc) == 1000
    assert [r for r, _ in dlq(outs, svc)] in (["bad_utf8"], ["bad_json"])
    assert dlq(outs, svc)[0][1] == 500


# 3. an oversized message crashed the agent (its dead letter was over the producer's limit)
def test_an_oversized_message_is_dead_lettered_within_the_producers_limit():
    import hashlib

    body = b'{"model":"m","features":{"a":"' + b"x" * 1_100_000 + b'"}}'
    svc = StreamService(SETTINGS)
    outs = svc.handle_predictions(msgs([good(0), body, good(1)]))
    (letter,) = [o for o in outs if o.topic == svc.topics.dlq]
    h = dict(letter.headers)
    assert h["dw.reason"] == b"oversized" and len(letter.value) <= 262_144
    assert h["dw.original.bytes"] == str(len(body)).encode()
    assert h["dw.original.sha256"] == hashlib.sha256(body).hexdigest().encode()
    assert counted(svc) == 2


def test_the_output_producer_survives_a_message_it_refuses():
    """librdkafka refuses a message over message.max.bytes at once (no broker needed): it is
    counted and logged, and the outputs after it are still queued."""
    from driftwarden.embedded import free_port
    from driftwarden.stream.producer import OutputProducer
    from driftwarden.stream.service import Output

    settings = load_settings(env={"DRIFTWARDEN_KAFKA__BOOTSTRAP_SERVERS":
                                  f"127.0.0.1:{free_port()}"})
    producer = OutputProducer(settings)
    producer.send([Output("t", None, b"x" * 2_000_000), Output("t", None, b"small")])
    assert producer.failed == 1 and len(producer.raw) == 1
    # an action the client refused is not "in flight": a later send (the outbox) queues it
    action = settings.topics.actions
    head = [("dw.event_id", b"e1")]
    producer.send([Output(action, None, b"x" * 2_000_000, head)])
    assert producer.failed == 2 and producer.in_flight == set()
    producer.send([Output(action, None, b"{}", head), Output(action, None, b"{}", head)])
    assert len(producer.raw) == 2 and producer.in_flight == {"e1"}  # queued once


# 4. one record with a timestamp far in the future blinded its model (every later one late)
@pytest.mark.parametrize("ts", [1e11, 1e18, "5000-01-01T00:00:00Z", -5.0])
def test_a_timestamp_far_from_the_messages_clock_is_a_bad_timestamp(ts):
    svc = StreamService(SETTINGS)
    svc.handle_predictions(msgs([good(i) for i in range(600)]))  # warm-up and a window
    poison = orjson.dumps({"model": "m", "version": "1", "features": {"a": 1.0}, "ts": ts})
    outs = svc.handle_predictions(msgs([poison] + [good(i) for i in range(600, 1600)],
                                       offset0=600))
    assert dlq(outs, svc) == [("bad_timestamp", 600)]
    monitor = svc.monitors[("m", "1")]
    assert monitor.n_late == 0 and counted(svc) == 1600


def test_a_label_from_the_far_future_does_not_expire_the_pending_predictions():
    svc = StreamService(SETTINGS)
    svc.handle_predictions(msgs([good(i) for i in range(100)]))
    poison = orjson.dumps({"model": "m", "id": "zz", "label": 1, "ts": 1e11})
    outs = svc.handle_labels(msgs([poison] + [orjson.dumps(
        {"model": "m", "id": f"p{i}", "label": 1, "ts": NOW - 90}) for i in range(100)], LABEL))
    assert dlq(outs, svc) == [("bad_timestamp", 0)] and svc.labels.joined == 100


# 5. bounded by size, not only by count
def test_too_many_features_long_names_and_long_values_are_refused():
    svc = StreamService(SETTINGS)
    wide = orjson.dumps({"model": "m", "features": {f"f{i}": 1.0 for i in range(10_000)}})
    long_model = orjson.dumps({"model": "m" * 100_000, "features": {"a": 1.0}})
    long_feature = orjson.dumps({"model": "m", "features": {"a" * 10_000: 1.0}})
    long_value = orjson.dumps({"model": "m", "features": {"a": "v" * 100_000}})
    batch = orjson.dumps({"model": "m", "version": "1", "records": [
        {"features": {"a": 1.0}}] * 3 + [{"features": {f"f{i}": 1.0 for i in range(5000)}}]})
    outs = svc.handle_predictions(msgs([wide, long_model, long_feature, long_value, batch]))
    assert [r for r, _ in dlq(outs, svc)] == ["limit_exceeded"] * 5
    assert counted(svc) == 3
    assert max(len(m) for m, _ in svc.admitted) <= SETTINGS.limits.max_name_chars


def test_a_model_cannot_grow_past_its_feature_cap():
    svc = StreamService(load_settings(env={"DRIFTWARDEN_LIMITS__MAX_FEATURES_PER_MODEL": "30"}))
    bodies = [orjson.dumps({"model": "m", "features": {f"f{i}_{j}": 1.0 for j in range(10)}})
              for i in range(5)]
    outs = svc.handle_predictions(msgs(bodies))
    assert dlq(outs, svc) == [("limit_exceeded", 3), ("limit_exceeded", 4)]
    assert len(svc.model_features["m"]) == 30


def test_waiting_labels_keep_only_what_the_join_needs():
    svc = StreamService(SETTINGS)
    padding = "x" * 900_000
    labels = [orjson.dumps({"model": "m", "id": f"q{i}", "label": 1, "ts": NOW - 10,
                            "padding": padding}) for i in range(150)]
    svc.handle_labels(msgs(labels, LABEL))
    assert len(svc.labels._waiting) == 150
    assert len(encode_state(svc.to_state())) < 100_000  # was 150 × 900 kB


def test_a_resent_message_is_a_duplicate_not_a_dead_letter_nor_counted_twice():
    svc = StreamService(SETTINGS)
    first = [good(i) for i in range(10)]
    batch = orjson.dumps({"model": "m", "version": "1", "records": [
        orjson.loads(b) for b in first[:5]]})
    outs = svc.handle_predictions(msgs(first + [first[3], batch]))
    assert dlq(outs, svc) == [] and counted(svc) == 10
    assert svc.messages == {"used": 10, "duplicate": 2} and svc.duplicates["m"] == 6


def test_names_with_a_nul_character_are_refused_before_they_reach_the_store():
    """PostgreSQL refuses NUL in text: a model, version or feature name holding one would be
    an incident the store can never record."""
    svc = StreamService(SETTINGS)
    bodies = [orjson.dumps({"model": "a\x00b", "features": {"x": 1.0}}),
              orjson.dumps({"model": "m", "version": "1\x00", "features": {"x": 1.0}}),
              orjson.dumps({"model": "m", "version": "1", "features": {"x\x00": 1.0}}),
              good(0)]
    outs = svc.handle_predictions(msgs(bodies))
    assert dlq(outs, svc) == [("invalid_record", 0), ("invalid_record", 1),
                              ("invalid_record", 2)]
    assert sorted(svc.admitted) == [("m", "1")] and counted(svc) == 1
