"""Message schemas and adapters: what model servers put on Kafka, decoded into records.

Accepted on the prediction / feature topics (see the README's *message formats*):

* the **native record** ``{"model", "version", "id", "ts", "features": {…}, "prediction",
  "latency_ms", "segment": {…}}`` (``ts``: seconds since the epoch or RFC 3339);
* a **native batch** ``{"model", "version", "records": [record, …]}`` (records inherit model
  and version);
* a **column batch** ``{"model", "version", "columns": {"id": […], "ts": […], "prediction":
  […], "latency_ms": […], "segment": […], "features": {"name": […], …}}}`` — the same fields
  as lists of equal length, one entry per record (every list but ``features`` optional):
  decoded straight into column arrays, what :mod:`driftwarden.client` sends;
* a column batch as an **Arrow IPC stream** (see :mod:`driftwarden.arrow`);
* an **Open Inference Protocol v2** request ``{"inputs": [{"name", "shape", "datatype",
  "data"}]}`` or response ``{"model_name", "model_version", "id", "outputs": […]}``;
* **KServe inference-logger CloudEvents** in binary mode: the body is a v1 (``instances`` /
  ``predictions``) or v2 payload and the ``ce_*`` headers say what it is (``ce_type`` ends in
  ``.request`` or ``.response``, ``ce_id`` joins the two, ``ce_inferenceservicename`` names
  the model). :class:`CloudEventJoiner` pairs requests with responses.

And on the label topic: ``{"model", "id", "label", "ts"}``.

Nothing here raises on bad input mid-stream: :func:`decode_predictions` returns the good
records and a :class:`Rejection` per unusable message or record, with a reason code from
:data:`REASONS` — the stream sends those to the dead-letter topic.

>>> out = decode_predictions(b'{"model":"fraud","version":7,"id":"r1",'
...     b'"ts":"2026-11-28T10:00:00Z","features":{"amount":12.5,"country":"DE"},"prediction":0.87}')
>>> r = out.records[0]; (r.model, r.version, r.ts, r.features["country"], r.prediction)
('fraud', '7', 1795860000.0, 'DE', 0.87)
>>> decode_predictions(b'{"model": 1, "features": {}}').rejections[0].reason
'invalid_record'
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain
from typing import Annotated, Any

import msgspec
import numpy as np
import orjson

from driftwarden.config import Limits
from driftwarden.detectors.summary import records_to_columns

MAX_MESSAGE_BYTES = 1_048_576
REASONS = (
    "oversized",        # body larger than the configured limit
    "bad_utf8",         # body is not UTF-8
    "bad_json",         # body is not JSON
    "unknown_format",   # JSON, but none of the accepted shapes (or Arrow outside its bounds)
    "invalid_record",   # a field has the wrong type or a required field is missing
    "bad_timestamp",    # ts is neither a number of seconds nor RFC 3339
    "bad_label",        # label missing, NaN / inf, or not a number, bool or string
    "shape_mismatch",   # an OIP tensor whose data does not fit its shape
    "unknown_model",    # a model not in the config while discovery is off
    "limit_exceeded",   # over a bound of [limits] (the detail names it)
    "internal_error",   # handling the message raised (exception class and message in detail)
)
MAX_EXACT_INT = 2 ** 53
_DEFAULT_LIMITS = Limits()  # integers beyond ±2^53 become floats (JSON numbers are doubles)

Headers = Mapping[str, bytes] | Sequence[tuple[str, bytes | None]] | None


@dataclass(frozen=True)
class PredictionRecord:
    """One logged inference: inputs, output and context."""

    model: str
    version: str
    id: str | None
    ts: float
    features: dict[str, Any]
    prediction: Any = None
    latency_ms: float | None = None
    segment: dict[str, str] = field(default_factory=dict)


@dataclass
class RecordBatch:
    """Records of one (model, version) side by side, as lists: what a native batch message
    decodes into, and what a monitor takes, without an object per record.

    >>> b = RecordBatch.of([PredictionRecord("m", "1", "a", 1.0, {"x": 1.5, "c": "DE"}, 0.9),
    ...                     PredictionRecord("m", "1", "b", 2.0, {"x": 2.5, "c": "FR"}, 0.1)])
    >>> len(b), b.columns(), b[1:].records()[0].id
    (2, {'x': (1.5, 2.5), 'c': ('DE', 'FR')}, 'b')
    """

    model: str
    version: str
    ids: list[str | None]
    ts: list[float]
    features: Sequence[dict[str, Any]]  # a list, or MatrixRows
    predictions: list[Any]
    numeric: bool = False  # every feature value is a float (checked while decoding)
    latencies: list[float | None] | None = None  # ``latency_ms`` per record (None: none carried)

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def of(cls, records: Sequence[PredictionRecord]) -> RecordBatch:
        """The batch of records that share one model and version."""
        first = records[0]
        lat = [r.latency_ms for r in records]
        return cls(first.model, first.version, [r.id for r in records], [r.ts for r in records],
                   [r.features for r in records], [r.prediction for r in records],
                   latencies=lat if any(x is not None for x in lat) else None)

    @classmethod
    def concat(cls, batches: Sequence[RecordBatch]) -> RecordBatch:
        if len(batches) == 1:
            return batches[0]
        first = batches[0]
        features: Sequence[dict[str, Any]]
        mats = [b.features for b in batches if isinstance(b.features, MatrixRows)]
        if len(mats) == len(batches) and all(m.names == mats[0].names for m in mats):
            features = MatrixRows(mats[0].names, np.concatenate([m.matrix for m in mats]))
        else:
            features = [f for b in batches for f in b.features]
        lat = None
        if any(b.latencies is not None for b in batches):
            lat = [x for b in batches for x in (b.latencies or [None] * len(b))]
        return cls(first.model, first.version, [i for b in batches for i in b.ids],
                   [t for b in batches for t in b.ts], features,
                   [p for b in batches for p in b.predictions], all(b.numeric for b in batches),
                   lat)

    def __getitem__(self, s: slice) -> RecordBatch:
        return RecordBatch(self.model, self.version, self.ids[s], self.ts[s], self.features[s],
                           self.predictions[s], self.numeric,
                           None if self.latencies is None else self.latencies[s])

    def without(self, drop: Sequence[int]) -> RecordBatch:
        """The batch less the records at the indexes ``drop``.

        >>> b = RecordBatch("m", "1", ["a", "b", "c"], [1.0, 2.0, 3.0],
        ...                 MatrixRows(("x",), np.array([[1.0], [2.0], [3.0]])), [0, 1, 2])
        >>> c = b.without([1]); c.ids, c.features.matrix.ravel().tolist(), c.predictions
        (['a', 'c'], [1.0, 3.0], [0, 2])
        """
        gone = set(drop)
        keep = [i for i in range(len(self)) if i not in gone]
        feats = self.features
        features: Sequence[dict[str, Any]] = (
            MatrixRows(feats.names, feats.matrix[keep]) if isinstance(feats, MatrixRows)
            else feats.take(keep) if isinstance(feats, ColumnRows)
            else [feats[i] for i in keep])
        return RecordBatch(self.model, self.version, [self.ids[i] for i in keep],
                           [self.ts[i] for i in keep], features,
                           [self.predictions[i] for i in keep], self.numeric,
                           None if self.latencies is None else [self.latencies[i] for i in keep])

    def feature_names(self) -> Any:
        """Every feature name of the batch (a set, or the matrix's names)."""
        if isinstance(self.features, (MatrixRows, ColumnRows)):
            return self.features.names
        return set().union(*self.features)

    def records(self) -> list[PredictionRecord]:
        lat = self.latencies or [None] * len(self)
        return [PredictionRecord(self.model, self.version, i, t, f, p, x)
                for i, t, f, p, x in zip(self.ids, self.ts, self.features, self.predictions, lat)]

    def columns(self) -> dict[str, Any]:
        """Feature columns (a field absent from a record is None there; a column with no value
        at all is left out). When every record lists its features in the same order — what
        one serializer produces — the rows are transposed in C, not looked up one by one, and
        an all-numeric batch becomes float64 arrays at once."""
        feats = self.features
        if not feats:
            return {}
        if isinstance(feats, MatrixRows):
            return dict(zip(feats.names, feats.matrix.T.copy()))
        if isinstance(feats, ColumnRows):
            return {k: v for k, v in feats.cols.items()
                    if isinstance(v, np.ndarray) or any(x is not None for x in v)}
        names = list(feats[0])
        if not all(list(f) == names for f in feats):
            return records_to_columns(feats)
        if not names:
            return {}
        if self.numeric:
            n, k = len(feats), len(names)
            values = chain.from_iterable([f.values() for f in feats])
            rows = np.fromiter(values, np.float64, count=n * k).reshape(n, k).T.copy()
            return dict(zip(names, rows))
        cols = dict(zip(names, zip(*[f.values() for f in feats])))
        for name in [n for n, col in cols.items() if None in col]:
            if all(v is None for v in cols[name]):
                del cols[name]
        return cols


@dataclass(frozen=True)
class LabelRecord:
    """Delayed ground truth for the prediction ``id`` of ``model``."""

    model: str
    id: str
    label: float | str
    ts: float


@dataclass(frozen=True)
class Rejection:
    """Why a message (``index`` None) or one record of a batch could not be used."""

    reason: str
    detail: str
    index: int | None = None


@dataclass
class Decoded:
    """The good records of a message and the rejections, side by side (a native batch whose
    records all pass the fast path arrives as one :class:`RecordBatch` in ``batches``)."""

    records: list[Any] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    batches: list[RecordBatch] = field(default_factory=list)


class _Record(msgspec.Struct):
    features: dict[str, Any]
    model: str | None = None
    version: str | int | None = None
    id: str | int | None = None
    ts: Any = None  # validated by parse_ts, so a bad one is reported as bad_timestamp
    prediction: Any = None
    latency_ms: float | int | None = None
    segment: dict[str, str] | None = None


class _Shape:
    """A decoder for batches whose records all carry exactly the numeric features ``names``:
    each record's features decode into a struct (no dict, no key strings), and the batch
    becomes one float64 matrix. ~25 % less time than dicts for 20 features (decode and
    columns: 1.33 against 1.85 µs per record). A record with a feature more or less, or a
    value that is not a number, fails it; the dict path then takes the batch."""

    def __init__(self, names: tuple[str, ...], codecs: _Codecs) -> None:
        self.names = names
        fields = [f"f{i}" for i in range(len(names))]
        features = msgspec.defstruct("Features", [(f, float) for f in fields],
                                     rename=dict(zip(fields, names)),
                                     forbid_unknown_fields=True, gc=False)
        self.decoder = msgspec.json.Decoder(codecs.batch_of(features))

    def matrix(self, features: Sequence[Any]) -> np.ndarray:
        n, k = len(features), len(self.names)
        values = chain.from_iterable(map(msgspec.structs.astuple, features))  # names' order
        return np.fromiter(values, np.float64, count=n * k).reshape(n, k)


class _Codecs:
    """The typed decoders of the fast paths for one set of :class:`Limits`: counts and lengths
    are checked by msgspec in C (``Meta`` constraints), so a batch that passes needs no
    per-value check in Python; one that fails takes the careful path, which says why."""

    MAX_SHAPES = 4

    def __init__(self, limits: Limits) -> None:
        def text(n: int) -> Any:
            return Annotated[str, msgspec.Meta(max_length=n)]

        self.limits = limits
        name, value = text(limits.max_name_chars), text(limits.max_value_chars)
        self.name, self.value = name, value
        self.version = text(limits.max_version_chars)
        self.segment = Annotated[dict[name, name], msgspec.Meta(  # type: ignore[valid-type]
            max_length=limits.max_segments)]

        def features(v: Any) -> Any:
            return Annotated[dict[name, v], msgspec.Meta(  # type: ignore[valid-type]
                max_length=limits.max_features)]

        # every feature a number (ints arrive as floats: the same values and categories), or
        # any scalar; objects and arrays fail here and are rejected by the careful path
        self.numeric = msgspec.json.Decoder(self.batch_of(features(float)))
        scalar = float | value | bool | None  # type: ignore[operator,valid-type]
        self.any = msgspec.json.Decoder(self.batch_of(features(scalar)))
        self.single = msgspec.json.Decoder(self.record_of(features(scalar)))
        # the feature sets of recent numeric batches, newest use first
        self.shapes: list[_Shape] = []
        # column batches: every feature a number, or any scalar (see _fast_columns)
        self.columns_numeric = msgspec.json.Decoder(self.columns_of(float))
        self.columns_any = msgspec.json.Decoder(self.columns_of(scalar))

    def record_of(self, features: Any) -> Any:
        return msgspec.defstruct("FastRecord", [
            ("features", features), ("id", self.value | None, None),  # type: ignore[operator]
            ("ts", Annotated[float, msgspec.Meta(ge=0)] | None, None),
            ("prediction", Any, None), ("model", self.name | None, None),  # type: ignore
            ("version", self.version | int | None, None),  # type: ignore[operator]
            ("latency_ms", float | None, None), ("segment", self.segment | None, None)],
            gc=False)  # no cycles: leave GC alone

    def batch_of(self, features: Any) -> Any:
        return msgspec.defstruct("FastBatch", [
            ("records", list[self.record_of(features)]),  # type: ignore[misc]
            ("model", self.name), ("version", self.version | int | None, None)],  # type: ignore
            gc=False)

    def columns_of(self, v: Any) -> Any:
        cols = msgspec.defstruct("FastColumnLists", [
            ("features", Annotated[dict[self.name, list[v]], msgspec.Meta(  # type: ignore
                max_length=self.limits.max_features)]),
            ("id", list[self.value | None] | None, None),  # type: ignore
            ("ts", list[Annotated[float, msgspec.Meta(ge=0)]] | None, None),
            ("prediction", list[float | self.value | bool | None] | None, None),  # type: ignore
            ("latency_ms", list[float | None] | None, None)],
            forbid_unknown_fields=True, gc=False)
        return msgspec.defstruct("FastColumns", [
            ("columns", cols), ("model", self.name),
            ("version", self.version | int | None, None)], gc=False)  # type: ignore[operator]

    def learn_shape(self, features: Sequence[Mapping[str, Any]]) -> None:
        """Remember the feature names of an all-numeric batch whose records all list the
        same."""
        names = tuple(features[0])
        if not names or any(s.names == names for s in self.shapes):
            return
        if all(len(f) == len(names) for f in features) and all(tuple(f) == names
                                                                for f in features):
            self.shapes.insert(0, _Shape(names, self))
            del self.shapes[self.MAX_SHAPES:]


@functools.lru_cache(maxsize=8)
def _codecs(limits: Limits) -> _Codecs:
    return _Codecs(limits)


class MatrixRows(Sequence[dict[str, Any]]):
    """Feature rows held as one float64 matrix (rows × ``names``): what a batch of a known
    numeric shape decodes into. Reads like a list of dicts (built on demand), slices stay
    matrices, and :meth:`RecordBatch.columns` takes the matrix's columns at once.

    >>> rows = MatrixRows(("a", "b"), np.array([[1.0, 2.0], [3.0, 4.0]]))
    >>> rows[1], len(rows[:1]), list(rows[1:])
    ({'a': 3.0, 'b': 4.0}, 1, [{'a': 3.0, 'b': 4.0}])
    """

    def __init__(self, names: tuple[str, ...], matrix: np.ndarray) -> None:
        self.names = names
        self.matrix = matrix

    def __len__(self) -> int:
        return len(self.matrix)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return MatrixRows(self.names, self.matrix[i])
        return dict(zip(self.names, self.matrix[i].tolist()))

    def __iter__(self) -> Any:
        names = self.names
        return (dict(zip(names, row)) for row in self.matrix.tolist())


class ColumnRows(Sequence[dict[str, Any]]):
    """Feature rows held as columns (name -> a list or array, ``None`` where a record has no
    value): what a column batch decodes into. Reads like a list of dicts (built on demand,
    without the absent values), slices stay columns, and :meth:`RecordBatch.columns` takes
    the columns as they are.

    >>> rows = ColumnRows({"a": [1.0, None], "c": ["x", "y"]})
    >>> rows[1], len(rows[1:]), rows.names
    ({'c': 'y'}, 1, ('a', 'c'))
    """

    def __init__(self, columns: Mapping[str, Any]) -> None:
        self.cols = dict(columns)
        self.names = tuple(self.cols)
        self.n = len(next(iter(self.cols.values()))) if self.cols else 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            out = ColumnRows({k: v[i] for k, v in self.cols.items()})
            out.n = len(range(*i.indices(self.n)))
            return out
        return {k: v for k, col in self.cols.items() if (v := _item(col[i])) is not None}

    def __iter__(self) -> Any:
        return (self[i] for i in range(self.n))

    def take(self, keep: Sequence[int]) -> ColumnRows:
        idx = np.asarray(keep, dtype=np.int64)
        out = ColumnRows({k: (v[idx] if isinstance(v, np.ndarray) else [v[i] for i in keep])
                          for k, v in self.cols.items()})
        out.n = len(keep)
        return out


def _item(v: Any) -> Any:
    """A column's value as a record holds it (a numpy number as a Python one)."""
    return v.item() if isinstance(v, np.generic) else v


class _Bad(Exception):
    """A value that breaks a rule: the reason code and a detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _text(value: Any, what: str, limit: int) -> str:
    """``value`` (a string or an integer) as text of at most ``limit`` characters."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = str(value)
        except ValueError:  # an integer of more than 4,300 digits
            raise _Bad("limit_exceeded", f"{what} is a number too long to print") from None
    if len(text) > limit:
        raise _Bad("limit_exceeded", f"{what} of {len(text)} characters > {limit}")
    return text


def _scalar(value: Any, what: str, limits: Limits) -> Any:
    """A feature value or a prediction as the monitors may hold it: a float, an integer within
    ±2^53, a string of at most ``max_value_chars``, a boolean or None; an integer beyond
    ±2^53 becomes a float, anything else raises :class:`_Bad`."""
    t = type(value)
    if t is float or t is bool or value is None:
        return value
    if t is int:
        if -MAX_EXACT_INT <= value <= MAX_EXACT_INT:
            return value
        try:
            return float(value)
        except OverflowError:
            raise _Bad("invalid_record", f"{what} is an integer beyond a double's range"
                       ) from None
    if t is str:
        if len(value) > limits.max_value_chars:
            raise _Bad("limit_exceeded", f"{what}: a string of {len(value)} characters > "
                                         f"max_value_chars {limits.max_value_chars}")
        return value
    kind = "an object" if t is dict else "an array" if t is list else f"a {t.__name__}"
    raise _Bad("invalid_record", f"{what} is {kind}, not a number, string, boolean or null")


def _features(features: Any, limits: Limits) -> dict[str, Any]:
    """Check a record's features (count, names, values) and normalise their values."""
    if not isinstance(features, dict):
        raise _Bad("invalid_record", "`features` is not an object")
    if len(features) > limits.max_features:
        raise _Bad("limit_exceeded", f"{len(features)} features > max_features "
                                     f"{limits.max_features}")
    out = features
    for k, v in features.items():
        if len(k) > limits.max_name_chars:
            raise _Bad("limit_exceeded", f"a feature name of {len(k)} characters > "
                                         f"max_name_chars {limits.max_name_chars}")
        if type(v) is float or type(v) is str and len(v) <= limits.max_value_chars:
            continue
        w = _scalar(v, f"feature {k[:64]!r}", limits)
        if w is not v:
            if out is features:
                out = dict(features)
            out[k] = w
    return out


def _segment(segment: Any, limits: Limits) -> dict[str, str]:
    if not segment:
        return {}
    if len(segment) > limits.max_segments:
        raise _Bad("limit_exceeded", f"{len(segment)} segment keys > max_segments "
                                     f"{limits.max_segments}")
    for k, v in segment.items():
        if not isinstance(v, str):
            raise _Bad("invalid_record", f"segment {k[:64]!r} is not a string")
        if max(len(k), len(v)) > limits.max_name_chars:
            raise _Bad("limit_exceeded", f"a segment name or value longer than max_name_chars "
                                         f"{limits.max_name_chars}")
    return dict(segment)


def check_ts(ts: float, max_ts: float) -> None:
    """Raise :class:`ValueError` for an event time before the epoch or after ``max_ts``."""
    if not 0.0 <= ts <= max_ts:
        raise ValueError(f"timestamp {ts!r} is before the epoch or more than the allowed "
                         "lead ahead of the message's clock")


def checked_record(model: Any, version: Any, rid: Any, ts: Any, features: Any,
                   prediction: Any, latency_ms: Any, segment: Any, *, now: float,
                   max_ts: float, limits: Limits, index: int | None = None
                   ) -> PredictionRecord | Rejection:
    """A :class:`PredictionRecord` from decoded fields, every value checked against the
    rules and ``limits``; the :class:`Rejection` naming the first broken one otherwise.

    >>> lim = Limits()
    >>> checked_record("m", 1, 7, None, {"x": 2 ** 64}, 1, None, None, now=5.0, max_ts=10.0,
    ...                limits=lim).features
    {'x': 1.8446744073709552e+19}
    >>> checked_record("m", 1, 7, 1e11, {}, 1, None, None, now=5.0, max_ts=10.0,
    ...                limits=lim).reason
    'bad_timestamp'
    """
    try:
        if not isinstance(model, str) or not model:
            raise _Bad("invalid_record", "Object missing required field `model`")
        model = _text(model, "model name", limits.max_name_chars)
        version = ("" if version is None else
                   _text(version, "version", limits.max_version_chars))
        rid = None if rid is None else _text(rid, "id", limits.max_value_chars)
        feats = _features(features, limits)
        prediction = _scalar(prediction, "prediction", limits)
        if latency_ms is not None:
            latency_ms = _scalar(latency_ms, "latency_ms", limits)
            latency_ms = float(latency_ms) if isinstance(latency_ms, (int, float)) else None
        seg = _segment(segment, limits)
    except _Bad as bad:
        return Rejection(bad.reason, bad.detail, index)
    try:
        t = parse_ts(ts, now)
        check_ts(t, max_ts)
    except ValueError as exc:
        return Rejection("bad_timestamp", str(exc), index)
    return PredictionRecord(model, version, rid, t, feats, prediction, latency_ms, seg)


def _fast_single(value: bytes, now: float, max_ts: float, limits: Limits
                 ) -> PredictionRecord | Rejection | None:
    """A plain native record decoded in one typed pass and checked; None: take the careful
    path (which also reports what this one could not decode)."""
    try:
        r = _codecs(limits).single.decode(value)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return None
    if not r.model:
        return None
    return checked_record(r.model, r.version, r.id, r.ts, r.features, r.prediction,
                          r.latency_ms, r.segment, now=now, max_ts=max_ts, limits=limits)


class _Label(msgspec.Struct):
    model: str
    id: str | int
    label: Any = None
    ts: Any = None


def parse_ts(value: Any, default: float) -> float:
    """Seconds since the epoch from a number or an RFC 3339 string.

    >>> parse_ts("2026-11-28T10:00:00.5+01:00", 0.0), parse_ts(None, 42.0)
    (1795856400.5, 42.0)
    """
    if value is None:
        return default
    if isinstance(value, bool):
        raise ValueError("a boolean is not a timestamp")
    if isinstance(value, (int, float)):
        try:
            ts = float(value)
        except OverflowError:
            raise ValueError("timestamp out of range") from None
    elif isinstance(value, str):
        dt = datetime.fromisoformat(value.strip())
        if dt.tzinfo is None:
            raise ValueError(f"timestamp {value!r} has no time zone")
        ts = dt.timestamp()
    else:
        raise ValueError(f"timestamp of type {type(value).__name__}")
    if not math.isfinite(ts):
        raise ValueError("timestamp is not finite")
    return ts


def headers_dict(headers: Headers) -> dict[str, bytes]:
    """Kafka headers (a list of pairs or a mapping) as a dict with lower-case keys."""
    if not headers:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {k.lower(): (v or b"") for k, v in items}


def _load(value: bytes, max_bytes: int) -> tuple[Any, Decoded]:
    """Parse a body: the JSON value and an empty result, or None and the rejection."""
    out = Decoded()
    if len(value) > max_bytes:
        out.rejections.append(Rejection("oversized", f"{len(value)} bytes > limit {max_bytes}"))
        return None, out
    try:
        if not value.isascii():
            value.decode("utf-8")
    except UnicodeDecodeError as exc:
        out.rejections.append(Rejection("bad_utf8", str(exc)))
        return None, out
    try:
        return msgspec.json.decode(value), out
    except msgspec.DecodeError as exc:
        out.rejections.append(Rejection("bad_json", str(exc)))
    except RecursionError:
        out.rejections.append(Rejection("bad_json", "nested too deeply"))
    return None, out


def pop_expired(items: OrderedDict[Any, Any], now: float, max_age: float,
                ts_of: Any = lambda v: v[-1]) -> list[Any]:
    """Pop the oldest entries of an insertion-ordered dict while older than ``max_age`` at
    event time ``now``; returns the popped values (oldest first).

    >>> d = OrderedDict(a=(1.0,), b=(5.0,), c=(2.0,))
    >>> pop_expired(d, 10.0, 6.0), list(d)
    ([(1.0,)], ['b', 'c'])
    """
    out = []
    while items:
        value = next(iter(items.values()))
        if now - ts_of(value) <= max_age:
            break
        out.append(items.popitem(last=False)[1])
    return out


def _record(obj: Any, default_model: str | None, default_version: str | None, now: float,
            max_ts: float, limits: Limits, index: int | None) -> PredictionRecord | Rejection:
    try:
        r = msgspec.convert(obj, _Record)
    except msgspec.ValidationError as exc:
        return Rejection("invalid_record", str(exc), index)
    return checked_record(r.model or default_model,
                          r.version if r.version is not None else default_version, r.id, r.ts,
                          r.features, r.prediction, r.latency_ms, r.segment, now=now,
                          max_ts=max_ts, limits=limits, index=index)


def _fast_batch(value: bytes, now: float, max_ts: float, limits: Limits
                ) -> RecordBatch | None:
    """The common case of a native batch — a model, every record a dict of scalar features
    with a numeric ``ts`` (or none), a string ``id`` (or none) and no other model or version,
    every count and length within ``limits`` — decoded straight into typed structs
    (validation in C) and returned as one :class:`RecordBatch`; None when anything needs the
    careful path, which then reports it."""
    codecs = _codecs(limits)
    numeric = True
    b: Any = None
    shape = None
    try:
        for i, candidate in enumerate(codecs.shapes):  # another feature set fails at once
            try:
                b = candidate.decoder.decode(value)
            except msgspec.DecodeError:
                continue
            shape = candidate
            if i:
                codecs.shapes.insert(0, codecs.shapes.pop(i))
            break
        if b is None:
            try:
                b = codecs.numeric.decode(value)
            except msgspec.ValidationError:  # a string, bool or null feature: most fail early
                numeric = False
                b = codecs.any.decode(value)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):  # incl. ValidationError
        return None
    recs = b.records
    if not recs:
        return None
    try:
        version = "" if b.version is None else _text(b.version, "version",
                                                     limits.max_version_chars)
        preds = [_scalar(r.prediction, "prediction", limits) for r in recs]
    except _Bad:
        return None
    if {r.model for r in recs} - {None, b.model}:
        return None
    versions = {r.version for r in recs} - {None}
    if versions and {str(v) for v in versions} != {version}:
        return None
    ts = [now if r.ts is None else r.ts for r in recs]
    if not (math.isfinite(sum(ts)) and max(ts) <= max_ts):  # inf, NaN, future: be careful
        return None
    features: Sequence[dict[str, Any]] = [r.features for r in recs]
    if shape is not None:
        features = MatrixRows(shape.names, shape.matrix(features))
    elif numeric:
        codecs.learn_shape(features)
    return RecordBatch(b.model, version, [r.id for r in recs], ts, features, preds, numeric,
                       latency_column([r.latency_ms for r in recs]))


def latency_column(values: Sequence[Any]) -> list[float | None] | None:
    """A batch's ``latency_ms`` values as the careful path keeps them (a number as a float,
    anything else None), for every fast path alike; None when no record carries one.

    >>> latency_column([1, None, "x", True]), latency_column([None])
    ([1.0, None, None, 1.0], None)
    """
    out = [float(x) if isinstance(x, (int, float)) else None for x in values]
    return out if any(x is not None for x in out) else None


def _beyond_doubles(values: Sequence[Any]) -> bool:
    """An integer outside ±2^53 among ``values`` (the careful path turns it into a float)."""
    return any(type(v) is int and not -MAX_EXACT_INT <= v <= MAX_EXACT_INT for v in values)


def _fast_columns(value: bytes, now: float, max_ts: float, limits: Limits
                  ) -> RecordBatch | None:
    """A column batch whose lists all have one length, every value within ``limits`` (checked
    by msgspec in C while decoding), event times known and not in the future, as one
    :class:`RecordBatch` of columns — no object per record; None when anything needs the
    careful path (which says what is wrong, record by record)."""
    codecs = _codecs(limits)
    numeric = True
    try:
        try:
            b = codecs.columns_numeric.decode(value)
        except msgspec.ValidationError:
            numeric = False
            b = codecs.columns_any.decode(value)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):  # incl. ValidationError
        return None
    c = b.columns
    lists = [x for x in (c.id, c.ts, c.prediction, c.latency_ms) if x is not None]
    lists += list(c.features.values())
    n = len(lists[0]) if lists else 0
    if n == 0 or any(len(x) != n for x in lists):
        return None
    if c.ts is None:
        ts = [now] * n
    else:
        t = np.asarray(c.ts, dtype=np.float64)
        if not (np.isfinite(t).all() and t.max() <= max_ts):
            return None
        ts = c.ts
    try:
        version = "" if b.version is None else _text(b.version, "version",
                                                     limits.max_version_chars)
    except _Bad:
        return None
    preds = c.prediction if c.prediction is not None else [None] * n
    # integers beyond ±2^53: the careful path makes them floats (numeric features are already)
    if any(map(_beyond_doubles, [preds, *([] if numeric else c.features.values())])):
        return None
    features: Sequence[dict[str, Any]]
    if numeric:
        names = tuple(c.features)
        matrix = np.array([c.features[k] for k in names], dtype=np.float64).T.reshape(
            n, len(names))
        features = MatrixRows(names, matrix)
    else:
        features = ColumnRows(c.features)
    return RecordBatch(b.model, version, c.id if c.id is not None else [None] * n, ts,
                       features, preds, numeric, latency_column(c.latency_ms or []))


def _column_records(obj: dict[str, Any], out: Decoded) -> list[dict[str, Any]] | None:
    """The records of a column batch the fast path refused, one dict each, for the careful
    path to judge one by one; None (and the rejection in ``out``) when the columns do not
    line up."""
    cols, feats = obj["columns"], None
    if isinstance(cols, dict):
        feats = cols.get("features", {})
    if not isinstance(cols, dict) or not isinstance(feats, dict):
        out.rejections.append(Rejection("invalid_record",
                                        "`columns` or its `features` is not an object"))
        return None
    fields = {k: v for k, v in cols.items() if k != "features"}
    lists = [*fields.values(), *feats.values()]
    if not all(isinstance(x, list) for x in lists):
        out.rejections.append(Rejection("invalid_record", "a column is not an array"))
        return None
    n = len(lists[0]) if lists else 0
    if any(len(x) != n for x in lists):
        out.rejections.append(Rejection("invalid_record", "columns of different lengths"))
        return None
    return column_records(fields, feats, n)


def column_records(fields: Mapping[str, Sequence[Any]], features: Mapping[str, Sequence[Any]],
                   n: int) -> list[dict[str, Any]]:
    """The ``n`` records of a column batch as native records (a feature whose value is None
    is absent), for the careful path (JSON and Arrow column batches alike).

    >>> column_records({"id": ["a", "b"]}, {"x": [1.0, None]}, 2)
    [{'id': 'a', 'features': {'x': 1.0}}, {'id': 'b', 'features': {}}]
    """
    return [{**{k: v[i] for k, v in fields.items()},
             "features": {k: v[i] for k, v in features.items() if v[i] is not None}}
            for i in range(n)]


def judged_records(records: Sequence[Any], model: Any, version: Any, *, now: float,
                   max_ts: float, limits: Limits) -> Decoded:
    """Each native record of a batch judged on its own: used, or rejected with its index."""
    out = Decoded()
    for i, rec in enumerate(records):
        _sort(out, _record(rec, model, version, now, max_ts, limits, i))
    return out


def _sort(out: Decoded, r: PredictionRecord | Rejection) -> None:
    if isinstance(r, Rejection):
        out.rejections.append(r)
    else:
        out.records.append(r)


def decode_predictions(value: bytes, headers: Headers = None, *,
                       max_bytes: int = MAX_MESSAGE_BYTES, now: float | None = None,
                       clock: float | None = None, limits: Limits | None = None,
                       feature_names: Mapping[str, Sequence[str]] | None = None,
                       joiner: CloudEventJoiner | None = None) -> Decoded:
    """Decode one message of the prediction or feature topic.

    ``now`` is the time given to records without ``ts`` (the caller passes the Kafka message
    timestamp). An event time before the epoch or more than ``limits.max_future_seconds``
    after ``clock`` (default: the wall clock; the stream passes the earlier of the message's
    timestamp and the wall clock) is a ``bad_timestamp``. ``feature_names`` names the columns
    of models whose payloads carry bare vectors (KServe v1 ``instances``, OIP tensors).
    CloudEvents need a ``joiner``; without one a CloudEvent is rejected as ``unknown_format``.
    """
    now = time.time() if now is None else now
    limits = limits or _DEFAULT_LIMITS
    max_ts = (time.time() if clock is None else clock) + limits.max_future_seconds
    hdr = headers_dict(headers)
    cloudevent = "ce_type" in hdr or "ce-type" in hdr
    if not cloudevent and value[:4] == b"\xff\xff\xff\xff":  # an Arrow IPC column batch
        if len(value) > max_bytes:
            return Decoded(rejections=[Rejection("oversized",
                                                 f"{len(value)} bytes > limit {max_bytes}")])
        from driftwarden.arrow import decode_arrow  # pyarrow: only Arrow messages load it

        return decode_arrow(value, now=now, max_ts=max_ts, limits=limits)
    if not cloudevent and len(value) <= max_bytes:
        if b'"columns"' in value:
            cols = _fast_columns(value, now, max_ts, limits)
            if cols is not None:
                return Decoded(batches=[cols])
        elif b'"records"' in value:
            fast = _fast_batch(value, now, max_ts, limits)
            if fast is not None:
                return Decoded(batches=[fast])
        elif b'"features"' in value:
            single = _fast_single(value, now, max_ts, limits)
            if isinstance(single, PredictionRecord):
                return Decoded(records=[single])
            if single is not None:
                return Decoded(rejections=[single])
    obj, out = _load(value, max_bytes)
    if out.rejections:
        return out
    names = feature_names or {}
    if cloudevent:
        if joiner is None:
            out.rejections.append(Rejection("unknown_format", "a CloudEvent, no joiner"))
            return out
        return _checked(joiner.add(obj, hdr, now, names), now, max_ts, limits)
    if not isinstance(obj, dict):
        out.rejections.append(Rejection("unknown_format", f"a JSON {type(obj).__name__}"))
        return out
    if "columns" in obj and "records" not in obj:
        recs = _column_records(obj, out)
        if recs is None:
            return out
        obj = {**obj, "records": recs}
    if "records" in obj:
        records = obj["records"]
        if not isinstance(records, list):
            out.rejections.append(Rejection("invalid_record", "`records` is not an array"))
            return out
        model, version = obj.get("model"), obj.get("version")
        if model is not None and not isinstance(model, str):
            out.rejections.append(Rejection("invalid_record", "`model` is not a string"))
            return out
        return judged_records(records, model, version, now=now, max_ts=max_ts, limits=limits)
    if "inputs" in obj or "outputs" in obj:
        model = obj.get("model_name")
        if not isinstance(model, str):
            out.rejections.append(Rejection("invalid_record", "OIP payload without model_name"))
            return out
        return _checked(_oip_records(obj, obj if "outputs" in obj else None, model,
                                     obj.get("model_version"), obj.get("id"), now, names),
                        now, max_ts, limits)
    if "features" in obj:
        _sort(out, _record(obj, None, None, now, max_ts, limits, None))
        return out
    out.rejections.append(Rejection("unknown_format", "no `features`, `records`, `inputs` or "
                                                      "`outputs` field"))
    return out


def _checked(decoded: Decoded, now: float, max_ts: float, limits: Limits) -> Decoded:
    """The records of an adapter (OIP, KServe v1) passed through :func:`checked_record`."""
    out = Decoded(rejections=decoded.rejections)
    for i, r in enumerate(decoded.records):
        _sort(out, checked_record(r.model, r.version, r.id, r.ts, r.features, r.prediction,
                                  r.latency_ms, r.segment, now=now, max_ts=max_ts,
                                  limits=limits, index=i if len(decoded.records) > 1 else None))
    return out


def decode_label(value: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES,
                 now: float | None = None, clock: float | None = None,
                 limits: Limits | None = None) -> Decoded:
    """Decode one message of the label topic.

    >>> decode_label(b'{"model":"fraud","id":"r1","label":1}', now=5.0).records
    [LabelRecord(model='fraud', id='r1', label=1.0, ts=5.0)]
    >>> decode_label(b'{"model":"fraud","id":"r1","label":NaN}').rejections[0].reason
    'bad_json'
    """
    now = time.time() if now is None else now
    limits = limits or _DEFAULT_LIMITS
    max_ts = (time.time() if clock is None else clock) + limits.max_future_seconds
    obj, out = _load(value, max_bytes)
    if out.rejections:
        return out
    try:
        r = msgspec.convert(obj, _Label)
        model = _text(r.model, "model name", limits.max_name_chars)
        rid = _text(r.id, "id", limits.max_value_chars)
        if isinstance(r.label, str):
            _scalar(r.label, "label", limits)
    except msgspec.ValidationError as exc:
        out.rejections.append(Rejection("invalid_record", str(exc)))
        return out
    except _Bad as bad:
        out.rejections.append(Rejection(bad.reason, bad.detail))
        return out
    label = r.label
    if isinstance(label, bool):
        label = float(label)
    if isinstance(label, (int, float)):
        try:
            label = float(label)
        except OverflowError:
            label = math.inf
        if not math.isfinite(label):
            out.rejections.append(Rejection("bad_label", "label is NaN or infinite"))
            return out
    elif not isinstance(label, str):
        out.rejections.append(Rejection("bad_label", f"label of type {type(label).__name__}"
                                        if label is not None else "label is missing"))
        return out
    try:
        ts = parse_ts(r.ts, now)
        check_ts(ts, max_ts)
    except ValueError as exc:
        out.rejections.append(Rejection("bad_timestamp", str(exc)))
        return out
    out.records.append(LabelRecord(model, rid, label, ts))
    return out


# ---------------------------------------------------------------------------------------------
# Open Inference Protocol v2 and KServe v1


def _tensor_rows(t: Any) -> list[list[Any]]:
    """An OIP tensor as rows: shape [N] → N rows of one value, [N, F] → N rows of F."""
    if not isinstance(t, dict) or "data" not in t or "shape" not in t:
        raise ValueError("a tensor needs `shape` and `data`")
    shape, data = t["shape"], t["data"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError("`shape` must be a list of non-negative integers")
    flat: list[Any] = []
    stack = [data]
    while stack:  # flatten nested data (OIP allows nested or flat)
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)
    n = shape[0] if shape else 1
    width = math.prod(shape[1:]) if len(shape) > 1 else 1
    if n * width != len(flat):
        raise ValueError(f"data of {len(flat)} values does not fit shape {shape}")
    return [flat[i * width:(i + 1) * width] for i in range(n)]


def _oip_features(inputs: Any, names: Sequence[str] | None) -> list[dict[str, Any]]:
    if not isinstance(inputs, list) or not inputs:
        raise ValueError("`inputs` must be a non-empty array")
    columns: list[tuple[str, list[list[Any]]]] = [(str(t.get("name", f"input_{i}")),
                                                   _tensor_rows(t)) for i, t in enumerate(inputs)]
    n = len(columns[0][1])
    if any(len(rows) != n for _, rows in columns):
        raise ValueError("inputs have different batch sizes")
    out = []
    for i in range(n):
        feats: dict[str, Any] = {}
        for name, rows in columns:
            row = rows[i]
            if len(row) == 1 and len(columns) > 1:
                feats[name] = row[0]
            else:
                keys = names if names and len(names) == len(row) else [
                    f"{name}_{j}" if len(row) > 1 else name for j in range(len(row))]
                feats.update(zip(keys, row))
        out.append(feats)
    return out


def _oip_predictions(outputs: Any, n: int) -> list[Any]:
    if not isinstance(outputs, list) or not outputs:
        raise ValueError("`outputs` must be a non-empty array")
    rows = _tensor_rows(outputs[0])
    if len(rows) != n:
        raise ValueError(f"{len(rows)} outputs for {n} inputs")
    return [r[0] if len(r) == 1 else r for r in rows]


def _oip_records(request: Any, response: Any, model: str, version: Any, rid: Any, ts: float,
                 names: Mapping[str, Sequence[str]]) -> Decoded:
    out = Decoded()
    try:
        if request is not None and "inputs" in request:
            feats = _oip_features(request["inputs"], names.get(model))
        else:
            feats = []
        if response is not None and "outputs" in response:
            preds = _oip_predictions(response["outputs"], len(feats) if feats else
                                     len(_tensor_rows(response["outputs"][0])))
        else:
            preds = [None] * len(feats)
        if not feats:
            feats = [{} for _ in preds]
    except (ValueError, TypeError, AttributeError, IndexError) as exc:
        out.rejections.append(Rejection("shape_mismatch", str(exc)))
        return out
    try:
        base_id = None if rid is None else _text(rid, "id", 256)
    except _Bad as bad:
        out.rejections.append(Rejection(bad.reason, bad.detail))
        return out
    for i, (f, p) in enumerate(zip(feats, preds)):
        rec_id = base_id if len(feats) == 1 or base_id is None else f"{base_id}:{i}"
        out.records.append(PredictionRecord(model, version, rec_id, ts, f, p))
    return out


def _v1_records(request: Any, response: Any, model: str, version: Any, rid: str | None,
                ts: float, names: Mapping[str, Sequence[str]]) -> Decoded:
    out = Decoded()
    instances = request.get("instances") if isinstance(request, dict) else None
    preds = response.get("predictions") if isinstance(response, dict) else None
    if not isinstance(instances, list) or not isinstance(preds, list):
        out.rejections.append(Rejection("invalid_record", "v1 payloads need `instances` and "
                                                          "`predictions` arrays"))
        return out
    if len(instances) != len(preds):
        out.rejections.append(Rejection("shape_mismatch",
                                        f"{len(instances)} instances, {len(preds)} predictions"))
        return out
    cols = names.get(model)
    for i, (inst, pred) in enumerate(zip(instances, preds)):
        if isinstance(inst, dict):
            feats = dict(inst)
        elif isinstance(inst, list):
            keys = cols if cols and len(cols) == len(inst) else [f"f{j}" for j in range(len(inst))]
            feats = dict(zip(keys, inst))
        else:
            feats = {"f0": inst}
        rec_id = rid if len(instances) == 1 or rid is None else f"{rid}:{i}"
        out.records.append(PredictionRecord(model, version, rec_id, ts, feats, pred))
    return out


class CloudEventJoiner:
    """Pairs KServe inference-logger request and response events by ``ce_id``.

    Holds at most ``max_pending`` unmatched halves for ``ttl`` seconds (event time); an
    expired half is returned by :meth:`expire` so the caller can count it — never dropped
    silently.

    >>> j = CloudEventJoiner()
    >>> h = {"ce_id": b"e1", "ce_inferenceservicename": b"iris"}
    >>> names = {"iris": ["sepal_length", "sepal_width"]}
    >>> req = {**h, "ce_type": b"org.kubeflow.serving.inference.request"}
    >>> resp = {**h, "ce_type": b"org.kubeflow.serving.inference.response"}
    >>> j.add({"instances": [[5.1, 3.5]]}, req, 1.0, names).records
    []
    >>> r = j.add({"predictions": [0]}, resp, 1.2, names).records[0]
    >>> (r.model, r.id, r.features, r.prediction)
    ('iris', 'e1', {'sepal_length': 5.1, 'sepal_width': 3.5}, 0)
    """

    def __init__(self, ttl: float = 300.0, max_pending: int = 100_000,
                 max_bytes: int = 64 << 20) -> None:
        self.ttl = ttl
        self.max_pending = max_pending
        self.max_bytes = max_bytes  # bodies held at most (the oldest halves go first)
        # ce_id -> (kind, body as JSON bytes, headers, ts): bytes, so what is held and
        # checkpointed is bounded by size and always encodable
        self._pending: OrderedDict[str, tuple[str, bytes, dict[str, bytes], float]] = (
            OrderedDict())
        self.bytes = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, body: Any, headers: Mapping[str, bytes], ts: float,
            names: Mapping[str, Sequence[str]]) -> Decoded:
        h = {k.replace("-", "_"): v for k, v in headers.items()}
        out = Decoded()
        ce_id = h.get("ce_id", b"").decode("utf-8", "replace")
        ce_type = h.get("ce_type", b"").decode("utf-8", "replace")
        kind = ("request" if ce_type.endswith(".request") else
                "response" if ce_type.endswith(".response") else None)
        if not ce_id or kind is None:
            out.rejections.append(Rejection("unknown_format",
                                            f"CloudEvent without ce_id or with type {ce_type!r}"))
            return out
        if "ce_time" in h:
            with contextlib.suppress(ValueError):
                ts = parse_ts(h["ce_time"].decode("utf-8", "replace"), ts)
        other = self._pending.pop(ce_id, None)
        if other is not None:
            self.bytes -= len(other[1])
        if other is None or other[0] == kind:
            try:
                raw = orjson.dumps(body)
            except (TypeError, orjson.JSONEncodeError) as exc:
                out.rejections.append(Rejection("invalid_record", f"CloudEvent body: {exc}"))
                return out
            self._pending[ce_id] = (kind, raw, h, ts)
            self.bytes += len(raw)
            while len(self._pending) > self.max_pending or self.bytes > self.max_bytes:
                self.bytes -= len(self._pending.popitem(last=False)[1][1])
                self.expired += 1
            return out
        _, other_raw, other_h, other_ts = other
        other_body = orjson.loads(other_raw)
        request, response = (other_body, body) if kind == "response" else (body, other_body)
        req_h = other_h if kind == "response" else h
        model = (req_h.get("ce_inferenceservicename") or h.get("ce_inferenceservicename")
                 or b"").decode("utf-8", "replace")
        if isinstance(response, dict) and isinstance(response.get("model_name"), str):
            model = model or response["model_name"]
        if not model:
            out.rejections.append(Rejection("invalid_record", "CloudEvent without a model name"))
            return out
        version = None  # checked with the records
        if isinstance(response, dict):
            version = response.get("model_version")
        when = min(ts, other_ts)
        if isinstance(request, dict) and "inputs" in request:
            return _oip_records(request, response, model, version, ce_id, when, names)
        return _v1_records(request, response, model, version, ce_id, when, names)

    def expire(self, now: float) -> int:
        """Drop halves older than ``ttl`` at event time ``now``; returns how many."""
        gone = pop_expired(self._pending, now, self.ttl)
        self.bytes -= sum(len(g[1]) for g in gone)
        self.expired += len(gone)
        return len(gone)

    def to_state(self) -> dict[str, Any]:
        """The unmatched halves as JSON (headers as latin-1 text, which round-trips bytes)."""
        return {"ttl": self.ttl, "max_pending": self.max_pending, "max_bytes": self.max_bytes,
                "expired": self.expired,
                "pending": [[ce_id, kind, body.decode(),
                             {k: v.decode("latin-1") for k, v in h.items()}, ts]
                            for ce_id, (kind, body, h, ts) in self._pending.items()]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> CloudEventJoiner:
        j = cls(state["ttl"], state["max_pending"], state.get("max_bytes", 64 << 20))
        j.expired = state["expired"]
        for ce_id, kind, body, h, ts in state["pending"]:
            # bodies were JSON values in state of earlier versions
            raw = body.encode() if isinstance(body, str) else orjson.dumps(body)
            j._pending[ce_id] = (kind, raw, {k: v.encode("latin-1") for k, v in h.items()}, ts)
            j.bytes += len(raw)
        return j
