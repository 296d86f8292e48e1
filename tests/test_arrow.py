"""Arrow IPC column batches: the same records as column JSON, and hostile streams refused with
one reason — compressed bodies (unbounded expansion), dictionaries, nested types, row counts
beyond the message, garbage and mutated streams — never an exception, never a large
allocation."""

from __future__ import annotations

import numpy as np
import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftwarden.arrow import encode_table
from driftwarden.schema import RecordBatch, decode_predictions

META = {"driftwarden.model": "m", "driftwarden.version": "3"}


def table(cols: dict, meta=META) -> pa.Table:
    return pa.table(cols).replace_schema_metadata(meta)


def records_of(decoded):
    batch = decoded.batches[0] if decoded.batches else RecordBatch.of(decoded.records)
    return [(r.id, r.ts, sorted((k, v) for k, v in r.features.items() if v is not None),
             r.prediction, r.latency_ms) for r in batch.records()]


values = st.one_of(st.none(), st.floats(-1e6, 1e6))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(values, values, st.one_of(st.none(), st.sampled_from(["DE", "FR"])),
                          st.one_of(st.none(), st.floats(0, 1)),
                          st.one_of(st.none(), st.floats(0, 500))), min_size=1, max_size=30))
def test_an_arrow_batch_decodes_to_the_records_of_the_json_column_batch(rows):
    n = len(rows)
    cols = {"id": [f"r{i}" for i in range(n)], "ts": [10.0 + i for i in range(n)],
            "prediction": [r[3] for r in rows], "latency_ms": [r[4] for r in rows],
            "x": [r[0] for r in rows], "y": [r[1] for r in rows], "c": [r[2] for r in rows]}
    features = {k: cols.pop(k) for k in ("x", "y", "c")}
    by_json = decode_predictions(orjson.dumps({"model": "m", "version": "3", "columns": {
        **cols, "features": features}}))
    by_arrow = decode_predictions(encode_table(table({**cols, **features})))
    assert not by_json.rejections and not by_arrow.rejections
    assert records_of(by_arrow) == records_of(by_json)


def test_an_all_numeric_arrow_batch_is_one_matrix():
    x = np.arange(12.0).reshape(4, 3)
    out = decode_predictions(encode_table(table({"id": ["a", "b", "c", "d"],
                                                 **{f"f{k}": x[:, k] for k in range(3)}})))
    (b,) = out.batches
    assert b.numeric and np.array_equal(np.column_stack([b.columns()[f"f{k}"]
                                                         for k in range(3)]), x)


def _stream(t: pa.Table, **options) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema, options=pa.ipc.IpcWriteOptions(**options)) as w:
        w.write_table(t)
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize("make,why", [
    # ten million zeros compress to a few kB: refused before anything is decompressed
    (lambda: _stream(table({"x": np.zeros(10_000_000)}), compression="zstd"), "compressed"),
    (lambda: _stream(table({"c": pa.array(["a", "b"] * 5).dictionary_encode()})),
     "dictionary"),
    (lambda: encode_table(table({"x": pa.array([[1.0], [2.0]])})), "type"),
    (lambda: encode_table(table({"s": pa.array([{"a": 1}])})), "type"),
    (lambda: b"\xff\xff\xff\xff" + b"\x00" * 40, "schema"),
    (lambda: encode_table(table({"x": [1.0]}))[:-20], ""),
])
def test_streams_outside_the_bounds_are_one_rejection(make, why):
    out = decode_predictions(make())
    assert [r.reason for r in out.rejections] == ["unknown_format"] and not out.records
    assert why in out.rejections[0].detail


def test_bad_values_in_an_arrow_batch_are_dead_lettered_record_by_record():
    cols = {"id": ["a", "b", "c"], "ts": [10.0, -5.0, 11.0], "x": [1.0, 2.0, 3.0],
            "long": ["ok", "ok", "y" * 5000], "big": pa.array([2 ** 62, 2, 3])}
    out = decode_predictions(encode_table(table(cols)), now=20.0, clock=20.0)
    assert [r.id for r in out.records] == ["a"]
    assert sorted((r.index, r.reason) for r in out.rejections) == [
        (1, "bad_timestamp"), (2, "limit_exceeded")]
    assert out.records[0].features["big"] == float(2 ** 62)  # beyond 2^53: a float
    no_model = decode_predictions(encode_table(table({"x": [1.0]}, meta={})))
    assert [r.reason for r in no_model.rejections] == ["invalid_record"]
    # a stream that reads as no record at all (here a corrupted length: seen by the fuzzer)
    good = bytearray(encode_table(table({"id": ["a", "b"], "ts": [10.0, 11.0], "x": [1.0, 2.0],
                                         "c": ["DE", "FR"], "prediction": [0.1, 0.9]})))
    good[4] = 169
    empty = decode_predictions(bytes(good), now=20.0, clock=20.0)
    assert [r.reason for r in empty.rejections] == ["invalid_record"] and not empty.records


def test_an_oversized_arrow_stream_is_refused_unread():
    body = encode_table(table({"x": np.zeros(200_000)}))
    out = decode_predictions(body, max_bytes=len(body) - 1)
    assert [r.reason for r in out.rejections] == ["oversized"]


SERVICE: list = []  # one stream service for every example (its counters tell the fate)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_and_random_streams_never_raise(data):
    """Any byte of a valid stream changed, bytes cut or added, or random bytes behind the
    marker: the decoder raises nothing and returns at most the stream's records, and the
    stream service uses or dead-letters the message (a stream left with no record included),
    exactly once."""
    from driftwarden.config import load_settings
    from driftwarden.stream.service import RawMessage, StreamService

    good = encode_table(table({"id": ["a", "b"], "ts": [10.0, 11.0], "x": [1.0, 2.0],
                               "c": ["DE", "FR"], "prediction": [0.1, 0.9]}))
    kind = data.draw(st.sampled_from(["flip", "cut", "random"]))
    if kind == "flip":
        body = bytearray(good)
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(body) - 1))
            body[i] = data.draw(st.integers(0, 255))
        value = bytes(body)
    elif kind == "cut":
        value = good[:data.draw(st.integers(4, len(good)))]
    else:
        value = b"\xff\xff\xff\xff" + data.draw(st.binary(max_size=300))
    out = decode_predictions(value, now=20.0, clock=20.0)
    assert sum(len(b) for b in out.batches) + len(out.records) <= 2
    if not SERVICE:
        SERVICE.append(StreamService(load_settings(env={})))
    svc = SERVICE[0]
    before = dict(svc.messages)
    svc.handle_predictions([RawMessage(value, [], "driftwarden.predictions", 0,
                                       sum(before.values()), 20.0)])
    fates = {k: v - before.get(k, 0) for k, v in svc.messages.items() if v != before.get(k, 0)}
    assert sum(fates.values()) == 1 and set(fates) <= {"used", "dead_lettered", "duplicate"}
