"""Stage 1's side of the partial-summary path: per source, an event time and one builder per
model version, and the messages that carry them to the merge stage.

A *source* is one input partition (``driftwarden.predictions/3``, ``driftwarden.joins/0``):
Kafka keeps its order, so what a source publishes — partials numbered per model version,
:class:`~driftwarden.partials.Watermark` messages — is the same on every replay of it.
:class:`Sources` holds, for one kind (``data`` or ``outcomes``), the sources of one shard:

* :meth:`admit` judges a message's rows against its source's event time (one at a time,
  whatever the model), :meth:`add` gives the rows to the model version's builder;
* :meth:`publish` returns the partials the watermarks let out, each to the summaries
  partition of its model (:func:`summary_partition`), then the sources' watermarks to every
  summaries partition (only when one crossed a slice boundary, or became idle or busy again);
* :meth:`idle` flushes the sources without records for ``after`` seconds (the caller's clock)
  and announces them idle, so the merge stage stops waiting for them.

>>> import numpy as np
>>> s = Sources("data", slice_seconds=1.0, allowed_lateness=0.0, n_partitions=2,
...             topic="summaries", new_builder=lambda src, m, v, t: PartialBuilder(
...                 None, model=m, version=v, source=src, slice_seconds=1.0, time=t))
>>> ok = s.admit("p/0", np.array([0.5, 1.5]))
>>> s.add("p/0", "m", "1", {"x": np.array([1.0, 2.0])}, np.array([0.5, 1.5]))
>>> [(o.partition, decode(o.value).__class__.__name__) for o in s.publish(now=0.0)]
[(0, 'Partial'), (0, 'Watermark'), (1, 'Watermark')]
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from driftwarden.detectors.baseline import Baseline
from driftwarden.partials import (
    EventTime,
    OutcomeBuilder,
    PartialBuilder,
    Watermark,
    decode,
    encode,
)
from driftwarden.stream.output import Output

__all__ = ["Sources", "summary_partition", "PartialBuilder", "OutcomeBuilder", "decode"]

Builder = PartialBuilder | OutcomeBuilder
log = logging.getLogger("driftwarden.stream")


def summary_partition(model: str, n_partitions: int) -> int:
    """The summaries partition of ``model``: every partial of one model goes to one partition,
    so one stage-2 shard decides for it (CRC-32 of its UTF-8 name, which any client can
    compute — do not leave it to a client's own key partitioner, they differ).

    >>> [summary_partition(m, 4) for m in ("fraud", "churn")]
    [2, 0]
    """
    return zlib.crc32(model.encode("utf-8", "surrogatepass")) % max(1, n_partitions)


class Sources:
    """The sources of one kind in one shard; see the module docstring."""

    def __init__(self, kind: str, *, slice_seconds: float, allowed_lateness: float,
                 n_partitions: int, topic: str,
                 new_builder: Callable[[str, str, str, EventTime], Builder],
                 mirror: str | None = None) -> None:
        self.kind = kind
        # a second topic that gets every watermark too (data: the joins topic, whose join
        # waits for the prediction partitions before it gives up on a label's prediction)
        self.mirror = mirror
        self.slice_seconds = float(slice_seconds)
        self.allowed_lateness = float(allowed_lateness)
        self.n_partitions = n_partitions
        self.topic = topic
        self.new_builder = new_builder
        self.times: dict[str, EventTime] = {}
        self.builders: dict[tuple[str, str, str], Builder] = {}  # (source, model, version)
        self.marks: dict[str, int] = {}      # source -> slice of the last watermark sent
        self.idle_sources: set[str] = set()  # announced idle, nothing since
        self.last_records: dict[str, float] = {}  # source -> the caller's clock at its rows
        self.touched: set[str] = set()

    def time(self, source: str) -> EventTime:
        t = self.times.get(source)
        if t is None:
            t = self.times[source] = EventTime(self.allowed_lateness)
        return t

    def admit(self, source: str, ts: np.ndarray) -> np.ndarray:
        """Which rows of one message (event times ``ts``, in order) are on time."""
        self.touched.add(source)
        return self.time(source).admit(ts)

    def advance(self, source: str, watermark: float, now: float, idle: bool = False
                ) -> list[Output]:
        """Event time of ``source`` vouched for from elsewhere (the join's label sources);
        ``idle``: every one of them has said so — the source's builders are flushed and it is
        announced idle. Returns the partials and watermark this lets out."""
        self.time(source).advance(watermark)
        self.touched.add(source)
        if not idle:
            return self.publish(now)
        self.last_records[source] = -math.inf
        return self.idle(now, 0.0, [source])

    def late_rows(self) -> int:
        return (sum(t.late_rows for t in self.times.values())
                + sum(b.late_rows for b in self.builders.values()))

    def builder(self, source: str, model: str, version: str) -> Builder:
        key = (source, model, version)
        b = self.builders.get(key)
        if b is None:
            b = self.builders[key] = self.new_builder(source, model, version,
                                                      self.time(source))
        return b

    def add(self, source: str, model: str, version: str, columns: Mapping[str, Any],
            ts: np.ndarray) -> None:
        """Admitted rows of one model version (data: columns; see :meth:`add_outcomes`)."""
        b = self.builder(source, model, version)
        assert isinstance(b, PartialBuilder)
        b.add(columns, ts)

    def add_outcomes(self, source: str, model: str, version: str, predictions: list[Any],
                     labels: list[Any], ts: list[float]) -> None:
        b = self.builder(source, model, version)
        assert isinstance(b, OutcomeBuilder)
        b.add(predictions, labels, ts)

    def add_pairs(self, source: str, model: str, version: str, baseline: list[Any],
                  candidate: list[Any], ts: list[float]) -> None:
        """Shadow mode: ``version``'s predictions paired with its baseline's (outcomes)."""
        b = self.builder(source, model, version)
        assert isinstance(b, OutcomeBuilder)
        b.add_pairs(baseline, candidate, ts)

    def set_baseline(self, model: str, version: str, baseline: Baseline) -> None:
        """Data partials of ``model`` ``version`` are binned from now on (every source)."""
        for (_, m, v), b in self.builders.items():
            if m == model and v == version and isinstance(b, PartialBuilder) and (
                    b.baseline is None):
                b.set_baseline(baseline)

    def publish(self, now: float) -> list[Output]:
        """The partials the sources' watermarks let out, then their watermarks."""
        out: list[Output] = []
        for (source, _, _), b in self.builders.items():
            if source in self.touched:
                out += self._partials(b.publish())
        for source in sorted(self.touched):
            self.last_records[source] = now
            out += self._watermark(source, idle=False)
        self.touched.clear()
        return out

    def idle(self, now: float, after: float, sources: Iterable[str] | None = None
             ) -> list[Output]:
        """Flush the sources (of ``sources``, or all) without rows for ``after`` seconds and
        announce them idle; a source never heard of counts from its first call here."""
        out: list[Output] = []
        wanted = None if sources is None else set(sources)
        for source in sorted(set(self.times) | (wanted or set())):
            if wanted is not None and source not in wanted:
                continue
            quiet = now - self.last_records.setdefault(source, now)
            if quiet < after or source in self.idle_sources:
                continue
            self.touched.discard(source)
            if math.isfinite(self.time(source).max_ts) and math.isfinite(quiet) and after > 0:
                log.info("%s: no records for %.0f s: closing its open slices (an idle source "
                         "no longer holds the merge back)", source, quiet)
            for (src, _, _), b in self.builders.items():
                if src == source:
                    out += self._partials(b.flush())
            out += self._watermark(source, idle=True)
        return out

    def _partials(self, partials: list[Any]) -> list[Output]:
        return [Output(self.topic, p.model.encode("utf-8", "surrogatepass"),
                       encode(p, binary=True),
                       partition=summary_partition(p.model, self.n_partitions))
                for p in partials]

    def _watermark(self, source: str, idle: bool) -> list[Output]:
        wm = self.time(source).watermark
        mark = math.floor(wm / self.slice_seconds) if math.isfinite(wm) else -(1 << 62)
        was_idle = source in self.idle_sources
        if not idle and not was_idle and mark <= self.marks.get(source, -(1 << 62)):
            return []
        self.marks[source] = mark
        if idle:
            self.idle_sources.add(source)
        else:
            self.idle_sources.discard(source)
        value = encode(Watermark(kind=self.kind, source=source,  # type: ignore[arg-type]
                                 watermark=wm if math.isfinite(wm) else -math.inf,
                                 idle=idle), binary=True)
        topics = [self.topic] if self.mirror is None else [self.topic, self.mirror]
        return [Output(t, None, value, partition=q) for t in topics
                for q in range(self.n_partitions)]

    def to_state(self) -> dict[str, Any]:
        return {"times": {k: t.to_state() for k, t in self.times.items()},
                "builders": [[s, m, v, b.to_state()] for (s, m, v), b in self.builders.items()],
                "marks": dict(self.marks), "idle": sorted(self.idle_sources)}

    def load(self, state: Mapping[str, Any],
             restore_builder: Callable[[str, str, str, EventTime, Any], Builder]) -> None:
        self.times = {}
        for k, t in state["times"].items():
            self.time(k).load(t)
        self.builders = {(s, m, v): restore_builder(s, m, v, self.time(s), b)
                         for s, m, v, b in state["builders"]}
        self.marks = {k: int(v) for k, v in state["marks"].items()}
        self.idle_sources = set(state["idle"])
