"""Partial summaries: what a source publishes and a model's merge stage adds up (DESIGN 3b).

A **partial** is what one *source* — a source partition (stage 1), an edge device, a batch
job — saw of one (model, version) in one event-time slice. Because summaries merge by addition,
the merge of every source's partial of a slice is the summary of all the slice's records,
whatever the number of sources, how records were spread over them, and the order the partials
arrive in. This module is the format and the pure halves of that path; the stream wiring
builds on it.

Two kinds of partial:

* ``data`` — the records' :class:`~driftwarden.detectors.summary.Summary` over a baseline's
  bins; or, while the source knows no baseline for the model version yet (its warm-up), the
  records themselves as columns (``records``, in chunks of at most ``CHUNK_CELLS`` values:
  several partials for one slice), from which the merge stage fits the baseline.
* ``outcomes`` — joined (prediction, label) pairs of a slice of *label* time: their count,
  their errors (a 0/1 count for a classifier, a histogram of absolute errors for a regressor)
  and the :class:`~driftwarden.detectors.summary.OutcomeSummary` (confusion counts, score
  histograms, loss sums). Concept-drift detection runs on merged outcome slices. A shadow
  version's outcome partials may also carry ``pairs`` (:class:`PairCounts`: its predictions
  paired with the serving version's on the same requests, timed by the serving prediction).

Messages: :class:`Partial` and :class:`Watermark` (a source's event time without a partial,
sent to every partition of the summaries topic, and its *idle* flag: the source has read its
input to the end and has nothing more for now). ``format_version`` 1; JSON, or msgpack with the
same fields (:func:`encode` / :func:`decode`). A partial's identity is (source, kind, seq): a
source numbers its partials of one model version in the order it publishes them, and a replay
re-publishes the same numbers with the same content.

* :class:`PartialBuilder` / :class:`OutcomeBuilder` — a source's side: rows in, one partial
  per slice once the source's watermark (newest event time − allowed lateness) has passed it;
  a row older than the watermark of the rows before it is late (counted, not published), so
  the partials do not depend on how the rows were cut into calls. :meth:`flush` at the end of
  a file, on idleness, before a device goes offline.
* :class:`SourceClock` and :class:`SliceMerger` — a model's side: partials in, closed slices
  out, oldest first. A slice closes when every *active* source's watermark has passed it; a
  source that said it is idle, or was silent for ``idle_seconds`` (the caller's clock), stops
  holding the others back. A partial for a slice already closed is **late**: counted
  (partials and rows, per source), never merged into a closed slice and never dropped
  silently; a replayed identity is a **duplicate**: counted, not merged twice; a partial over
  other bins (another baseline) is **mismatched**: counted, not merged.

>>> import numpy as np
>>> from driftwarden.detectors.baseline import Baseline
>>> base = Baseline.fit({"x": np.linspace(0, 1, 500)}, bins=4)
>>> a = PartialBuilder(base, model="m", version="1", source="dev-a", slice_seconds=10.0)
>>> b = PartialBuilder(base, model="m", version="1", source="dev-b", slice_seconds=10.0)
>>> clock = SourceClock(idle_seconds=60.0)
>>> merger = SliceMerger(clock, slice_seconds=10.0, fingerprint=fingerprint(base))
>>> for name in ("dev-a", "dev-b", "dev-c"):
...     clock.expect(name, now=0.0)
>>> sent = a.add({"x": np.array([0.1, 0.2])}, ts=np.array([1.0, 2.0])) + a.flush()
>>> sent += b.add({"x": np.array([0.9])}, ts=np.array([3.0])) + b.flush()
>>> [p.rows for p in sent], decode(encode(sent[0], binary=True)) == sent[0]
([2, 1], True)
>>> [c for p in sent for c in merger.add(p, now=0.0)]   # slice 0 waits for dev-c
[]
>>> [(sid, merge_data(base, ps).n_rows) for sid, ps in merger.close(now=61.0)]  # dev-c idle
[(0, 3)]
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import numpy as np

from driftwarden.detectors.baseline import Baseline
from driftwarden.detectors.rollout import PairCounts
from driftwarden.detectors.summary import (
    LOG_EDGES,
    PREDICTION,
    OutcomeSummary,
    Summary,
    plain_numbers,
)
from driftwarden.detectors.window import late_rows, take_rows
from driftwarden.errors import ValidationError

FORMAT_VERSION = 1
CHUNK_CELLS = 100_000  # values (records x columns) in one partial carrying records
# absolute errors of a regressor, binned on a log scale (8 bins per decade, 1e-9 .. 1e9, plus
# an underflow bin for exact zeros): what concept-drift detection replays from a merged slice
ERROR_EDGES = LOG_EDGES


class Partial(msgspec.Struct, frozen=True, kw_only=True, tag="partial", tag_field="type"):
    """One source's summary of one slice of one model version (see the module docstring)."""

    format_version: int = FORMAT_VERSION
    kind: Literal["data", "outcomes"] = "data"
    model: str
    version: str
    source: str          # "topic/partition", a device id, "batch:<job>"
    slice: int           # floor(event time / slice_seconds); label time for outcomes
    slice_seconds: float
    seq: int             # per (source, kind, model version): the slices published, from 0
    part: int = 0        # a slice's records in chunks: part 0, 1, ... of ``parts``
    parts: int = 1
    watermark: float     # event time the source vouches for with this partial (see _publish)
    baseline: str = ""   # fingerprint of the bins ``summary`` follows ("": none, records)
    rows: int
    late: int = 0        # records of this model the source judged late since its last partial
    summary: dict[str, Any] | None = None   # data: Summary.to_state(); outcomes: see below
    records: dict[str, Any] | None = None   # warm-up data: {"ts": [...], "columns": {...}}


class Watermark(msgspec.Struct, frozen=True, kw_only=True, tag="watermark", tag_field="type"):
    """A source's event time (per kind) with no partial: sent to every summaries partition, so
    a model whose records this source never carries is not held back by it (``labels``: a
    label partition's label time, sent to every joins partition the same way)."""

    format_version: int = FORMAT_VERSION
    kind: Literal["data", "outcomes", "labels"] = "data"
    source: str
    watermark: float
    idle: bool = False   # read to the end, nothing more for now: do not wait for me


Message = Partial | Watermark
_json = msgspec.json.Decoder(Message)  # type: ignore[var-annotated]
_msgpack = msgspec.msgpack.Decoder(Message)  # type: ignore[var-annotated]


def encode(p: Message, *, binary: bool = False) -> bytes:
    """The message: JSON, or msgpack (``binary``) with the same fields."""
    return msgspec.msgpack.encode(p) if binary else msgspec.json.encode(p)


def decode(raw: bytes) -> Message:
    """A partial or a watermark from JSON or msgpack (told apart by the first byte: ``{`` is
    JSON). Raises :class:`~driftwarden.errors.ValidationError` with one line when it is
    neither, or a format version this code does not know."""
    try:
        p = _json.decode(raw) if raw[:1] == b"{" else _msgpack.decode(raw)
    except (msgspec.MsgspecError, RecursionError, UnicodeDecodeError) as exc:
        raise ValidationError(f"not a partial summary: {str(exc)[:200]}") from None
    if p.format_version != FORMAT_VERSION:
        raise ValidationError(f"partial summary format {p.format_version} is not supported "
                              f"(this driftwarden reads {FORMAT_VERSION})")
    if not math.isfinite(p.watermark) and p.watermark != -math.inf:
        raise ValidationError("not a partial summary: its watermark is not a number")
    return p


def fingerprint(baseline: Baseline) -> str:
    """A short hash of the baseline's bins: partials are only merged over the same ones."""
    state = baseline.to_state()
    raw = msgspec.json.encode({"specs": state["specs"], "prediction": state["prediction"]},
                              order="sorted")
    return hashlib.sha256(raw).hexdigest()[:16]


# -- a source's side --------------------------------------------------------------------------
class EventTime:
    """A source's event time for one kind (data: record time; outcomes: label time), shared by
    its builders of every model: the watermark is the newest event time the source has seen
    minus ``allowed_lateness``, and a row older than the watermark of the rows before it —
    whichever model they belong to — is late. Rows are judged one at a time, so the result
    does not depend on how they were cut into calls.

    >>> t = EventTime(allowed_lateness=1.0)
    >>> t.admit(np.array([5.0, 3.5, 4.2])).tolist(), t.watermark, t.late_rows
    ([True, False, True], 4.0, 1)
    """

    def __init__(self, allowed_lateness: float = 0.0) -> None:
        self.allowed_lateness = float(allowed_lateness)
        self.max_ts = -math.inf
        self.late_rows = 0

    @property
    def watermark(self) -> float:
        return self.max_ts - self.allowed_lateness

    def admit(self, ts: np.ndarray) -> np.ndarray:
        """Which rows (event times ``ts``, in the source's order) are on time; the others are
        counted late."""
        t = np.asarray(ts, dtype=np.float64)
        if len(t) == 1:  # a single-record message (the common case): no array work
            x = float(t[0])
            if math.isfinite(x) and not x < self.max_ts - self.allowed_lateness:
                self.max_ts = max(self.max_ts, x)
                return np.ones(1, dtype=bool)
            self.late_rows += 1
            return np.zeros(1, dtype=bool)
        if not len(t):
            return np.ones(0, dtype=bool)
        late = late_rows(t, self.max_ts, self.allowed_lateness, None, 1.0)
        ok = np.ones(len(t), dtype=bool) if late is None else ~late
        if ok.any():
            self.max_ts = max(self.max_ts, float(t[ok].max()))
        self.late_rows += int(len(t) - ok.sum())
        return ok

    def advance(self, watermark: float) -> None:
        """Event time vouched for from elsewhere (the join: its label sources' horizon)."""
        if math.isfinite(watermark):
            self.max_ts = max(self.max_ts, watermark + self.allowed_lateness)

    def to_state(self) -> list[Any]:
        return [self.max_ts if math.isfinite(self.max_ts) else None, self.late_rows]

    def load(self, state: Sequence[Any]) -> None:
        self.max_ts = -math.inf if state[0] is None else float(state[0])
        self.late_rows = int(state[1])


class _Builder:
    """Tumbling event-time slices of one (model, version, kind) at one source; subclasses say
    what a slice holds (:meth:`_take`) and what its partial carries (:meth:`_payload`).

    With its own :class:`EventTime` (``time`` None) a builder judges lateness and publishes
    in :meth:`add`; sharing the source's ``time`` with the builders of its other models, the
    source admits rows (:meth:`EventTime.admit`) before adding them and calls :meth:`publish`
    on every builder once a batch is in."""

    kind = "data"

    def __init__(self, *, model: str, version: str, source: str, slice_seconds: float,
                 allowed_lateness: float = 0.0, seq: int = 0,
                 time: EventTime | None = None) -> None:
        if not slice_seconds > 0:
            raise ValidationError(f"slice_seconds must be > 0, got {slice_seconds}")
        self.model, self.version, self.source = model, version, source
        self.slice_seconds = float(slice_seconds)
        self.own_time = time is None
        self.time = EventTime(allowed_lateness) if time is None else time
        self.seq = seq  # the next partial's sequence number
        self.open: dict[int, Any] = {}
        self.published_through: int | None = None  # newest slice published
        self.late_rows = 0  # rows of a slice already published (a shared time admitted them)
        self.pending_late = 0  # late rows the next partial reports (see Partial.late)

    @property
    def watermark(self) -> float:
        return self.time.watermark

    def _add(self, columns: Mapping[str, Any], ts: Any) -> list[Partial]:
        t = np.asarray(ts, dtype=np.float64)
        if not len(t):
            return []
        keep = self.time.admit(t) if self.own_time else np.isfinite(t)
        self.late_rows += 0 if self.own_time else int((~keep).sum())
        if self.published_through is not None:  # (after a flush: a slice published early)
            done = keep & (np.floor(np.where(keep, t, 0.0) / self.slice_seconds)
                           <= self.published_through)
            self.late_rows += int(done.sum())
            self.pending_late += int(done.sum())
            keep &= ~done
        if not keep.all():
            t, columns = t[keep], take_rows(columns, keep)
        if len(t):
            ids = np.floor(t / self.slice_seconds).astype(np.int64)
            uniq = np.unique(ids).tolist()
            for sid in uniq:
                sel = ids == sid
                part = take_rows(columns, sel) if len(uniq) > 1 else columns
                self._take(sid, part, t[sel])
        return self.publish() if self.own_time else []

    def publish(self) -> list[Partial]:
        """The partials of the open slices the watermark has passed, oldest first."""
        if not math.isfinite(self.watermark):
            return []
        return self._publish(math.floor(self.watermark / self.slice_seconds) - 1)

    def flush(self) -> list[Partial]:
        """Publish every open slice (the end of a file, an idle source, a device about to go
        offline); rows of those slices that come later are late."""
        return self._publish(max(self.open, default=-1), final=True)

    def _take(self, sid: int, columns: Mapping[str, Any], ts: np.ndarray) -> None:
        raise NotImplementedError

    def _payloads(self, acc: Any) -> list[dict[str, Any]]:
        """What the partials of one slice carry (more than one: chunks of records)."""
        raise NotImplementedError

    def _publish(self, through: int, final: bool = False) -> list[Partial]:
        """Publish the open slices up to ``through``, oldest first. Each partial carries the
        watermark the source can vouch for *at that partial*: up to the start of the next
        slice it publishes (nothing of its in between), and its own watermark at the last
        (after a flush, at least the end of that slice) — so a merger never closes a slice
        whose partial from this source is still to come."""
        sids = sorted(k for k in self.open if k <= through)
        out = []
        for i, sid in enumerate(sids):
            acc = self.open.pop(sid)
            if i + 1 < len(sids):
                wm = sids[i + 1] * self.slice_seconds
            else:
                wm = self.watermark if math.isfinite(self.watermark) else 0.0
                if final:
                    wm = max(wm, (sid + 1) * self.slice_seconds)
            payloads = self._payloads(acc)
            for j, payload in enumerate(payloads):  # chunks before the last vouch for less
                late, self.pending_late = self.pending_late, 0
                out.append(Partial(kind=self.kind, model=self.model,  # type: ignore[arg-type]
                                   version=self.version, source=self.source, slice=sid,
                                   slice_seconds=self.slice_seconds, seq=self.seq, part=j,
                                   parts=len(payloads), late=late,
                                   watermark=wm if j == len(payloads) - 1
                                   else sid * self.slice_seconds, **payload))
            self.seq += 1  # per slice, chunked or not: a replay binned differently matches
            self.published_through = max(sid, self.published_through if
                                         self.published_through is not None else sid)
        return out

    def to_state(self) -> dict[str, Any]:
        return {"seq": self.seq, "published_through": self.published_through,
                "pending_late": self.pending_late,
                "late_rows": self.late_rows, "time": self.time.to_state() if self.own_time
                else None, "open": {str(k): self._acc_state(v) for k, v in self.open.items()}}

    def _load(self, state: Mapping[str, Any]) -> None:
        self.seq = int(state["seq"])
        self.published_through = state["published_through"]
        self.late_rows = int(state["late_rows"])
        self.pending_late = int(state.get("pending_late", 0))
        if state["time"] is not None:
            self.time.load(state["time"])
        self.open = {int(k): self._acc_load(v) for k, v in state["open"].items()}

    def _acc_state(self, acc: Any) -> Any:
        raise NotImplementedError

    def _acc_load(self, state: Any) -> Any:
        raise NotImplementedError


@dataclass
class _DataSlice:
    summary: Summary | None = None          # over the baseline's bins
    ts: list[float] = field(default_factory=list)   # or, with no baseline, the rows
    columns: dict[str, list[Any]] = field(default_factory=dict)
    rows: int = 0


class PartialBuilder(_Builder):
    """A source's aggregation of the records of one (model, version) into ``data`` partials:
    over ``baseline``'s bins, or as records while it has
    none (:meth:`set_baseline` bins the open slices when one arrives)."""

    kind = "data"

    def __init__(self, baseline: Baseline | None, *, model: str, version: str, source: str,
                 slice_seconds: float, allowed_lateness: float = 0.0,
                 reservoir_size: int = 1024, seed: int = 0, seq: int = 0,
                 task: str = "classification",
                 time: EventTime | None = None) -> None:
        super().__init__(model=model, version=version, source=source,
                         slice_seconds=slice_seconds, allowed_lateness=allowed_lateness,
                         seq=seq, time=time)
        self.reservoir_size, self.seed, self.task = reservoir_size, seed, task
        self.baseline: Baseline | None = None
        self.fingerprint = ""
        if baseline is not None:
            self.set_baseline(baseline)

    def _new(self) -> Summary:
        assert self.baseline is not None
        return self.baseline.new_summary(reservoir_size=self.reservoir_size, seed=self.seed,
                                         task=self.task)

    def set_baseline(self, baseline: Baseline) -> None:
        """From now on summarise over ``baseline``'s bins (open slices of records too)."""
        self.baseline, self.fingerprint = baseline, fingerprint(baseline)
        for acc in self.open.values():
            if acc.summary is None:
                acc.summary = self._new()
                if acc.ts:
                    acc.summary.update_columns(typed_columns(baseline, acc.columns),
                                               n_rows=len(acc.ts), ts=np.asarray(acc.ts))
                acc.ts, acc.columns = [], {}

    def add(self, columns: Mapping[str, Any], ts: Any) -> list[Partial]:
        """Add rows (columns and their event times); returns the partials now complete."""
        return self._add(columns, ts)

    def _take(self, sid: int, columns: Mapping[str, Any], ts: np.ndarray) -> None:
        acc = self.open.get(sid)
        if acc is None:
            acc = self.open[sid] = _DataSlice(self._new() if self.baseline else None)
        n = len(ts)
        acc.rows += n
        if acc.summary is not None:
            acc.summary.update_columns(columns, n_rows=n, ts=ts)
            return
        before = len(acc.ts)
        acc.ts.extend(ts.tolist())
        for name, col in columns.items():
            dest = acc.columns.setdefault(name, [None] * before)
            dest.extend(_plain(col))
        for name, dest in acc.columns.items():  # a column these rows lack: None there
            if name not in columns:
                dest.extend([None] * n)

    def _payloads(self, acc: _DataSlice) -> list[dict[str, Any]]:
        if acc.summary is not None:
            return [{"baseline": self.fingerprint, "rows": acc.rows,
                     "summary": acc.summary.to_state()}]
        # records: in chunks of at most CHUNK_CELLS values, so a message stays small
        step = max(1, CHUNK_CELLS // max(1, len(acc.columns)))
        out = []
        for i in range(0, max(len(acc.ts), 1), step):
            ts = acc.ts[i:i + step]
            out.append({"rows": len(ts), "records": {
                "ts": ts, "columns": {k: v[i:i + step] for k, v in acc.columns.items()}}})
        return out

    def _acc_state(self, acc: _DataSlice) -> Any:
        return {"rows": acc.rows, "summary": None if acc.summary is None
                else acc.summary.to_state(), "ts": acc.ts, "columns": acc.columns}

    def _acc_load(self, state: Any) -> _DataSlice:
        summary = None
        if state["summary"] is not None:
            assert self.baseline is not None
            summary = Summary.from_state(self.baseline.specs, state["summary"],
                                         self.baseline.prediction)
        return _DataSlice(summary, list(state["ts"]), dict(state["columns"]), state["rows"])

    def to_state(self) -> dict[str, Any]:
        return {**super().to_state(), "baseline": None if self.baseline is None
                else self.baseline.to_state()}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], *, model: str, version: str, source: str,
                   **kwargs: Any) -> PartialBuilder:
        base = None if state["baseline"] is None else Baseline.from_state(state["baseline"])
        b = cls(base, model=model, version=version, source=source, **kwargs)
        b._load(state)
        return b


@dataclass
class _OutcomeSlice:
    summary: OutcomeSummary
    n: int = 0              # outcomes with an error value
    errors: float = 0.0     # their sum
    hist: np.ndarray | None = None  # regression: absolute errors binned on ERROR_EDGES
    pairs: PairCounts | None = None  # shadow mode: this version paired with its baseline


class OutcomeBuilder(_Builder):
    """A source's aggregation of joined outcomes of one (model, version) into ``outcomes``
    partials, sliced by label time. :meth:`add` takes the predictions, labels, their errors
    (see :func:`outcome_errors`) and the label times."""

    kind = "outcomes"

    def __init__(self, *, model: str, version: str, source: str, slice_seconds: float,
                 task: str = "classification", allowed_lateness: float = 0.0,
                 seq: int = 0, time: EventTime | None = None) -> None:
        super().__init__(model=model, version=version, source=source,
                         slice_seconds=slice_seconds, allowed_lateness=allowed_lateness,
                         seq=seq, time=time)
        self.task = "regression" if task == "regression" else "classification"

    def add(self, predictions: Sequence[Any], labels: Sequence[Any],
            ts: Sequence[float]) -> list[Partial]:
        """Add joined (prediction, label) pairs and their label times."""
        cols = {"p": np.asarray(list(predictions), dtype=object),
                "y": np.asarray(list(labels), dtype=object)}
        return self._add(cols, np.asarray(ts, dtype=np.float64))

    def add_pairs(self, baseline: Sequence[Any], candidate: Sequence[Any],
                  ts: Sequence[float]) -> list[Partial]:
        """Shadow mode: this (candidate) version's predictions paired with the baseline
        version's on the same requests, at the baseline prediction's event time."""
        cols = {"b": np.asarray(list(baseline), dtype=object),
                "c": np.asarray(list(candidate), dtype=object)}
        return self._add(cols, np.asarray(ts, dtype=np.float64))

    def _take(self, sid: int, columns: Mapping[str, Any], ts: np.ndarray) -> None:
        acc = self.open.get(sid)
        if acc is None:
            acc = self.open[sid] = _OutcomeSlice(OutcomeSummary(self.task))
        if "b" in columns:
            pairs = PairCounts.of(list(columns["b"]), list(columns["c"]), self.task)
            acc.pairs = pairs if acc.pairs is None else acc.pairs.merge(pairs)
            return
        p, y = list(columns["p"]), list(columns["y"])
        errors = np.array([e for e in outcome_errors(p, y, self.task) if e is not None])
        acc.n += len(errors)
        acc.errors += float(errors.sum()) if len(errors) else 0.0
        if self.task == "regression" and len(errors):
            counts = np.histogram(np.minimum(errors, ERROR_EDGES[-1]), ERROR_EDGES)[0]
            acc.hist = counts if acc.hist is None else acc.hist + counts
        numeric = [(a, b) for a, b in zip(p, y) if _is_number(a) and _is_number(b)]
        if numeric:
            acc.summary.update(np.array([a for a, _ in numeric], dtype=float),
                               np.array([b for _, b in numeric], dtype=float))

    def _payloads(self, acc: _OutcomeSlice) -> list[dict[str, Any]]:
        return [{"rows": acc.n, "summary": self._acc_state(acc)}]

    def _acc_state(self, acc: _OutcomeSlice) -> Any:
        out = {"n": acc.n, "errors": acc.errors, "outcomes": acc.summary.to_state(),
               "hist": None if acc.hist is None else acc.hist.tolist()}
        if acc.pairs is not None:
            out["pairs"] = acc.pairs.to_state()
        return out

    def _acc_load(self, state: Any) -> _OutcomeSlice:
        pairs = state.get("pairs")
        return _OutcomeSlice(OutcomeSummary.from_state(state["outcomes"]), state["n"],
                             state["errors"], None if state["hist"] is None
                             else np.asarray(state["hist"], dtype=np.int64),
                             None if pairs is None else PairCounts.from_state(pairs))

    @classmethod
    def from_state(cls, state: Mapping[str, Any], **kwargs: Any) -> OutcomeBuilder:
        b = cls(**kwargs)
        b._load(state)
        return b


def outcome_errors(predictions: Sequence[Any], labels: Sequence[Any],
                   task: str) -> list[float | None]:
    """The error of each (prediction, label): a classifier's 0/1 mistake (scores in [0, 1]
    against 0/1 labels are thresholded at 0.5), a regressor's absolute error; None when the
    pair cannot be compared.

    >>> outcome_errors([0.9, 0.2, "cat", 3.0], [1, 1, "dog", None], "classification")
    [0.0, 1.0, 1.0, None]
    >>> outcome_errors([2.5], [1.0], "regression")
    [1.5]
    """
    return [outcome_error(p, y, task) for p, y in zip(predictions, labels)]


def outcome_error(prediction: Any, label: Any, task: str) -> float | None:
    """The error of one (prediction, label); see :func:`outcome_errors`."""
    if prediction is None or label is None:
        return None
    try:
        if task == "regression":
            e = abs(float(prediction) - float(label))
            return e if math.isfinite(e) else None
        if _is_number(prediction) and _is_number(label) and (
                0.0 <= float(prediction) <= 1.0 and float(label) in (0.0, 1.0)):
            return float((float(prediction) >= 0.5) != (float(label) == 1.0))
        return float(str(prediction) != str(label) and _num(prediction) != _num(label))
    except (TypeError, ValueError, OverflowError):
        return None


def _num(x: Any) -> Any:
    try:
        return float(x)
    except (TypeError, ValueError, OverflowError):
        return x


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _plain(col: Any) -> list[Any]:
    """Column values as JSON-ready Python values (NaN and infinities stay floats)."""
    if isinstance(col, np.ndarray):
        return col.tolist()
    return list(col)


def typed_columns(baseline: Baseline, cols: Mapping[str, Any]) -> dict[str, Any]:
    """Columns as arrays once (float64 where the baseline expects numbers and every value is
    one), so a window's per-slice splits and the summaries take their fast paths."""
    specs = baseline.specs
    out: dict[str, Any] = {}
    for name, col in cols.items():
        spec = baseline.prediction if name == PREDICTION else specs.get(name)
        if isinstance(col, np.ndarray) and col.dtype == np.float64:
            out[name] = col
        elif spec is not None and spec.kind == "numeric" and plain_numbers(col):
            out[name] = np.array(col, dtype=np.float64)
        else:
            out[name] = np.asarray(col, dtype=object)
    return out


def peek_model(raw: bytes) -> str | None:
    """The model a binary partial names, without decoding its summary (None: not one)."""
    try:
        p = _peek.decode(raw)
    except Exception:  # noqa: BLE001 - whatever it is, the full decode will say
        return None
    return p.model if isinstance(p, _ModelOnly) else None


class _ModelOnly(msgspec.Struct, tag="partial", tag_field="type"):
    model: str


class _OtherOnly(msgspec.Struct, tag="watermark", tag_field="type"):
    pass


_peek = msgspec.msgpack.Decoder(_ModelOnly | _OtherOnly)


# -- a model's side ---------------------------------------------------------------------------
@dataclass
class _Source:
    watermark: float = -math.inf
    last_seen: float = -math.inf
    idle: bool = False


class SourceClock:
    """The sources of one kind a merge stage hears from, and how far each vouches for event
    time: shared by every model of a stage-2 shard (a source partition's watermark counts for
    every model, including those whose records it never carries)."""

    def __init__(self, idle_seconds: float) -> None:
        self.idle_seconds = float(idle_seconds)
        self.sources: dict[str, _Source] = {}

    def expect(self, source: str, now: float) -> None:
        """Count ``source`` as active from ``now`` although it has sent nothing yet: it holds
        every slice back until it reports past it, says it is idle, or stays silent for
        ``idle_seconds``."""
        src = self.sources.setdefault(source, _Source())
        src.last_seen = max(src.last_seen, now)

    def see(self, source: str, now: float, watermark: float = -math.inf,
            idle: bool = False) -> None:
        """A message from ``source`` at ``now``: a :class:`Watermark` gives its event time
        for every model (and whether it is idle); a partial only shows it is alive."""
        src = self.sources.setdefault(source, _Source())
        src.last_seen = max(src.last_seen, now)
        src.watermark = max(src.watermark, watermark)
        src.idle = idle

    def horizon(self, now: float, local: Mapping[str, float] | None = None) -> float:
        """The event time every active source has passed, each at the larger of its watermark
        and ``local`` (what its partials of one model vouched for): +inf when no source is
        active and one has spoken; -inf while an expected source has not spoken."""
        marks = self._marks(local)
        active = [marks[k] for k in self.sources if self.state(k, now) == "active"]
        if active:
            return min(active)
        if any(math.isfinite(m) for m in marks.values()):
            return math.inf  # every source idle: all they sent is in
        return -math.inf

    def _marks(self, local: Mapping[str, float] | None) -> dict[str, float]:
        """Each source's event time: its watermark or, if larger, what its partials vouched
        for (``local``: a device sends partials, not watermarks)."""
        local = local or {}
        return {k: max(s.watermark, local.get(k, -math.inf)) for k, s in self.sources.items()}

    def state(self, source: str, now: float) -> str:
        """``active`` (waited for), ``idle`` (said so) or ``silent`` (nothing for
        ``idle_seconds``)."""
        src = self.sources[source]
        if src.idle:
            return "idle"
        return "silent" if now - src.last_seen >= self.idle_seconds else "active"

    def lag(self, now: float, local: Mapping[str, float] | None = None) -> dict[str, float]:
        """Per source: how far its watermark (or, if larger, what its partials vouched for:
        ``local``) is behind the most advanced one (seconds of event time) — a device
        catching up shows here, not as drift."""
        own = self._marks(local)
        marks = [m for m in own.values() if math.isfinite(m)]
        if not marks:
            return {}
        top = max(marks)
        return {name: (top - m if math.isfinite(m) else math.inf) for name, m in own.items()}

    def to_state(self) -> dict[str, Any]:
        return {"idle_seconds": self.idle_seconds, "sources": {
            k: [v.watermark if math.isfinite(v.watermark) else None, v.idle]
            for k, v in self.sources.items()}}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], now: float) -> SourceClock:
        """A restored clock: its sources count as seen at ``now`` (the caller's clock)."""
        c = cls(state["idle_seconds"])
        for k, (wm, idle) in state["sources"].items():
            c.sources[k] = _Source(-math.inf if wm is None else wm, now, bool(idle))
        return c


@dataclass
class MergeCounts:
    """What a :class:`SliceMerger` did with the partials it was given."""

    merged: int = 0
    duplicates: int = 0
    late: int = 0
    late_rows: int = 0
    mismatched: int = 0
    by_source_late: dict[str, int] = field(default_factory=dict)


class SliceMerger:
    """A model version's slices of one kind: the partials of each open slice, closed when the
    :class:`SourceClock`'s horizon passes it. Each source's partials are expected in the order
    it published them (the summaries topic is keyed by model, so they share a partition);
    sources interleave freely. ``fingerprint``: the baseline binned partials must follow
    (None: not known yet — every binned partial waits with its slice, the caller checks)."""

    def __init__(self, clock: SourceClock, *, slice_seconds: float,
                 fingerprint: str | None = None) -> None:
        self.clock = clock
        self.slice_seconds = float(slice_seconds)
        self.fingerprint = fingerprint
        self.open: dict[int, list[Partial]] = {}
        # source -> newest (seq, part, parts) taken (merged, or counted late / mismatched)
        self.last_seq: dict[str, tuple[int, int, int]] = {}
        self.local: dict[str, float] = {}    # source -> watermark its partials vouched for
        self.last_closed: int | None = None
        self.counts = MergeCounts()

    def add(self, p: Partial, now: float) -> list[tuple[int, list[Partial]]]:
        """Take one partial (``now``: the caller's clock, for idleness); returns the slices
        it let close, oldest first, each with its partials."""
        self.clock.see(p.source, now)
        self.local[p.source] = max(self.local.get(p.source, -math.inf), p.watermark)
        ident = (p.seq, p.part, p.parts)
        last = self.last_seq.get(p.source, (-1, 0, 1))
        # a replay repeats what was taken: an earlier slice, an earlier chunk, or a slice
        # already complete (a replay may bin a slice first sent as records, or the reverse)
        if p.seq < last[0] or (p.seq == last[0] and (p.part <= last[1]
                                                     or last[1] == last[2] - 1)):
            self.counts.duplicates += 1
        elif p.slice_seconds != self.slice_seconds or (
                p.baseline and self.fingerprint is not None and p.baseline != self.fingerprint):
            self.counts.mismatched += 1
            self.last_seq[p.source] = ident
        elif self.last_closed is not None and p.slice <= self.last_closed:
            self.counts.late += 1
            self.counts.late_rows += p.rows
            self.counts.by_source_late[p.source] = (
                self.counts.by_source_late.get(p.source, 0) + 1)
            self.last_seq[p.source] = ident
        else:
            self.open.setdefault(p.slice, []).append(p)
            self.counts.merged += 1
            self.last_seq[p.source] = ident
        return self.close(now)

    def close(self, now: float) -> list[tuple[int, list[Partial]]]:
        """Close what the clock's active sources allow at ``now``."""
        horizon = self.clock.horizon(now, self.local)
        if horizon == -math.inf:
            return []
        through = (max(self.open, default=-1) if horizon == math.inf
                   else math.floor(horizon / self.slice_seconds) - 1)
        out = []
        for sid in sorted(k for k in self.open if k <= through):
            out.append((sid, self.open.pop(sid)))
            self.last_closed = max(sid, self.last_closed if self.last_closed is not None
                                   else sid)
        return out

    def to_state(self) -> dict[str, Any]:
        return {"open": {str(k): [msgspec.to_builtins(p) for p in v]
                         for k, v in self.open.items()},
                "last_seq": {k: list(v) for k, v in self.last_seq.items()},
                "last_closed": self.last_closed,
                "local": {k: v if math.isfinite(v) else None for k, v in self.local.items()},
                "fingerprint": self.fingerprint, "counts": msgspec.to_builtins(self.counts)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], clock: SourceClock,
                   slice_seconds: float) -> SliceMerger:
        m = cls(clock, slice_seconds=slice_seconds, fingerprint=state["fingerprint"])
        m.open = {int(k): [msgspec.convert(p, Partial) for p in v]
                  for k, v in state["open"].items()}
        m.last_seq = {k: (int(v[0]), int(v[1]), int(v[2]))
                      for k, v in state["last_seq"].items()}
        m.last_closed = state["last_closed"]
        m.local = {k: -math.inf if v is None else v for k, v in state["local"].items()}
        m.counts = msgspec.convert(state["counts"], MergeCounts)
        return m


# -- merging a closed slice -------------------------------------------------------------------
def merge_data(baseline: Baseline, partials: Sequence[Partial], *, reservoir_size: int = 1024,
               seed: int = 0, task: str = "classification") -> Summary:
    """The summary of a closed slice over ``baseline``'s bins: binned partials merged, record
    partials binned (a source that had no baseline yet). Order-free: the parts are merged in
    a canonical order (by source and sequence)."""
    out = baseline.new_summary(reservoir_size=reservoir_size, seed=seed, task=task)
    for p in sorted(partials, key=lambda q: (q.source, q.seq)):
        if p.summary is not None:
            part = Summary.from_state(baseline.specs, p.summary, baseline.prediction)
        else:
            part = baseline.new_summary(reservoir_size=reservoir_size, seed=seed, task=task)
            rec = p.records or {"ts": [], "columns": {}}
            if rec["ts"]:
                part.update_columns(typed_columns(baseline, rec["columns"]), n_rows=len(rec["ts"]),
                                    ts=np.asarray(rec["ts"], dtype=np.float64))
        out = out.merge(part)
    return out


def merge_records(partials: Sequence[Partial]) -> tuple[list[float], dict[str, list[Any]]]:
    """The records of a closed warm-up slice, in a canonical order (by event time, then by
    value), so that a baseline fitted from them does not depend on how they were spread over
    sources: (event times, columns)."""
    rows: list[tuple[float, tuple[Any, ...]]] = []
    names = sorted({n for p in partials if p.records for n in p.records["columns"]})
    for p in partials:
        if not p.records:
            continue
        cols = p.records["columns"]
        for i, t in enumerate(p.records["ts"]):
            rows.append((float(t), tuple(cols[n][i] if n in cols else None for n in names)))
    rows.sort(key=lambda r: (r[0], repr(r[1])))
    return [t for t, _ in rows], {n: [r[1][j] for r in rows] for j, n in enumerate(names)}


def merge_outcomes(partials: Sequence[Partial], task: str) -> tuple[OutcomeSummary, int,
                                                                     float, np.ndarray | None]:
    """The outcomes of a closed slice: (summary, errors counted, their sum, regression error
    histogram)."""
    summary = OutcomeSummary("regression" if task == "regression" else "classification")
    n, total, hist = 0, 0.0, None
    for p in sorted(partials, key=lambda q: (q.source, q.seq)):
        s = p.summary or {}
        if not s:
            continue
        summary = summary.merge(OutcomeSummary.from_state(s["outcomes"]))
        n += int(s["n"])
        total += float(s["errors"])
        if s.get("hist") is not None:
            h = np.asarray(s["hist"], dtype=np.int64)
            hist = h if hist is None else hist + h
    return summary, n, total, hist


def merge_pairs(partials: Sequence[Partial]) -> PairCounts | None:
    """The shadow pairs of a closed outcome slice (None: none)."""
    out = None
    for p in sorted(partials, key=lambda q: (q.source, q.seq)):
        s = (p.summary or {}).get("pairs")
        if s is not None:
            c = PairCounts.from_state(s)
            out = c if out is None else out.merge(c)
    return out


def replay_errors(n: int, errors: float, hist: np.ndarray | None) -> np.ndarray:
    """A slice's outcomes as an error sequence for a streaming detector, from its counts
    alone — so the detector's input does not depend on the order outcomes reached the merge.
    A classifier's ``errors`` mistakes are spread evenly over its ``n`` outcomes; a
    regressor's errors are its histogram's bin centres (geometric), spread the same way.

    >>> replay_errors(5, 2.0, None).tolist()
    [0.0, 0.0, 1.0, 0.0, 1.0]
    """
    if n <= 0:
        return np.empty(0)
    if hist is None:
        k = int(round(errors))
        # Bresenham: position i is a mistake when floor((i+1) k / n) > floor(i k / n)
        i = np.arange(n)
        return (((i + 1) * k) // n > (i * k) // n).astype(np.float64)
    centres = np.concatenate([[0.0], np.sqrt(ERROR_EDGES[1:-1] * ERROR_EDGES[2:])])
    values = np.repeat(centres, hist)
    # interleave bins: order by each value's rank within its bin, spread over the slice
    within = np.concatenate([np.arange(c) / max(c, 1) for c in hist])
    return values[np.argsort(within, kind="stable")]

