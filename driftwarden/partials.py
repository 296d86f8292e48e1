"""Partial summaries: what a source publishes and a model's merge stage adds up (DESIGN 3b).

A **partial** is the summary of the records one *source* — a source partition (stage 1), an
edge device, a batch job — saw of one (model, version) in one event-time slice, over one
baseline's bins. Because summaries merge by addition, the merge of every source's partial of a
slice is the summary of all the slice's records, whatever the number of sources, how records
were spread over them, and the order the partials arrive in. This module is the format and the
two pure halves of that path; the stream wiring (the summaries topic, stage-2 agents) builds on
it.

* :class:`Partial` — the versioned message (``format_version`` 1): JSON, or msgpack with the
  same fields (:func:`encode` / :func:`decode`). Identity: (source, slice, seq); a replay
  re-publishes the same identity and is recognised.
* :class:`PartialBuilder` — a source's side: records in, one partial per slice once the
  source's watermark (newest event time − allowed lateness) has passed it; :meth:`flush` at the
  end of a file or before a device goes offline.
* :class:`SliceMerger` — a model's side: partials in, merged slices out, oldest first. A slice
  closes when every *active* source's watermark has passed it; a source silent for
  ``idle_seconds`` (the caller's clock) stops holding the others back. A source counts from
  its first partial, or from :meth:`SliceMerger.expect` (stage 2 expects every source
  partition; a slice must not close before a partition that has not spoken yet had its say).
  A partial for a slice
  already closed is **late**: counted (partials and rows), never merged into a closed slice and
  never dropped silently; a replayed identity is a **duplicate**: counted, not merged twice; a
  partial over other bins (another baseline) is **mismatched**: counted, not merged.

>>> import numpy as np
>>> from driftwarden.detectors.baseline import Baseline
>>> base = Baseline.fit({"x": np.linspace(0, 1, 500)}, bins=4)
>>> a = PartialBuilder(base, model="m", version="1", source="dev-a", slice_seconds=10.0)
>>> b = PartialBuilder(base, model="m", version="1", source="dev-b", slice_seconds=10.0)
>>> merger = SliceMerger(base, slice_seconds=10.0, idle_seconds=60.0)
>>> for name in ("dev-a", "dev-b"):
...     merger.expect(name, now=0.0)
>>> sent = a.add({"x": np.array([0.1, 0.2])}, ts=np.array([1.0, 2.0])) + a.flush()
>>> sent += b.add({"x": np.array([0.9])}, ts=np.array([3.0])) + b.flush()
>>> [p.rows for p in sent], decode(encode(sent[0], binary=True)) == sent[0]
([2, 1], True)
>>> merger.expect("dev-c", now=0.0)    # a third device, silent so far
>>> [c for p in sent for c in merger.add(p, now=0.0)]   # slice 0 waits for dev-c
[]
>>> [(sid, s.n_rows) for sid, s in merger.close_idle(now=61.0)]   # dev-c idle: it closes
[(0, 3)]
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from driftwarden.detectors.baseline import Baseline
from driftwarden.detectors.summary import Summary
from driftwarden.detectors.window import take_rows
from driftwarden.errors import ValidationError

FORMAT_VERSION = 1


class Partial(msgspec.Struct, frozen=True, kw_only=True):
    """One source's summary of one slice of one model version (see the module docstring)."""

    format_version: int = FORMAT_VERSION
    model: str
    version: str
    source: str          # "topic/partition", a device id, "batch:<job>"
    slice: int           # floor(event time / slice_seconds)
    slice_seconds: float
    seq: int             # per source, increasing; a replay repeats (source, slice, seq)
    watermark: float     # event time the source vouches for with this partial (see _publish)
    baseline: str        # fingerprint of the bins the summary follows (see fingerprint)
    rows: int
    summary: dict[str, Any]  # driftwarden.detectors.summary.Summary.to_state()


_json = msgspec.json.Decoder(Partial)
_msgpack = msgspec.msgpack.Decoder(Partial)


def encode(p: Partial, *, binary: bool = False) -> bytes:
    """The message: JSON, or msgpack (``binary``) with the same fields."""
    return msgspec.msgpack.encode(p) if binary else msgspec.json.encode(p)


def decode(raw: bytes) -> Partial:
    """A partial from JSON or msgpack (told apart by the first byte: ``{`` is JSON).

    Raises :class:`~driftwarden.errors.ValidationError` with one line when it is neither, or
    a format version this code does not know."""
    try:
        p = _json.decode(raw) if raw[:1] == b"{" else _msgpack.decode(raw)
    except msgspec.MsgspecError as exc:
        raise ValidationError(f"not a partial summary: {exc}") from None
    if p.format_version != FORMAT_VERSION:
        raise ValidationError(f"partial summary format {p.format_version} is not supported "
                              f"(this driftwarden reads {FORMAT_VERSION})")
    return p


def fingerprint(baseline: Baseline) -> str:
    """A short hash of the baseline's bins: partials are only merged over the same ones."""
    state = baseline.to_state()
    raw = msgspec.json.encode({"specs": state["specs"], "prediction": state["prediction"]},
                              order="sorted")
    return hashlib.sha256(raw).hexdigest()[:16]


class PartialBuilder:
    """A source's aggregation of one (model, version): tumbling event-time slices over the
    baseline's bins, each published as a :class:`Partial` when the watermark passes it."""

    def __init__(self, baseline: Baseline, *, model: str, version: str, source: str,
                 slice_seconds: float, allowed_lateness: float = 0.0,
                 reservoir_size: int = 1024, seed: int = 0, seq: int = 0) -> None:
        if not slice_seconds > 0:
            raise ValidationError(f"slice_seconds must be > 0, got {slice_seconds}")
        self.baseline = baseline
        self.model, self.version, self.source = model, version, source
        self.slice_seconds = float(slice_seconds)
        self.allowed_lateness = float(allowed_lateness)
        self.reservoir_size, self.seed = reservoir_size, seed
        self.seq = seq  # the next partial's sequence number
        self.fingerprint = fingerprint(baseline)
        self.open: dict[int, Summary] = {}
        self.max_ts = -math.inf
        self.published_through: int | None = None  # newest slice published
        self.late_rows = 0

    @property
    def watermark(self) -> float:
        return self.max_ts - self.allowed_lateness

    def add(self, columns: dict[str, Any], ts: np.ndarray) -> list[Partial]:
        """Add rows (columns and their event times); returns the partials now complete."""
        t = np.asarray(ts, dtype=np.float64)
        ok = np.isfinite(t)
        if self.published_through is not None:
            ok &= np.floor(np.where(ok, t, 0.0) / self.slice_seconds) > self.published_through
        self.late_rows += int((~ok).sum())
        if ok.any():
            if not ok.all():
                t, columns = t[ok], take_rows(columns, ok)
            ids = np.floor(t / self.slice_seconds).astype(np.int64)
            for sid in np.unique(ids).tolist():
                sel = ids == sid
                s = self.open.get(sid)
                if s is None:
                    s = self.open[sid] = self.baseline.new_summary(
                        reservoir_size=self.reservoir_size, seed=self.seed)
                s.update_columns(take_rows(columns, sel), n_rows=int(sel.sum()), ts=t[sel])
            self.max_ts = max(self.max_ts, float(t.max()))
        return self._publish(math.floor(self.watermark / self.slice_seconds) - 1)

    def flush(self) -> list[Partial]:
        """Publish every open slice (the end of a file; a device about to go offline)."""
        return self._publish(max(self.open, default=-1), final=True)

    def _publish(self, through: int, final: bool = False) -> list[Partial]:
        """Publish the open slices up to ``through``, oldest first. Each partial carries the
        watermark the source can vouch for *at that partial*: up to the start of the next
        slice it publishes (nothing of its in between), and its own watermark at the last
        (after a flush, at least the end of that slice) — so a merger never closes a slice
        whose partial from this source is still to come."""
        sids = sorted(k for k in self.open if k <= through)
        out = []
        for i, sid in enumerate(sids):
            s = self.open.pop(sid)
            if i + 1 < len(sids):
                wm = sids[i + 1] * self.slice_seconds
            else:
                wm = self.watermark if math.isfinite(self.watermark) else 0.0
                if final:
                    wm = max(wm, (sid + 1) * self.slice_seconds)
            out.append(Partial(model=self.model, version=self.version, source=self.source,
                               slice=sid, slice_seconds=self.slice_seconds, seq=self.seq,
                               watermark=wm, baseline=self.fingerprint, rows=s.n_rows,
                               summary=s.to_state()))
            self.seq += 1
            self.published_through = max(sid, self.published_through or sid)
        return out


@dataclass
class _Source:
    watermark: float = -math.inf
    last_seen: float = -math.inf


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
    """A model version's merge of partials into closed slices; see the module docstring.
    Each source's partials are expected in the order it published them (the summaries topic
    is keyed by model, so they share a partition); sources interleave freely."""

    def __init__(self, baseline: Baseline, *, slice_seconds: float, idle_seconds: float,
                 reservoir_size: int = 1024, seed: int = 0, remember: int = 64) -> None:
        self.baseline = baseline
        self.slice_seconds = float(slice_seconds)
        self.idle_seconds = float(idle_seconds)
        self.reservoir_size, self.seed = reservoir_size, seed
        self.fingerprint = fingerprint(baseline)
        self.remember = remember  # closed slices whose partial identities are kept
        self.sources: dict[str, _Source] = {}
        self.open: dict[int, Summary] = {}
        self.seen: dict[int, set[tuple[str, int]]] = {}  # slice -> identities merged
        self.last_closed: int | None = None
        self.counts = MergeCounts()

    def add(self, p: Partial, now: float) -> list[tuple[int, Summary]]:
        """Take one partial (``now``: the caller's clock, for idleness); returns the slices
        it let close, oldest first, each as the merge of its partials."""
        src = self.sources.setdefault(p.source, _Source())
        src.last_seen = max(src.last_seen, now)
        src.watermark = max(src.watermark, p.watermark)
        ident = (p.source, p.seq)
        if ident in self.seen.get(p.slice, ()):
            self.counts.duplicates += 1
        elif p.baseline != self.fingerprint or p.slice_seconds != self.slice_seconds:
            self.counts.mismatched += 1
        elif self.last_closed is not None and p.slice <= self.last_closed:
            self.counts.late += 1
            self.counts.late_rows += p.rows
            self.counts.by_source_late[p.source] = (
                self.counts.by_source_late.get(p.source, 0) + 1)
        else:
            part = Summary.from_state(self.baseline.specs, p.summary, self.baseline.prediction)
            s = self.open.get(p.slice)
            self.open[p.slice] = part if s is None else s.merge(part)
            self.seen.setdefault(p.slice, set()).add(ident)
            self.counts.merged += 1
        return self._close(now)

    def expect(self, source: str, now: float) -> None:
        """Count ``source`` as active from ``now`` although it has sent nothing yet: it holds
        every slice back until it reports past it or stays silent for ``idle_seconds``."""
        src = self.sources.setdefault(source, _Source())
        src.last_seen = max(src.last_seen, now)

    def close_idle(self, now: float) -> list[tuple[int, Summary]]:
        """Close what the active sources allow at ``now`` (idle sources no longer count)."""
        return self._close(now)

    def _close(self, now: float) -> list[tuple[int, Summary]]:
        active = [s.watermark for s in self.sources.values()
                  if now - s.last_seen < self.idle_seconds]
        if active:
            horizon = min(active)
        elif any(math.isfinite(s.watermark) for s in self.sources.values()):
            # every source idle: all they sent is in
            horizon = max(s.watermark for s in self.sources.values()) + self.slice_seconds
        else:
            return []
        if not math.isfinite(horizon):  # an expected source has not spoken yet
            return []
        through = math.floor(horizon / self.slice_seconds) - 1
        out = []
        for sid in sorted(k for k in self.open if k <= through):
            out.append((sid, self.open.pop(sid)))
            self.last_closed = max(sid, self.last_closed if self.last_closed is not None
                                   else sid)
        if self.last_closed is not None:
            for sid in [k for k in self.seen if k <= self.last_closed - self.remember]:
                del self.seen[sid]
        return out
