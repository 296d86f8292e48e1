"""Hostile input through the stream service, generated: no exception escapes, every message is
used, dead-lettered or held exactly once, the state always round-trips through the checkpoint
encoding, and /metrics parses with a bounded series count.

Every input that once broke an invariant is kept in ``tests/fuzz_corpus/`` (one message per
file, ``*.pred`` for the prediction topic, ``*.label`` for the label topic, an optional
``*.headers`` JSON beside it) and replayed by :func:`test_corpus_cases_hold_the_invariants`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from driftwarden.config import load_settings
from driftwarden.metrics import MAX_FEATURES, Metrics
from driftwarden.schema import REASONS
from driftwarden.stream.checkpoint import decode_state, encode_state
from driftwarden.stream.service import RawMessage, StreamService

CORPUS = Path(__file__).parent / "fuzz_corpus"
PRED, LABEL = "driftwarden.predictions", "driftwarden.labels"
SETTINGS = load_settings(env={
    "DRIFTWARDEN_DETECTION__WARMUP": "40", "DRIFTWARDEN_DETECTION__SLICES": "2",
    "DRIFTWARDEN_DETECTION__SLICE_SECONDS": "1", "DRIFTWARDEN_DETECTION__ALLOWED_LATENESS": "0",
    "DRIFTWARDEN_DETECTION__CALIBRATION_SIMS": "10", "DRIFTWARDEN_MAX_MODELS": "5",
    "DRIFTWARDEN_LIMITS__MAX_FEATURES": "50", "DRIFTWARDEN_LIMITS__MAX_FEATURES_PER_MODEL": "80",
    "DRIFTWARDEN_LIMITS__MAX_NAME_CHARS": "64", "DRIFTWARDEN_LIMITS__MAX_VALUE_CHARS": "256",
    "DRIFTWARDEN_LIMITS__DLQ_MAX_BYTES": "4096"})
NOW = time.time()
FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- generators -------------------------------------------------------------------------------
huge_ints = st.sampled_from([2 ** 53 + 1, 2 ** 63, 2 ** 64, -(2 ** 64), 10 ** 30, 10 ** 400,
                             -(10 ** 400)])
scalars = st.one_of(st.none(), st.booleans(), st.integers(), huge_ints,
                    st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=20), st.text(min_size=300, max_size=400))
json_trees = st.recursive(scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=8), kids, max_size=4)),
    max_leaves=20)
names = st.one_of(st.sampled_from(["a", "b", "c", "amount", "country"]), st.text(max_size=5),
                  st.text(min_size=65, max_size=80))
timestamps = st.one_of(st.none(), st.just(NOW), st.floats(NOW - 100, NOW + 100),
                       st.sampled_from([-1.0, 0.0, 1e11, 1e18, NOW + 4000, 2 ** 64, 10 ** 400,
                                        "2026-11-28T10:00:00Z", "5000-01-01T00:00:00Z",
                                        "yesterday", "2026-11-28T10:00:00"]), json_trees)
features = st.one_of(
    st.dictionaries(names, scalars, max_size=6),
    st.dictionaries(st.sampled_from(["a", "b", "c"]), st.floats(-5, 5), min_size=3),
    st.dictionaries(names, json_trees, max_size=4),
    st.integers(30, 70).map(lambda n: {f"f{i}": float(i) for i in range(n)}),
    json_trees)


@st.composite
def records(draw):
    rec = {"features": draw(features)}
    for key, values in (("model", st.one_of(st.sampled_from(["m1", "m2"]), names, json_trees)),
                        ("version", st.one_of(st.sampled_from(["1", 2]), huge_ints, scalars)),
                        ("id", st.one_of(st.text(max_size=6), st.integers(), huge_ints,
                                         st.text(min_size=300, max_size=300))),
                        ("ts", timestamps), ("prediction", st.one_of(scalars, json_trees)),
                        ("latency_ms", scalars),
                        ("segment", st.one_of(st.dictionaries(names, scalars, max_size=3),
                                              st.integers(17, 20).map(
                                                  lambda n: {f"s{i}": "x" for i in range(n)})))):
        if draw(st.integers(0, 3)):  # most fields present, each sometimes absent
            rec[key] = draw(values)
    rec.setdefault("model", "m1")
    return rec


def _dumps(obj) -> bytes:
    """JSON as a hostile producer writes it: NaN and Infinity tokens, huge integers."""
    return json.dumps(obj, allow_nan=True).encode()


def deep(n: int, leaf: bytes = b"1") -> bytes:
    return b"[" * n + leaf + b"]" * n


@st.composite
def prediction_messages(draw):
    kind = draw(st.sampled_from(["single", "batch", "columns", "arrow", "oip", "kserve",
                                 "bytes", "tree", "deep", "huge", "many"]))
    headers: list[tuple[str, bytes | None]] = []
    if kind == "single":
        body = _dumps(draw(records()))
    elif kind == "batch":
        recs = draw(st.lists(records(), max_size=6))
        body = _dumps({"model": draw(st.one_of(st.just("m1"), names, scalars)),
                       "version": draw(st.one_of(st.just("1"), scalars)), "records": recs})
    elif kind == "columns":  # generated records as a column batch, its columns at times askew
        recs = draw(st.lists(records(), max_size=6))
        cols: dict = {k: [r.get(k) for r in recs] for k in ("id", "ts", "prediction",
                                                               "latency_ms", "segment")
                      if draw(st.booleans())}
        names_ = {n for r in recs if isinstance(r["features"], dict) for n in r["features"]}
        cols["features"] = {n: [r["features"].get(n) if isinstance(r["features"], dict)
                                else None for r in recs] for n in names_}
        if recs and draw(st.integers(0, 4)) == 0:
            victim = draw(st.sampled_from(sorted(set(cols) - {"features"}) or ["ts"]))
            cols[victim] = draw(st.one_of(json_trees, st.lists(scalars, max_size=8)))
        body = _dumps({"model": draw(st.one_of(st.just("m1"), names, scalars)),
                       "version": draw(st.one_of(st.just("1"), scalars)), "columns": cols})
    elif kind == "arrow":  # an Arrow IPC column batch, sometimes with bytes changed
        import pyarrow as pa

        from driftwarden.arrow import encode_table

        n = draw(st.integers(1, 6))
        cols = {"id": [f"a{i}" for i in range(n)],
                "ts": draw(st.lists(st.one_of(st.floats(NOW - 100, NOW + 100), st.just(-1.0),
                                              st.just(1e18)), min_size=n, max_size=n)),
                "a": draw(st.lists(st.floats(-5, 5), min_size=n, max_size=n)),
                "c": draw(st.lists(st.one_of(st.none(), st.text(max_size=300)), min_size=n,
                                   max_size=n))}
        meta = {"driftwarden.model": draw(st.sampled_from(["m1", "m2", "x" * 80])),
                "driftwarden.version": "1"}
        body = bytearray(encode_table(pa.table(cols).replace_schema_metadata(meta)))
        for _ in range(draw(st.integers(0, 3))):
            body[draw(st.integers(0, len(body) - 1))] = draw(st.integers(0, 255))
        body = bytes(body)
    elif kind == "oip":
        n = draw(st.integers(0, 3))
        body = _dumps({"model_name": draw(st.one_of(st.just("m2"), names, scalars)),
                       "model_version": draw(scalars), "id": draw(st.one_of(scalars, huge_ints)),
                       "inputs": [{"name": draw(st.one_of(names, json_trees)),
                                   "shape": draw(st.one_of(st.just([n, 2]), json_trees)),
                                   "datatype": "FP32",
                                   "data": draw(st.lists(scalars, max_size=6))}],
                       "outputs": [{"name": "p", "shape": [n], "datatype": "FP32",
                                    "data": draw(st.lists(scalars, max_size=3))}]})
    elif kind == "kserve":
        side = draw(st.sampled_from(["request", "response", "bogus"]))
        body = _dumps(draw(st.one_of(
            st.fixed_dictionaries({"instances": st.lists(st.lists(scalars, max_size=3),
                                                         max_size=3)}),
            st.fixed_dictionaries({"predictions": st.lists(scalars, max_size=3)}),
            json_trees)))
        headers = [("ce_type", f"org.kubeflow.serving.inference.{side}".encode()),
                   ("ce_id", draw(st.sampled_from([b"e1", b"e2", b"", b"\xff\xfe"]))),
                   ("ce_inferenceservicename", draw(st.sampled_from([b"m3", b"", b"\xff"]))),
                   ("ce_time", draw(st.sampled_from([b"2026-11-28T10:00:00Z", b"5000-01-01",
                                                     b"\xff"])))]
    elif kind == "bytes":
        body = draw(st.binary(max_size=200))
    elif kind == "tree":
        body = _dumps(draw(json_trees))
    elif kind == "deep":
        n = draw(st.sampled_from([100, 255, 256, 1000, 2000, 5000]))
        where = draw(st.sampled_from(["features", "prediction", "records", "top"]))
        body = {"features": b'{"features":{"a":' + deep(n) + b'},"model":"m1"}',
                "prediction": b'{"model":"m1","features":{"a":1.0},"prediction":' + deep(n) + b"}",
                "records": b'{"model":"m1","records":[{"features":{"a":' + deep(n) + b"}}]}",
                "top": deep(n)}[where]
    elif kind == "huge":
        body = _dumps({"model": "m1", "features": {"a": draw(st.text(min_size=1, max_size=3))
                                                   * 5000}, "prediction": 0.5})
    else:  # many features
        n = draw(st.sampled_from([49, 51, 2000]))
        body = _dumps({"model": "m2", "features": {f"x{i}": 1.0 for i in range(n)}})
    if draw(st.integers(0, 4)) == 0 and body:  # broken UTF-8 somewhere
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) + body[at:]
    if draw(st.booleans()):
        headers += draw(st.lists(st.tuples(st.text(max_size=10),
                                           st.one_of(st.none(), st.binary(max_size=30))),
                                 max_size=3))
    return body, headers


@st.composite
def label_messages(draw):
    if draw(st.integers(0, 3)) == 0:
        return draw(st.one_of(st.binary(max_size=100), json_trees.map(_dumps))), []
    body = {"model": draw(st.one_of(st.just("m1"), names, scalars)),
            "id": draw(st.one_of(st.text(max_size=4), st.integers(), huge_ints)),
            "label": draw(st.one_of(scalars, json_trees, st.just(math.nan))),
            "ts": draw(timestamps)}
    return _dumps(body), []


def good(i: int, ts: float) -> bytes:
    return orjson.dumps({"model": "m1", "version": "1", "id": f"g{i}", "ts": ts,
                         "features": {"a": float(i % 7), "b": "x" if i % 2 else "y"},
                         "prediction": (i % 10) / 10})


# -- the invariants ---------------------------------------------------------------------------
def check(svc: StreamService, batches: list[tuple[str, list[tuple[bytes, list]]]]) -> None:
    """Feed ``batches`` (topic, [(body, headers)]) and check every invariant."""
    offset = {PRED: 0, LABEL: 0}
    n_messages = 0
    for topic, msgs in batches:
        raw = []
        for body, headers in msgs:
            raw.append(RawMessage(body, headers, topic, 0, offset[topic], NOW))
            offset[topic] += 1
        n_messages += len(raw)
        before = svc.messages.copy()
        outs = (svc.handle_predictions(raw) if topic == PRED else svc.handle_labels(raw))
        fates = svc.messages - before
        assert sum(fates.values()) == len(raw)  # one fate per message
        # only a CloudEvent half may wait for its other half; anything else is used or dead
        assert fates["held"] <= sum(any(k == "ce_type" for k, _ in h) for _, h in msgs)
        for o in outs:
            h = dict(o.headers)
            if o.topic == svc.topics.dlq:
                assert h["dw.reason"].decode() in REASONS
                assert int(h["dw.source.offset"]) < offset[topic]
                assert len(o.value) <= svc.limits.dlq_max_bytes
                assert sum(len(k) + len(v) for k, v in o.headers) < 20_000
            else:
                orjson.loads(o.value)  # events and late labels are JSON
    assert sum(svc.messages.values()) == n_messages
    # the state is always encodable and restores to itself
    blob = encode_state(svc.to_state())
    again = StreamService(SETTINGS)
    again.restore(decode_state(blob))
    assert encode_state(again.to_state()) == blob
    # /metrics parses; its series are bounded by the model cap and the features per model
    registry = CollectorRegistry()
    Metrics.create(registry, lambda: [svc])
    families = list(text_string_to_metric_families(generate_latest(registry).decode()))
    series = sum(len(f.samples) for f in families)
    assert series <= 200 + SETTINGS.max_models * 2 * (12 * MAX_FEATURES + 40)


@FUZZ
@given(st.lists(prediction_messages(), min_size=1, max_size=12))
def test_hostile_prediction_messages_one_batch(msgs):
    check(StreamService(SETTINGS), [(PRED, msgs)])


@FUZZ
@given(st.lists(st.one_of(st.tuples(st.just(PRED), st.lists(prediction_messages(), max_size=5)),
                          st.tuples(st.just(LABEL), st.lists(label_messages(), max_size=5))),
                min_size=1, max_size=5))
def test_hostile_messages_among_good_ones_past_the_warm_up(batches):
    """Past the warm-up (monitors evaluating windows), hostile messages on both topics, mixed
    with good ones: every good record is counted."""
    svc = StreamService(SETTINGS)
    warm = [(good(i, NOW - 50 + i / 10), []) for i in range(60)]
    mixed = [(t, msgs + [(good(1000 + k, NOW - 40 + k), [])] if t == PRED else msgs)
             for k, (t, msgs) in enumerate(batches)]
    good_sent = 60 + sum(t == PRED for t, _ in batches)
    check(svc, [(PRED, warm), *mixed])
    # every good record is counted (a hostile message may hold valid m1 records too)
    assert svc.counts["m1\x1f1\x1fprediction"] >= good_sent


@FUZZ
@given(st.lists(label_messages(), min_size=1, max_size=12))
def test_hostile_label_messages(msgs):
    svc = StreamService(SETTINGS)
    check(svc, [(PRED, [(good(i, NOW - 5), []) for i in range(5)]), (LABEL, msgs)])


def test_an_exception_anywhere_in_a_message_is_that_message_s_dead_letter(monkeypatch):
    """A fault inside one message's handling: that message is dead-lettered as internal_error,
    every other one is used, exactly once; a fault in a monitor's batch update: retried
    message by message, only the message that raises is dead-lettered."""
    import driftwarden.stream.service as service

    msgs = [RawMessage(good(i, NOW - 30 + i / 10), [], PRED, 0, i, NOW) for i in range(200)]
    svc = StreamService(load_settings(env={"DRIFTWARDEN_FAULT_EVERY": "50",
                                           "DRIFTWARDEN_DETECTION__WARMUP": "40",
                                           "DRIFTWARDEN_DETECTION__CALIBRATION_SIMS": "10"}))
    outs = svc.handle_predictions(msgs)
    dlq = [dict(o.headers) for o in outs if o.topic == svc.topics.dlq]
    assert [(h["dw.reason"], int(h["dw.source.offset"])) for h in dlq] == [
        (b"internal_error", o) for o in (49, 99, 149, 199)]
    assert b"RuntimeError" in dlq[0]["dw.detail"]
    assert svc.counts["m1\x1f1\x1fprediction"] == 196
    assert svc.messages == {"used": 196, "dead_lettered": 4}

    real = service.StreamService._summarise

    def summarise(self, key, batch):  # a summary that cannot take the record with id g213
        if "g213" in batch.ids:
            raise ZeroDivisionError("boom")
        return real(self, key, batch)

    monkeypatch.setattr(service.StreamService, "_summarise", summarise)
    more = [RawMessage(good(i, NOW - 10 + i / 100), [], PRED, 0, i, NOW) for i in range(200, 220)]
    outs = svc.handle_predictions(more)
    dlq = [dict(o.headers) for o in outs if o.topic == svc.topics.dlq]
    assert [(h["dw.reason"], int(h["dw.source.offset"])) for h in dlq] == [
        (b"internal_error", 213)]
    assert b"ZeroDivisionError" in dlq[0]["dw.detail"]
    assert svc.counts["m1\x1f1\x1fprediction"] == 196 + 19


def _corpus() -> list[Path]:
    return sorted(p for p in CORPUS.glob("*") if p.suffix in (".pred", ".label"))


@pytest.mark.parametrize("case", _corpus(), ids=lambda p: p.name)
def test_corpus_cases_hold_the_invariants(case):
    headers_file = case.with_suffix(".headers")
    headers = [tuple(h) for h in json.loads(headers_file.read_text())] if headers_file.exists() \
        else []
    headers = [(k, v.encode("latin-1") if isinstance(v, str) else v) for k, v in headers]
    topic = PRED if case.suffix == ".pred" else LABEL
    svc = StreamService(SETTINGS)
    warm = [(good(i, NOW - 50 + i / 10), []) for i in range(60)]
    check(svc, [(PRED, warm), (topic, [(case.read_bytes(), headers), (good(99, NOW - 40), [])])])
    assert svc.messages["used"] >= 61 - (topic == LABEL)
