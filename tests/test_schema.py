"""Message decoding: every accepted format, and every way a message can be unusable."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from driftwarden.schema import (
    REASONS,
    CloudEventJoiner,
    PredictionRecord,
    RecordBatch,
    decode_label,
    decode_predictions,
)

REQ = b"org.kubeflow.serving.inference.request"
RESP = b"org.kubeflow.serving.inference.response"


def rec(**kw):
    base = {"model": "fraud", "version": "7", "id": "r1", "ts": 1764300000.12,
            "features": {"amount": 12.5, "country": "DE"}, "prediction": 0.87,
            "latency_ms": 11.2, "segment": {"region": "eu"}}
    base.update(kw)
    return base


def test_native_record():
    out = decode_predictions(orjson.dumps(rec()))
    assert out.rejections == []
    assert out.records == [PredictionRecord("fraud", "7", "r1", 1764300000.12,
                                            {"amount": 12.5, "country": "DE"}, 0.87, 11.2,
                                            {"region": "eu"})]


def test_missing_ts_takes_the_message_time_and_rfc3339_is_parsed():
    r = dict(rec())
    del r["ts"]
    assert decode_predictions(orjson.dumps(r), now=123.0).records[0].ts == 123.0
    out = decode_predictions(orjson.dumps(rec(ts="2025-11-28T03:20:00.120+00:00")))
    assert out.records[0].ts == pytest.approx(1764300000.12)


def test_batch_keeps_good_records_and_rejects_bad_ones():
    body = {"model": "fraud", "version": 3, "records": [
        {"id": "a", "features": {"x": 1}},
        {"id": "b", "features": "not a dict"},
        {"id": "c", "features": {"x": 2}, "ts": "yesterday"},
        {"id": "d", "features": {"x": 3}, "model": "other"}]}
    out = decode_predictions(orjson.dumps(body), now=1.0)
    assert [(r.id, r.model, r.version) for r in out.records] == [
        ("a", "fraud", "3"), ("d", "other", "3")]
    assert [(x.reason, x.index) for x in out.rejections] == [
        ("invalid_record", 1), ("bad_timestamp", 2)]


def test_oip_v2_payloads():
    req = {"model_name": "iris", "model_version": "2", "id": "q1",
           "inputs": [{"name": "input-0", "shape": [2, 2], "datatype": "FP32",
                       "data": [[5.1, 3.5], [6.2, 2.9]]}],
           "outputs": [{"name": "out", "shape": [2], "datatype": "INT64", "data": [0, 1]}]}
    out = decode_predictions(orjson.dumps(req), feature_names={"iris": ["sl", "sw"]}, now=9.0)
    assert [(r.id, r.features, r.prediction) for r in out.records] == [
        ("q1:0", {"sl": 5.1, "sw": 3.5}, 0), ("q1:1", {"sl": 6.2, "sw": 2.9}, 1)]
    # one tensor per feature, flat data, no names from the config
    req = {"model_name": "m", "inputs": [
        {"name": "age", "shape": [2], "datatype": "FP32", "data": [30, 40]},
        {"name": "city", "shape": [2, 1], "datatype": "BYTES", "data": ["a", "b"]}]}
    out = decode_predictions(orjson.dumps(req), now=9.0)
    assert [r.features for r in out.records] == [{"age": 30, "city": "a"},
                                                 {"age": 40, "city": "b"}]
    bad = {"model_name": "m", "inputs": [{"name": "x", "shape": [3, 2], "data": [1, 2, 3]}]}
    assert decode_predictions(orjson.dumps(bad)).rejections[0].reason == "shape_mismatch"


@pytest.mark.parametrize("order", ["request first", "response first"])
def test_kserve_cloudevents_are_joined_by_ce_id(order):
    j = CloudEventJoiner()
    names = {"iris": ["sl", "sw"]}
    h = {"ce_id": b"evt-1", "ce_inferenceservicename": b"iris", "ce_specversion": b"1.0",
         "ce_time": b"2025-11-28T03:20:00Z"}
    events = [(orjson.dumps({"instances": [[5.1, 3.5], [6.0, 3.0]]}), {**h, "ce_type": REQ}),
              (orjson.dumps({"predictions": [0, 2]}), {**h, "ce_type": RESP})]
    if order == "response first":
        events.reverse()
    first = decode_predictions(events[0][0], list(events[0][1].items()), joiner=j,
                               feature_names=names)
    assert first.records == [] and len(j) == 1
    second = decode_predictions(events[1][0], events[1][1], joiner=j, feature_names=names)
    assert [(r.model, r.id, r.features, r.prediction, r.ts) for r in second.records] == [
        ("iris", "evt-1:0", {"sl": 5.1, "sw": 3.5}, 0, 1764300000.0),
        ("iris", "evt-1:1", {"sl": 6.0, "sw": 3.0}, 2, 1764300000.0)]
    assert len(j) == 0


def test_cloudevent_halves_expire_and_are_counted():
    j = CloudEventJoiner(ttl=10.0)
    for i in range(3):
        j.add({"instances": [[1]]}, {"ce_id": str(i).encode(), "ce_type": REQ,
                                     "ce_inferenceservicename": b"m"}, float(i), {})
    assert j.expire(11.5) == 2 and len(j) == 1 and j.expired == 2


@pytest.mark.parametrize("body, reason", [
    (b"\xff\xfe{}", "bad_utf8"),
    (b'{"model": "m", "features": {', "bad_json"),
    (b"[1, 2]", "unknown_format"),
    (b'{"model": "m"}', "unknown_format"),
    (b'{"model": 5, "features": {}}', "invalid_record"),
    (b'{"features": {"x": 1}}', "invalid_record"),
    (b'{"model": "m", "features": {}, "ts": true}', "bad_timestamp"),
    (b'{"model": "m", "features": {}, "ts": "2025-01-01T00:00:00"}', "bad_timestamp"),
])
def test_unusable_messages_are_rejected_with_a_reason(body, reason):
    out = decode_predictions(body)
    assert out.records == [] and [r.reason for r in out.rejections] == [reason]
    assert reason in REASONS


def test_oversized_bodies_are_rejected_before_parsing():
    out = decode_predictions(orjson.dumps(rec()), max_bytes=50)
    assert out.rejections[0].reason == "oversized"


def test_cloudevent_without_joiner_is_rejected():
    out = decode_predictions(b'{"instances": [[1]]}', {"ce_type": REQ, "ce_id": b"1"})
    assert out.rejections[0].reason == "unknown_format"


@pytest.mark.parametrize("body, reason", [
    (b'{"model": "m", "id": "a"}', "bad_label"),
    (b'{"model": "m", "id": "a", "label": [1]}', "bad_label"),
    (b'{"model": "m", "id": "a", "label": null}', "bad_label"),
    (b'{"model": "m", "id": "a", "label": 1e999}', "bad_json"),
    (b'{"model": "m", "label": 1}', "invalid_record"),
    (b'{"model": "m", "id": "a", "label": 1, "ts": "x"}', "bad_timestamp"),
])
def test_bad_labels(body, reason):
    out = decode_label(body)
    assert out.records == [] and out.rejections[0].reason == reason


def test_good_labels():
    out = decode_label(b'{"model": "m", "id": 17, "label": "spam", "ts": 5}')
    assert [(r.id, r.label, r.ts) for r in out.records] == [("17", "spam", 5.0)]
    assert decode_label(b'{"model": "m", "id": "a", "label": true}').records[0].label == 1.0


def test_fast_batch_path_gives_the_records_of_the_careful_path():
    from driftwarden.config import Limits
    from driftwarden.schema import _record

    recs = [{"id": f"r{i}", "ts": 10 + i, "features": {"x": i, "c": "a"}, "prediction": 0.5,
             "model": "m", "version": 2} for i in range(5)]
    fast = decode_predictions(orjson.dumps({"model": "m", "version": 2, "records": recs}))
    careful = [_record(r, "m", "2", 0.0, 1e12, Limits(), i) for i, r in enumerate(recs)]
    assert fast.batches[0].records() == careful and fast.rejections == []
    # one odd record sends the whole batch down the careful path, with the same good records
    mixed = recs + [{"id": 7, "features": {"x": 1}}]
    out = decode_predictions(orjson.dumps({"model": "m", "version": 2, "records": mixed}))
    assert out.records[:5] == careful and out.records[5].id == "7"


scalar = st.one_of(st.none(), st.floats(-1e6, 1e6), st.integers(-5, 5), st.sampled_from(["a", "b"]),
                   st.booleans())


@given(rows=st.lists(st.dictionaries(st.sampled_from(["x", "y", "z"]), scalar, max_size=3),
                     min_size=1, max_size=12), same_order=st.booleans())
def test_batch_columns_equal_the_per_record_columns(rows, same_order):
    """The transposed (and, when all numeric, float64) columns of a decoded batch hold what
    looking every value up record by record gives, in any key order, with gaps and Nones."""
    from driftwarden.detectors.summary import category_key, records_to_columns

    if same_order:
        rows = [{k: r.get(k) for k in ("x", "y", "z")} for r in rows]
    body = orjson.dumps({"model": "m", "records": [{"features": r, "ts": 1.0} for r in rows]})
    out = decode_predictions(body)
    batch = out.batches[0] if out.batches else RecordBatch.of(out.records)
    got = batch.columns()
    want = records_to_columns(rows)
    assert set(got) == set(want)
    for name, col in got.items():
        # numbers may arrive as floats: the same values, the same categories
        assert [category_key(v) for v in list(col)] == [category_key(v) for v in want[name]]
        if batch.numeric:
            assert not any(isinstance(v, bool) for v in want[name])


def test_batches_of_a_learned_shape_decode_exactly_like_dicts(monkeypatch):
    """Numeric batches of a feature set seen before decode into a matrix (MatrixRows); every
    batch — of that shape, with a feature more or less, a string, an int, another order —
    gives the same records, columns and concatenation as the dict path."""
    from driftwarden import schema
    from driftwarden.schema import MatrixRows, RecordBatch

    rng = np.random.default_rng(7)
    names = ["a", "b", "c"]

    def message() -> bytes:
        recs = []
        for i in range(int(rng.integers(1, 6))):
            feats: dict = {n: float(rng.normal()) for n in names}
            r = rng.random()
            if r < 0.05:
                feats.pop("b")
            elif r < 0.1:
                feats["extra"] = 1.0
            elif r < 0.15:
                feats["c"] = "x"
            elif r < 0.2:
                feats["a"] = int(rng.integers(0, 5))
            elif r < 0.25:
                feats = dict(reversed(feats.items()))
            recs.append({"id": f"r{i}", "ts": 100.0 + i, "features": feats,
                         "prediction": float(rng.random())})
        return orjson.dumps({"model": "m", "version": "1", "records": recs})

    msgs = [message() for _ in range(400)]

    def decode_all() -> list[RecordBatch | None]:
        return [(d.batches or [None])[0] for d in
                (decode_predictions(m, now=0.0) for m in msgs)]

    def columns(b: RecordBatch) -> dict:
        return {k: list(v) for k, v in b.columns().items()}

    codecs = schema._codecs(schema._DEFAULT_LIMITS)
    monkeypatch.setattr(codecs, "MAX_SHAPES", 0)  # nothing learned: the dict path
    codecs.shapes.clear()
    expected = decode_all()
    monkeypatch.setattr(codecs, "MAX_SHAPES", 4)
    got = decode_all()
    codecs.shapes.clear()
    assert sum(isinstance(b.features, MatrixRows) for b in got if b) > 100
    assert sum(isinstance(b.features, list) for b in got if b) > 50
    for e, g in zip(expected, got):
        assert (e is None) == (g is None)
        if e is None or g is None:
            continue
        assert g.records() == e.records() and g.numeric == e.numeric
        assert columns(g) == columns(e) and columns(g[1:]) == columns(e[1:])
    for lo in range(0, 400, 37):  # runs of batches: matrices alone, or mixed with dicts
        es = [b for b in expected[lo:lo + 5] if b]
        gs = [b for b in got[lo:lo + 5] if b]
        assert columns(RecordBatch.concat(gs)) == columns(RecordBatch.concat(es))
        assert RecordBatch.concat(gs).records() == RecordBatch.concat(es).records()


@given(rows=st.lists(st.tuples(st.dictionaries(st.sampled_from(["x", "y", "z"]), scalar,
                                               max_size=3),
                               st.one_of(st.none(), st.floats(0, 1)),
                               st.one_of(st.none(), st.floats(0, 500))),
                     min_size=1, max_size=12), numeric=st.booleans())
def test_a_column_batch_decodes_to_the_records_of_the_row_batch(rows, numeric):
    """The same records sent as a column batch and as a native batch: the same records, the
    same feature columns (numbers may arrive as floats), predictions and latencies."""
    from driftwarden.detectors.summary import category_key

    if numeric:
        rows = [({k: float(i) for k in ("x", "y")}, p, lat) for i, (_, p, lat) in
                enumerate(rows)]
    recs = [{"id": f"r{i}", "ts": 10.0 + i, "features": f, "prediction": p, "latency_ms": lat}
            for i, (f, p, lat) in enumerate(rows)]
    names = sorted({k for f, _, _ in rows for k in f})
    cols = {"id": [r["id"] for r in recs], "ts": [r["ts"] for r in recs],
            "prediction": [r["prediction"] for r in recs],
            "latency_ms": [r["latency_ms"] for r in recs],
            "features": {n: [f.get(n) for f, _, _ in rows] for n in names}}
    by_rows = decode_predictions(orjson.dumps({"model": "m", "version": 3, "records": recs}))
    by_cols = decode_predictions(orjson.dumps({"model": "m", "version": 3, "columns": cols}))
    assert not by_rows.rejections and not by_cols.rejections
    a = by_rows.batches[0] if by_rows.batches else RecordBatch.of(by_rows.records)
    b = by_cols.batches[0] if by_cols.batches else RecordBatch.of(by_cols.records)
    if numeric:
        assert by_cols.batches, "an all-numeric column batch takes the fast path"
    def key(batch):  # a null feature and an absent one are the same: missing
        return [sorted((k, category_key(v)) for k, v in r.features.items() if v is not None)
                for r in batch.records()]

    assert key(a) == key(b)
    assert [(r.id, r.ts, r.prediction, r.latency_ms) for r in a.records()] == [
        (r.id, r.ts, r.prediction, r.latency_ms) for r in b.records()]
    ca, cb = a.columns(), b.columns()
    assert set(ca) == set(cb)
    for n in ca:
        assert [category_key(v) for v in list(ca[n])] == [category_key(v) for v in list(cb[n])]


def test_column_batches_that_do_not_line_up_are_one_rejection_and_bad_values_per_record():
    bad = decode_predictions(orjson.dumps({"model": "m", "columns": {
        "id": ["a", "b"], "features": {"x": [1.0]}}}))
    assert [r.reason for r in bad.rejections] == ["invalid_record"] and not bad.records
    assert "different lengths" in bad.rejections[0].detail
    mixed = decode_predictions(orjson.dumps({"model": "m", "columns": {
        "ts": [10.0, -5.0, 11.0], "features": {"x": [1.0, 2.0, {"deep": 1}]}}}))
    assert len(mixed.records) == 1 and sorted(r.reason for r in mixed.rejections) == [
        "bad_timestamp", "invalid_record"]


def test_every_path_keeps_latencies_as_the_careful_path_does():
    """latency_ms in a row batch, a column batch and an Arrow batch (the fast paths) is what
    the careful path keeps: a number as a float (an infinite one too — only Arrow can carry
    it; the rollout's latency summary counts it invalid), missing as None."""
    import pyarrow as pa

    from driftwarden.arrow import encode_table
    from driftwarden.config import Limits
    from driftwarden.schema import _record

    def careful(values):
        return [_record({"id": f"r{i}", "ts": 10, "features": {"x": 1.0}, "latency_ms": v},
                        "m", "1", 0.0, 1e12, Limits(), i).latency_ms
                for i, v in enumerate(values)]

    rows = (b'{"model":"m","version":"1","records":[' + b",".join(
        b'{"id":"r%d","ts":10,"features":{"x":1.0},"latency_ms":%s}' % (i, v)
        for i, v in enumerate([b"3", b"2.5", b"null"])) + b"]}")
    cols = (b'{"model":"m","version":"1","columns":{"id":["r0","r1","r2"],"ts":[10,10,10],'
            b'"latency_ms":[3,2.5,null],"features":{"x":[1.0,1.0,1.0]}}}')
    arrow = encode_table(pa.table({"id": ["r0", "r1", "r2"], "ts": [10.0] * 3,
                                   "latency_ms": [3.0, float("inf"), None], "x": [1.0] * 3})
                         .replace_schema_metadata({"driftwarden.model": "m",
                                                   "driftwarden.version": "1"}))
    for body, values in ((rows, [3, 2.5, None]), (cols, [3, 2.5, None]),
                         (arrow, [3.0, float("inf"), None])):
        out = decode_predictions(body, now=20.0, clock=20.0)
        assert out.batches, body[:20]
        want = careful(values)
        assert [r.latency_ms for r in out.batches[0].records()] == want
        assert all(x is None or isinstance(x, float) for x in want)
