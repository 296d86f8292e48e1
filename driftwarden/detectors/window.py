"""Sliding and tumbling windows as rings of sub-window summaries.

A :class:`SlidingWindow` cuts the stream into slices — by **event time** (``slice_seconds``,
e.g. 12 × 5 s) or by **count** (``slice_rows``) — and keeps the last ``slices`` closed slices.
Sliding is O(bins): a slice that closes is merged into the window total, the slice that falls
out of the ring is subtracted. The parts of a summary that cannot be subtracted (reservoir,
min / max, unseen top-k) are rebuilt from the live slices when :meth:`SlidingWindow.summary`
is read.

Event time, not the wall clock: the **watermark** is the largest event time seen minus
``allowed_lateness``. A slice closes when the watermark passes its end; an event older than
the watermark (or whose slice has already closed or left the ring) is *late*: it is counted
in ``late_rows`` and returned to the caller, never merged silently. Replaying a day of logs
therefore gives the same windows as living through it.

:func:`tumbling_window` is a ring of one slice.

>>> import numpy as np
>>> from driftwarden.detectors.summary import NumericSpec, Summary
>>> spec = {"x": NumericSpec.fit("x", np.arange(100.0))}
>>> w = SlidingWindow(lambda: Summary.empty(spec), slices=3, slice_seconds=5.0)
>>> for t in range(0, 30, 1):
...     closed = w.add({"x": np.array([float(t)])}, ts=np.array([float(t)])).closed
...     if closed:
...         print(t, closed, w.summary().n_rows)
5 [0] 5
10 [1] 10
15 [2] 15
20 [3] 15
25 [4] 15
>>> w.add({"x": np.array([1.0])}, ts=np.array([3.0])).late, w.late_rows
(1, 1)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from driftwarden.detectors.summary import NumericSummary, Reservoir, Summary, TopK
from driftwarden.errors import ValidationError


@dataclass(frozen=True)
class AddResult:
    """What one :meth:`SlidingWindow.add` did: rows accepted, rows late (not merged), and the
    ids of the slices that closed. To evaluate the window once per closed slice, pass
    ``on_close``: after the call the window holds only the state after the last close."""

    accepted: int
    late: int
    closed: list[int] = field(default_factory=list)


def take_rows(columns: Mapping[str, Any], index: np.ndarray) -> dict[str, Any]:
    """The rows ``index`` (a boolean mask or positions) of every column."""
    out = {}
    for name, col in columns.items():
        arr = col if isinstance(col, np.ndarray) else np.asarray(col, dtype=object)
        out[name] = arr[index]
    return out


def late_rows(t: np.ndarray, max_ts: float, allowed_lateness: float, last_closed: int | None,
              width: float) -> np.ndarray | None:
    """Which rows of a batch with event times ``t`` are late (None: none), each judged as if
    the rows came one at a time: not finite, older than the watermark of the rows before it
    (the newest event time so far, ``max_ts`` before the batch, minus ``allowed_lateness``),
    or in a slice of ``width`` seconds already closed (ids <= ``last_closed``).

    >>> late_rows(np.array([10.0, 3.0, 9.5]), 8.0, 1.0, None, 5.0).tolist()
    [False, True, False]
    """
    lo, hi = float(t.min()), float(t.max())  # NaN if any row is NaN
    first_open = -math.inf if last_closed is None else last_closed + 1
    if (math.isfinite(lo) and math.isfinite(hi) and lo >= first_open * width
            and (lo >= max(max_ts, hi) - allowed_lateness
                 or (t[0] >= max_ts - allowed_lateness and bool(np.all(t[1:] >= t[:-1]))))):
        return None  # the common case: in order, or disordered within the lateness
    finite = np.isfinite(t)
    seen = np.maximum.accumulate(np.where(finite, t, -math.inf))
    before = np.empty_like(seen)
    before[0] = max_ts
    np.maximum(seen[:-1], max_ts, out=before[1:])
    late = ~finite | (t < before - allowed_lateness)
    if last_closed is not None:
        late |= np.floor(np.where(finite, t, 0.0) / width) <= last_closed
    return late


class SlidingWindow:
    """A ring of ``slices`` sub-window summaries; see the module docstring.

    ``factory`` returns an empty :class:`Summary` (e.g. ``baseline.new_summary``). Exactly one
    of ``slice_seconds`` (event time) and ``slice_rows`` (count) must be given.
    """

    def __init__(self, factory: Callable[[], Summary], *, slices: int = 12,
                 slice_seconds: float | None = None, slice_rows: int | None = None,
                 allowed_lateness: float = 0.0) -> None:
        if slices < 1:
            raise ValidationError(f"slices must be >= 1, got {slices}")
        if (slice_seconds is None) == (slice_rows is None):
            raise ValidationError("give exactly one of slice_seconds and slice_rows")
        if slice_seconds is not None and not slice_seconds > 0:
            raise ValidationError(f"slice_seconds must be > 0, got {slice_seconds}")
        if slice_rows is not None and slice_rows < 1:
            raise ValidationError(f"slice_rows must be >= 1, got {slice_rows}")
        if allowed_lateness < 0:
            raise ValidationError(f"allowed_lateness must be >= 0, got {allowed_lateness}")
        self.factory = factory
        self.slices = int(slices)
        self.slice_seconds = slice_seconds
        self.slice_rows = slice_rows
        self.allowed_lateness = float(allowed_lateness)
        self._reset()

    def _reset(self) -> None:
        self._open: dict[int, Summary] = {}     # slices still receiving events
        self._closed: dict[int, Summary] = {}   # closed slices inside the ring, oldest first
        self._total: Summary | None = None      # merge of the closed slices (counts exact)
        self.max_ts = -math.inf
        self.rows_seen = 0                      # count mode: rows placed so far
        self.late_rows = 0
        self.last_closed: int | None = None     # id of the newest slice closed so far

    def __repr__(self) -> str:
        unit = (f"slice_seconds={self.slice_seconds}" if self.slice_seconds is not None
                else f"slice_rows={self.slice_rows}")
        return f"SlidingWindow(slices={self.slices}, {unit}, closed={len(self._closed)})"

    @property
    def watermark(self) -> float:
        return self.max_ts - self.allowed_lateness

    @property
    def has_rows(self) -> bool:
        """Whether any slice, open or in the ring, holds rows (what :meth:`advance` acts on)."""
        return bool(self._open or self._closed)

    @property
    def fill_ratio(self) -> float:
        """Closed slices in the ring over the ring's size (1.0 once the window is full)."""
        return len(self._closed) / self.slices

    # -- adding -----------------------------------------------------------------------------
    def add(self, columns: Mapping[str, Any], ts: np.ndarray | None = None,
            n_rows: int | None = None, *,
            on_close: Callable[[int], None] | None = None) -> AddResult:
        """Add a batch of rows (columns); ``ts`` (seconds) is required in event-time mode.

        A batch behaves exactly like its rows added one at a time: a row is late when it is
        older than the watermark of the rows before it, and ``on_close(slice_id)`` is called
        right after each slice closes, with the window holding what it held at that moment —
        so a batch that spans several slices is evaluated once per slice on the right data,
        not on what the whole batch left behind.
        """
        if n_rows is None:
            n_rows = len(next(iter(columns.values()))) if columns else 0
        if self.slice_rows is not None:
            return self._add_by_count(columns, n_rows, ts, on_close)
        if ts is None:
            raise ValidationError("an event-time window needs ts for every row")
        width = self.slice_seconds
        assert width is not None
        t = np.asarray(ts, dtype=np.float64)
        if len(t) != n_rows:
            raise ValidationError("ts must have one value per row")
        if not n_rows:
            return AddResult(0, 0, [])
        late = self._late_rows(t, width)
        n_late = 0 if late is None else int(late.sum())
        self.late_rows += n_late
        if n_late < n_rows:
            # a row that is not late lies in a slice the watermark has not passed before it,
            # and no row after it closes that slice: placing every such row first and closing
            # afterwards gives each closing slice exactly the rows it would have had
            if late is not None and n_late:
                keep = ~late
                t, columns = t[keep], take_rows(columns, keep)
            ids = np.floor(t / width).astype(np.int64)
            uniq = np.unique(ids)
            for sid in uniq.tolist():
                sel = ids == sid
                part = take_rows(columns, sel) if len(uniq) > 1 else dict(columns)
                s = self._open.get(sid)
                if s is None:
                    s = self._open[sid] = self.factory()
                s.update_columns(part, n_rows=int(sel.sum()), ts=t[sel])
            self.max_ts = max(self.max_ts, float(t.max()))
        closed = (self._close_through(math.floor(self.watermark / width) - 1, on_close)
                  if math.isfinite(self.watermark) else [])
        return AddResult(n_rows - n_late, n_late, closed)

    def _late_rows(self, t: np.ndarray, width: float) -> np.ndarray | None:
        return late_rows(t, self.max_ts, self.allowed_lateness, self.last_closed, width)

    def _add_by_count(self, columns: Mapping[str, Any], n_rows: int, ts: np.ndarray | None,
                      on_close: Callable[[int], None] | None) -> AddResult:
        assert self.slice_rows is not None
        closed: list[int] = []
        start = 0
        while start < n_rows:
            sid = self.rows_seen // self.slice_rows
            room = self.slice_rows - self.rows_seen % self.slice_rows
            stop = min(n_rows, start + room)
            idx = np.arange(start, stop)
            part = take_rows(columns, idx) if (start, stop) != (0, n_rows) else dict(columns)
            s = self._open.get(sid)
            if s is None:
                s = self._open[sid] = self.factory()
            s.update_columns(part, n_rows=stop - start,
                             ts=None if ts is None else np.asarray(ts)[start:stop])
            self.rows_seen += stop - start
            start = stop
            if self.rows_seen % self.slice_rows == 0:
                closed += self._close_through(sid, on_close)
        return AddResult(n_rows, 0, closed)

    def add_slice(self, sid: int, summary: Summary, *,
                  on_close: Callable[[int], None] | None = None) -> list[int]:
        """Add a slice summarised elsewhere and complete (a merge of partial summaries, see
        :mod:`driftwarden.partials`), closing it and every slice before it. A slice already
        closed is refused (the merge stage counts such partials as late before this).

        >>> import numpy as np
        >>> from driftwarden.detectors.summary import NumericSpec, Summary
        >>> spec = {"x": NumericSpec.fit("x", [0.0, 9.0])}
        >>> w = SlidingWindow(lambda: Summary.empty(spec), slices=2, slice_seconds=5.0)
        >>> s = Summary.empty(spec); s.update_columns({"x": np.ones(4)}, ts=np.full(4, 12.0))
        >>> w.add_slice(2, s), w.summary().n_rows
        ([2], 4)
        """
        if self.slice_seconds is None:
            raise ValidationError("add_slice needs an event-time window")
        if self.last_closed is not None and sid <= self.last_closed:
            raise ValidationError(f"slice {sid} is already closed")
        if summary.n_rows:
            self._open[sid] = summary
            self.max_ts = max(self.max_ts, summary.t_max if math.isfinite(summary.t_max)
                              else (sid + 1) * self.slice_seconds)
        return self._close_through(sid, on_close)

    def advance(self, to: float, *,
                on_close: Callable[[int], None] | None = None) -> list[int]:
        """The sources are idle: event time has reached ``to`` without new rows. Every slice
        that ends at or before ``to`` closes now, without waiting for ``allowed_lateness``
        (rows that come later for a closed slice are late). Returns the slices closed.

        >>> import numpy as np
        >>> from driftwarden.detectors.summary import NumericSpec, Summary
        >>> w = SlidingWindow(lambda: Summary.empty({"x": NumericSpec.fit("x", [0.0, 9.0])}),
        ...                   slices=2, slice_seconds=5.0, allowed_lateness=10.0)
        >>> w.add({"x": np.ones(3)}, ts=np.array([1.0, 2.0, 3.0])).closed
        []
        >>> w.advance(12.0), w.summary().n_rows   # slice 0 and the empty slice 1 end by 12 s
        ([0, 1], 3)
        >>> w.advance(20.0), w.fill_ratio       # slice 0 left the ring: nothing to evaluate
        ([], 0.0)
        """
        if self.slice_seconds is None or not math.isfinite(to):
            return []
        return self._close_through(math.floor(to / self.slice_seconds) - 1, on_close)

    def _close_through(self, last: int,
                       on_close: Callable[[int], None] | None = None) -> list[int]:
        """Close every slice with id <= ``last``, oldest first. After each one the ring slides
        (what left it is dropped) and, while the ring holds data, ``on_close(slice_id)`` is
        called — for a slice without rows too, as a hopping window is evaluated at every hop:
        so the verdicts at each slice boundary depend on the rows alone, not on where a gap in
        the traffic fell. Once the ring is empty, slice ids jump to the next one with rows."""
        if self.last_closed is not None and last <= self.last_closed:
            return []
        pending = sorted(sid for sid in self._open if sid <= last)
        if self.last_closed is None and not pending:
            return []
        sid = pending[0] if self.last_closed is None else self.last_closed + 1
        closed = []
        while sid <= last:
            s = self._open.pop(sid, None)
            if s is not None:
                self._closed[sid] = s
                # counts and moments only: reservoirs and top-k are rebuilt by summary()
                self._total = (s.copy() if self._total is None
                               else self._total.merge(s, samples=False))
            self._slide(sid)
            self.last_closed = sid
            if self._closed:
                closed.append(sid)
                if on_close is not None:
                    on_close(sid)
                sid += 1
                continue
            later = [k for k in pending if k > sid]  # an empty ring: jump to the next rows
            if not later:
                break
            sid = later[0]
        self.last_closed = last
        self._slide(last)
        return closed

    def _slide(self, newest: int) -> None:
        """Drop the closed slices that fall out of a ring ending at slice ``newest``."""
        for sid in [k for k in self._closed if k <= newest - self.slices]:
            gone = self._closed.pop(sid)
            assert self._total is not None
            self._total = self._total.subtract(gone, samples=False)

    # -- reading ----------------------------------------------------------------------------
    def summary(self) -> Summary:
        """The summary of the closed slices in the ring (empty before the first close)."""
        if self._total is None or not self._closed:
            return self.factory()
        parts = list(self._closed.values())
        out = self._total.copy()
        rebuild_unsubtractable(out, parts)
        return out

    def recompute(self) -> Summary:
        """The same summary by merging the live slices from scratch (for checks and tests)."""
        out = self.factory()
        for s in self._closed.values():
            out = out.merge(s)
        return out

    # -- state -------------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        return {
            "slices": self.slices, "slice_seconds": self.slice_seconds,
            "slice_rows": self.slice_rows, "allowed_lateness": self.allowed_lateness,
            "max_ts": self.max_ts if math.isfinite(self.max_ts) else None,
            "rows_seen": self.rows_seen, "late_rows": self.late_rows,
            "last_closed": self.last_closed,
            "open": {str(k): v.to_state() for k, v in self._open.items()},
            "closed": {str(k): v.to_state() for k, v in self._closed.items()},
        }

    @classmethod
    def from_state(cls, factory: Callable[[], Summary], state: Mapping[str, Any],
                   loader: Callable[[Mapping[str, Any]], Summary]) -> SlidingWindow:
        """Restore a window; ``loader`` turns a slice's state back into a Summary
        (e.g. ``lambda s: Summary.from_state(baseline.specs, s, baseline.prediction)``)."""
        w = cls(factory, slices=state["slices"], slice_seconds=state["slice_seconds"],
                slice_rows=state["slice_rows"], allowed_lateness=state["allowed_lateness"])
        w.max_ts = -math.inf if state["max_ts"] is None else state["max_ts"]
        w.rows_seen, w.late_rows = state["rows_seen"], state["late_rows"]
        w.last_closed = state["last_closed"]
        w._open = {int(k): loader(v) for k, v in state["open"].items()}
        w._closed = {int(k): loader(v) for k, v in sorted(state["closed"].items(),
                                                           key=lambda kv: int(kv[0]))}
        w._total = w.recompute() if w._closed else None
        return w


def rebuild_unsubtractable(total: Summary, parts: list[Summary]) -> None:
    """Replace min / max, reservoirs, unseen top-k and time span of ``total`` by those merged
    from ``parts`` (what ``subtract`` cannot undo)."""
    for name, fs in total.features.items():
        pieces = [p.features[name] for p in parts]
        _rebuild_feature(fs, pieces)
    if total.prediction is not None:
        _rebuild_feature(total.prediction, [p.prediction for p in parts if p.prediction])
    total.t_min = min(p.t_min for p in parts)
    total.t_max = max(p.t_max for p in parts)


def _rebuild_feature(fs: Any, pieces: list[Any]) -> None:
    if isinstance(fs, NumericSummary):
        fs.min = min(p.min for p in pieces)
        fs.max = max(p.max for p in pieces)
        fs.reservoir = Reservoir.merge_all([p.reservoir for p in pieces])
    else:
        top = TopK(fs.unseen_top.k)
        for p in pieces:
            top = top.merge(p.unseen_top)
        fs.unseen_top = top


def tumbling_window(factory: Callable[[], Summary], *, size_seconds: float | None = None,
                    size_rows: int | None = None, allowed_lateness: float = 0.0
                    ) -> SlidingWindow:
    """A tumbling window: non-overlapping windows, each evaluated once when it closes.

    >>> import numpy as np
    >>> from driftwarden.detectors.summary import NumericSpec, Summary
    >>> w = tumbling_window(lambda: Summary.empty({"x": NumericSpec.fit("x", [0.0, 1.0])}),
    ...                     size_rows=4)
    >>> [w.add({"x": np.zeros(3)}).closed for _ in range(3)]
    [[], [0], [1]]
    """
    return SlidingWindow(factory, slices=1, slice_seconds=size_seconds, slice_rows=size_rows,
                         allowed_lateness=allowed_lateness)
