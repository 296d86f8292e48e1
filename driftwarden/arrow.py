"""Column batches as Arrow IPC streams: decoded into column arrays with bounded memory.

An Arrow IPC **stream** (what ``pyarrow.ipc.new_stream`` writes) on the prediction topic is a
column batch: one row per record, the columns ``id`` (string or integer), ``ts`` (seconds as a
number, or an Arrow timestamp), ``prediction``, ``latency_ms``, and every other column a
feature (numbers, booleans or strings); the model and version are the schema's metadata keys
``driftwarden.model`` and ``driftwarden.version``. It is told from JSON by its first four
bytes (the IPC continuation marker ``ff ff ff ff``).

Hostile input stays bounded. Before anything is decoded, each IPC message's own metadata is
read (the flatbuffer, by hand, bounds-checked): only a schema followed by record batches is
accepted, **no compressed body** (a 1 MiB zstd body could claim gigabytes: the buffers are
then whatever the body holds), no dictionary batches, and a batch's row count may not exceed
the message's size in bytes. Columns of other types (lists, structs, …) are refused with the
message (a column of nulls only is taken: missing values). What passes is decoded by
pyarrow without copies; a batch whose values break a bound of ``[limits]`` (or holds an event
time to judge) goes to the careful path record by record, like JSON.

>>> import pyarrow as pa
>>> t = pa.table({"id": ["a", "b"], "ts": [10.0, 11.0], "prediction": [0.2, 0.9],
...               "amount": [12.5, 3.0]}).replace_schema_metadata(
...     {"driftwarden.model": "fraud", "driftwarden.version": "7"})
>>> out = decode_arrow(encode_table(t), now=0.0, max_ts=1e12, limits=Limits())
>>> b = out.batches[0]; (b.model, b.version, b.ids, b.columns()["amount"].tolist())
('fraud', '7', ['a', 'b'], [12.5, 3.0])
>>> decode_arrow(b"\\xff\\xff\\xff\\xffgarbage", now=0.0, max_ts=1e12,
...              limits=Limits()).rejections[0].reason
'unknown_format'
"""

from __future__ import annotations

from typing import Any

import numpy as np

from driftwarden.config import Limits

MAGIC = b"\xff\xff\xff\xff"
RESERVED = ("id", "ts", "prediction", "latency_ms")
MODEL_KEY, VERSION_KEY = b"driftwarden.model", b"driftwarden.version"
_RECORD_BATCH = 3  # MessageHeader union: Schema 1, DictionaryBatch 2, RecordBatch 3


class _Refused(Exception):
    """The message is not a column batch this reader takes (the reason's detail)."""


def encode_table(table: Any) -> bytes:
    """An Arrow table as an IPC stream, uncompressed (what :func:`decode_arrow` reads)."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def decode_arrow(value: bytes, *, now: float, max_ts: float, limits: Limits) -> Any:
    """The records of an Arrow IPC column batch (a ``Decoded``; see the module docstring)."""
    from driftwarden.schema import Decoded, Rejection

    try:
        table = _read(value)
        return _decode(table, now, max_ts, limits)
    except _Refused as exc:
        return Decoded(rejections=[Rejection("unknown_format", f"Arrow: {exc}")])


def _read(value: bytes) -> Any:
    """The table of an IPC stream that passed the checks of the module docstring."""
    import pyarrow as pa

    try:
        reader = pa.ipc.MessageReader.open_stream(pa.py_buffer(value))
        messages = []
        while True:
            try:
                messages.append(reader.read_next_message())
            except StopIteration:
                break
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise _Refused(f"not an IPC stream ({str(exc)[:120]})") from None
    if not messages or messages[0].type != "schema":
        raise _Refused("the stream does not start with a schema")
    rows = 0
    for m in messages[1:]:
        if m.type != "record batch":
            raise _Refused(f"a {m.type} message (only record batches are taken)")
        n, compressed = _batch_header(m.metadata.to_pybytes())
        if compressed:
            raise _Refused("a compressed body (send uncompressed batches)")
        rows += n
    if rows > len(value):
        raise _Refused(f"{rows} rows declared in {len(value)} bytes")
    try:  # from the messages already read: the stream is not parsed twice
        schema = pa.ipc.read_schema(messages[0])
        table = pa.Table.from_batches(
            [pa.ipc.read_record_batch(m, schema) for m in messages[1:]], schema)
        table.validate(full=True)
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise _Refused(f"unreadable ({str(exc)[:120]})") from None
    for field in table.schema:
        t = field.type
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
                or pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)
                or (field.name == "ts" and pa.types.is_timestamp(t))):
            raise _Refused(f"column {field.name[:64]!r} of type {t} (numbers, booleans and "
                           "strings only)")
    return table


def _batch_header(meta: bytes) -> tuple[int, bool]:
    """(rows, compressed) of a RecordBatch message, from its flatbuffer: Message.header
    (field 2) -> RecordBatch.length (field 0) and .compression (field 3)."""
    def u32(pos: int) -> int:
        if not 0 <= pos <= len(meta) - 4:
            raise _Refused("metadata out of bounds")
        return int.from_bytes(meta[pos:pos + 4], "little")

    def field(table: int, fid: int) -> int | None:
        vtable = table - int.from_bytes(meta[table:table + 4], "little", signed=True)
        if not 0 <= vtable <= len(meta) - 4:
            raise _Refused("metadata out of bounds")
        size = int.from_bytes(meta[vtable:vtable + 2], "little")
        entry = 4 + 2 * fid
        if entry + 2 > size or vtable + entry + 2 > len(meta):
            return None
        off = int.from_bytes(meta[vtable + entry:vtable + entry + 2], "little")
        return table + off if off else None

    root = u32(0)
    kind = field(root, 1)
    if kind is None or kind >= len(meta) or meta[kind] != _RECORD_BATCH:
        raise _Refused("a record batch message without a record batch")
    where = field(root, 2)
    if where is None:
        raise _Refused("a record batch message without its header")
    header = where + u32(where)
    u32(header)  # in bounds
    length = field(header, 0)
    rows = 0 if length is None else int.from_bytes(meta[length:length + 8], "little",
                                                   signed=True)
    if rows < 0:
        raise _Refused("a negative row count")
    return rows, field(header, 3) is not None


def _decode(table: Any, now: float, max_ts: float, limits: Limits) -> Any:
    """Columns into a RecordBatch (fast), or records through the careful path."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from driftwarden.schema import (
        MAX_EXACT_INT,
        ColumnRows,
        Decoded,
        MatrixRows,
        RecordBatch,
        Rejection,
        column_records,
        judged_records,
        latency_column,
    )

    if table.num_rows == 0:
        return Decoded(rejections=[Rejection("invalid_record",
                                             "an Arrow column batch holding no record")])
    meta = table.schema.metadata or {}
    model = meta.get(MODEL_KEY, b"").decode("utf-8", "replace") or None
    version = meta.get(VERSION_KEY, b"").decode("utf-8", "replace")
    n = table.num_rows
    present = dict.fromkeys(table.column_names)
    names = [c for c in present if c not in RESERVED]

    def column(name: str) -> Any:
        return table.column(name) if name in present else None

    def is_text(col: Any) -> bool:
        return pa.types.is_string(col.type) or pa.types.is_large_string(col.type)

    def strings_fit(col: Any) -> bool:
        if col is None or not is_text(col):
            return True
        longest = pc.max(pc.utf8_length(col)).as_py()
        return longest is None or longest <= limits.max_value_chars

    ts_col = column("ts")
    if ts_col is not None and pa.types.is_timestamp(ts_col.type):
        ts_col = pc.divide(pc.cast(pc.cast(ts_col, pa.timestamp("us")), pa.int64()).cast(
            pa.float64()), 1e6)
    ts = None if ts_col is None else ts_col.to_numpy(zero_copy_only=False).astype(np.float64)
    fast = (model is not None and len(model) <= limits.max_name_chars
            and len(version) <= limits.max_version_chars
            and len(names) <= limits.max_features
            and all(len(c) <= limits.max_name_chars for c in names)
            and all(strings_fit(column(c)) for c in [*names, "id", "prediction"])
            and (ts is None or (np.isfinite(ts).all() and ts.min() >= 0.0 and ts.max() <= max_ts)))
    for name in ("prediction", *names):  # integers beyond ±2^53: the careful path says so
        col = column(name)
        if fast and col is not None and pa.types.is_integer(col.type) and col.null_count < n:
            lo, hi = pc.min_max(col).values()
            fast = lo.as_py() >= -MAX_EXACT_INT and hi.as_py() <= MAX_EXACT_INT

    def values(name: str) -> list[Any]:
        col = column(name)
        return [None] * n if col is None else col.to_pylist()

    id_col = column("id")
    ids = (values("id") if id_col is None or is_text(id_col)
           else [None if v is None else str(v) for v in values("id")])
    if not fast:  # record by record, each judged (and dead-lettered) on its own
        fields = {"id": ids, "prediction": values("prediction"),
                  "latency_ms": values("latency_ms"),  # ts None: the message's time
                  "ts": [None] * n if ts_col is None else ts_col.to_pylist()}
        return judged_records(column_records(fields, {c: values(c) for c in names}, n),
                              model, version, now=now, max_ts=max_ts, limits=limits)
    numeric = all(pa.types.is_floating(table.column(c).type) or
                  pa.types.is_integer(table.column(c).type) for c in names) and all(
        table.column(c).null_count == 0 for c in names)
    features: Any
    if numeric:
        matrix = np.empty((n, len(names)), dtype=np.float64)
        for j, c in enumerate(names):
            matrix[:, j] = table.column(c).to_numpy(zero_copy_only=False)
        features = MatrixRows(tuple(names), matrix)
    else:
        features = ColumnRows({c: values(c) for c in names})
    latencies = latency_column(values("latency_ms"))
    assert model is not None  # (fast)
    return Decoded(batches=[RecordBatch(model, version, ids,
                                        [now] * n if ts is None else ts.tolist(), features,
                                        values("prediction"), numeric, latencies)])


__all__ = ["MAGIC", "decode_arrow", "encode_table"]
