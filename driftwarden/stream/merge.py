"""Stage 2 of one model version: merged partial summaries in, drift events out.

A :class:`ModelStage` holds a :class:`~driftwarden.stream.monitor.ModelMonitor` and two
:class:`~driftwarden.partials.SliceMerger` — one for ``data`` partials (event time), one for
``outcomes`` partials (label time) — over :class:`~driftwarden.partials.SourceClock` shared by
every model of the stage-2 shard. Each closed slice goes to the monitor once, in slice order:

* while the monitor has no baseline, the records of the slice (warm-up partials carry them)
  extend its warm-up, in event-time order: the baseline is the first ``warmup`` records by
  event time, whatever their spread over sources and batches, and the rest of the slice
  where it ends is the window's first slice;
* then the merged summary of the slice enters the sliding window (records a source still sent
  raw are binned on the way), which evaluates it;
* outcome slices update the realized performance and feed the error-stream detector with the
  slice's errors rebuilt from its counts (:func:`~driftwarden.partials.replay_errors`).

No Kafka, no wall clock except the ``now`` its callers pass (source idleness). The events are
those a single monitor given all the records would raise slice by slice, whatever the number
of sources.

>>> import numpy as np
>>> from driftwarden.config import Detection
>>> from driftwarden.partials import PartialBuilder, SourceClock
>>> d = Detection(warmup=300, slices=3, slice_seconds=1.0, allowed_lateness=0.0,
...               calibration_sims=50)
>>> stage = ModelStage(ModelMonitor("m", "1", d), SourceClock(60.0), SourceClock(60.0))
>>> src = PartialBuilder(None, model="m", version="1", source="p0", slice_seconds=1.0)
>>> rng = np.random.default_rng(0)
>>> events = []
>>> for t in range(12):
...     x = rng.normal(0.0 if t < 6 else 3.0, 1.0, 200)
...     for p in src.add({"x": x}, np.linspace(t, t + 0.99, 200)):
...         events += stage.add(p, now=0.0)
...         if stage.fresh_baseline:      # stage 1 learns it and bins from now on
...             src.set_baseline(stage.monitor.baseline); stage.fresh_baseline = False
>>> [(e["kind"], e["state"], e["features"]) for e in events]
[('data', 'onset', ['x'])]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec
import numpy as np

from driftwarden.config import RolloutSpec
from driftwarden.detectors.rollout import Decision, Rollout
from driftwarden.partials import (
    Partial,
    SliceMerger,
    SourceClock,
    Watermark,
    decode,
    fingerprint,
    merge_data,
    merge_outcomes,
    merge_pairs,
    merge_records,
    replay_errors,
    typed_columns,
)
from driftwarden.stream.monitor import ModelMonitor


class ModelStage:
    """Merge and monitor of one model version; see the module docstring."""

    def __init__(self, monitor: ModelMonitor, data_clock: SourceClock,
                 outcome_clock: SourceClock) -> None:
        self.monitor = monitor
        d = monitor.detection
        base = monitor.baseline
        self.data = SliceMerger(data_clock, slice_seconds=d.slice_seconds,
                                fingerprint=None if base is None else fingerprint(base))
        self.outcomes = SliceMerger(outcome_clock, slice_seconds=d.slice_seconds)
        self.fresh_baseline = False  # fitted from the warm-up: to publish to the sources
        self.unusable_rows = 0  # binned partials of a slice closed before the baseline existed
        # the baseline published for this model version, if any (see _adopt)
        self.known: Callable[[str, str], Any] | None = None
        # (kind, model, version, slice, payload) of every slice merged: the rollouts' input
        self.observe: Callable[[str, str, str, int, Any], None] | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.monitor.model, self.monitor.version

    def add(self, p: Partial, now: float) -> list[dict[str, Any]]:
        """Take one partial (``now``: the caller's clock, for source idleness); returns the
        drift events of the slices it let close."""
        if p.kind == "outcomes":
            return self._outcome_slices(self.outcomes.add(p, now))
        before, late_before = self.data.counts.duplicates, self.data.counts.late_rows
        closed = self.data.add(p, now)
        if p.late and self.data.counts.duplicates == before:  # records late at their source
            self._count_late(p.late)
        self._count_late(self.data.counts.late_rows - late_before)  # its slice had closed
        return self._data_slices(closed)

    def _count_late(self, rows: int) -> None:
        """Records that reached no window (late at their source, or their partial came after
        its slice closed) still count, once, as records and as late ones."""
        self.monitor.n_records += rows
        self.monitor.n_late += rows

    def close(self, now: float) -> list[dict[str, Any]]:
        """Close what the clocks allow at ``now`` (a watermark or idleness moved them)."""
        return (self._data_slices(self.data.close(now))
                + self._outcome_slices(self.outcomes.close(now)))

    def sources_done(self, now: float) -> bool:
        """Every data source is idle (or silent too long) and every open slice has closed."""
        return not self.data.open and self.data.clock.horizon(now, self.data.local) == math.inf

    def _data_slices(self, slices: list[tuple[int, list[Partial]]]) -> list[dict[str, Any]]:
        m = self.monitor
        events: list[dict[str, Any]] = []
        for sid, parts in slices:
            if m.window is not None and m.window.last_closed is not None and (
                    sid <= m.window.last_closed):  # drained meanwhile: late, counted
                self.data.counts.late += len(parts)
                self.data.counts.late_rows += sum(p.rows for p in parts)
                self._count_late(sum(p.rows for p in parts))
                continue
            if m.baseline is None and self.known is not None:
                self._adopt(parts)
            if m.baseline is None:
                raw = [p for p in parts if p.summary is None]
                self.unusable_rows += sum(p.rows for p in parts if p.summary is not None)
                ts, cols = merge_records(raw)
                need = m.detection.warmup - len(m._warm)
                # the warm-up is the first `warmup` records by event time, whatever their
                # spread; the rest of the slice where it ends is the window's first slice
                events += m.add_warm_slice(ts[:need], {k: v[:need] for k, v in cols.items()})
                if m.baseline is None:
                    continue
                self.data.fingerprint = fingerprint(m.baseline)
                self.fresh_baseline = True
                if len(ts) > need:
                    rest = m.baseline.new_summary(reservoir_size=m.detection.reservoir_size,
                                                  seed=m.detection.seed, task=m.task)
                    rest.update_columns(typed_columns(m.baseline, {
                        k: v[need:] for k, v in cols.items()}), n_rows=len(ts) - need,
                        ts=np.asarray(ts[need:], dtype=np.float64))
                    self._observe("data", sid, rest)
                    events += m.add_slice(sid, rest)
                continue
            usable = [p for p in parts if p.summary is None or
                      p.baseline == self.data.fingerprint]
            if len(usable) < len(parts):  # binned over other bins before the fit: counted
                self.data.counts.mismatched += len(parts) - len(usable)
                self.unusable_rows += sum(p.rows for p in parts if p not in usable)
            summary = merge_data(m.baseline, usable,
                                 reservoir_size=m.detection.reservoir_size,
                                 seed=m.detection.seed, task=m.task)
            self._observe("data", sid, summary)
            events += m.add_slice(sid, summary)
        return events

    def _adopt(self, parts: list[Partial]) -> None:
        """Binned partials while this stage warms up: stage 1 bins with a baseline published
        earlier (by this model's stage 2 before it lost its state); take that baseline
        rather than wait for records that will not come."""
        marks = {p.baseline for p in parts if p.summary is not None}
        base = self.known(*self.key) if marks and self.known is not None else None
        mark = None if base is None else fingerprint(base)
        if base is not None and mark in marks:
            self.monitor.adopt(base)
            self.data.fingerprint = mark

    def _outcome_slices(self, slices: list[tuple[int, list[Partial]]]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for sid, parts in slices:
            summary, n, total, hist = merge_outcomes(parts, self.monitor.task)
            errors = replay_errors(n, total, hist)
            self._observe("outcomes", sid, errors)
            pairs = merge_pairs(parts)
            if pairs is not None:
                self._observe("pairs", sid, pairs)
            events += self.monitor.add_outcome_slice(sid, summary, errors)
        return events

    def _observe(self, kind: str, sid: int, payload: Any) -> None:
        if self.observe is not None:
            self.observe(kind, *self.key, sid, payload)

    def to_state(self) -> dict[str, Any]:
        return {"monitor": self.monitor.to_state(), "data": self.data.to_state(),
                "outcomes": self.outcomes.to_state(), "fresh_baseline": self.fresh_baseline,
                "unusable_rows": self.unusable_rows}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], monitor: ModelMonitor,
                   data_clock: SourceClock, outcome_clock: SourceClock) -> ModelStage:
        stage = cls(monitor, data_clock, outcome_clock)
        seconds = monitor.detection.slice_seconds
        stage.data = SliceMerger.from_state(state["data"], data_clock, seconds)
        stage.outcomes = SliceMerger.from_state(state["outcomes"], outcome_clock, seconds)
        stage.fresh_baseline = bool(state["fresh_baseline"])
        stage.unusable_rows = int(state["unusable_rows"])
        return stage


class MergeStage:
    """Stage 2 of one summaries partition: a :class:`ModelStage` per model version whose
    partials land here (every partial of a model lands in one partition), over two shared
    source clocks (data, outcomes). ``expect``: the sources to wait for from the start (the
    input partitions; devices count from their first message); ``new_monitor`` makes the
    monitor of a model version, or refuses it (None: unknown model, cap reached)."""

    def __init__(self, new_monitor: Callable[[str, str, float], ModelMonitor | None], *,
                 idle_seconds: float, expect: tuple[Iterable[str], Iterable[str]] = ((), ()),
                 now: float = 0.0, known: Callable[[str, str], Any] | None = None,
                 slice_seconds: float = 1.0) -> None:
        self.new_monitor = new_monitor
        self.known = known  # (model, version) -> the baseline published for it, or None
        # the rollouts of the models whose partials land here, judged on their merged slices
        # (set by the service: StreamService.set_rollouts)
        self.rollout_specs: dict[str, RolloutSpec] = {}
        self.slice_seconds = slice_seconds
        self.rollouts: dict[str, Rollout] = {}
        self.decisions: list[Decision] = []  # new final verdicts, until taken
        self.clocks = SourceClock(idle_seconds), SourceClock(idle_seconds)
        for clock, names in zip(self.clocks, expect):
            for name in names:
                clock.expect(name, now)
        self.stages: dict[tuple[str, str], ModelStage] = {}
        self.last_partial: dict[tuple[str, str], float] = {}
        self.refused = 0  # partials of model versions without a monitor

    @property
    def monitors(self) -> dict[tuple[str, str], ModelMonitor]:
        return {k: s.monitor for k, s in self.stages.items()}

    def handle(self, value: bytes, now: float) -> list[dict[str, Any]]:
        """One message of the summaries topic; its drift events. Raises
        :class:`~driftwarden.errors.ValidationError` on what is not a partial or a
        watermark (the caller dead-letters it)."""
        msg = decode(value)
        if isinstance(msg, Watermark):
            self.clocks[msg.kind == "outcomes"].see(msg.source, now, msg.watermark, msg.idle)
            return self.close(now)
        stage = self.stage(msg.model, msg.version, msg.slice * msg.slice_seconds)
        if stage is None:
            self.refused += 1
            return []
        self.last_partial[stage.key] = now
        events = stage.add(msg, now)
        self._judge_rollouts(now)
        return events

    def stage(self, model: str, version: str, ts: float) -> ModelStage | None:
        """The stage of a model version, made when first seen (at event time ``ts``)."""
        stage = self.stages.get((model, version))
        if stage is None:
            monitor = self.new_monitor(model, version, ts)
            if monitor is None:
                return None
            stage = self.stages[(model, version)] = ModelStage(monitor, *self.clocks)
            stage.known = self.known
            stage.observe = self._observe
        return stage

    def _observe(self, kind: str, model: str, version: str, sid: int, payload: Any) -> None:
        """A model version's merged slice: to the model's rollouts, which decide on it."""
        for name, spec in self.rollout_specs.items():
            if spec.model != model or version not in spec.versions:
                continue
            r = self.rollout(name)
            if kind == "data":
                r.observe_data(version, sid, payload)
            elif kind == "pairs":
                r.observe_slice_pairs(version, sid, payload)
            else:
                r.observe_outcomes(version, sid, payload)

    def _judge_rollouts(self, now: float) -> None:
        """Tell each rollout how far the clocks have passed for all its versions, and take
        the verdicts that lets it reach."""
        for r in self.rollouts.values():
            passed = [self._passed(r.spec.model, r.spec.versions, k, now) for k in range(2)]
            r.advance(*passed)
            self.decisions += r.evaluate()

    def _passed(self, model: str, versions: list[str], kind: int, now: float) -> float:
        """The first slice (of ``kind``: 0 data, 1 outcomes) not final for every version: the
        clock's horizon, held back by a slice still open (not yet merged and observed)."""
        out = math.inf
        for v in versions:
            stage = self.stages.get((model, v))
            merger = None if stage is None else (stage.data, stage.outcomes)[kind]
            h = self.clocks[kind].horizon(now, None if merger is None else merger.local)
            edge = math.floor(h / self.slice_seconds) if math.isfinite(h) else h
            if merger is not None and merger.open:
                edge = min(edge, min(merger.open))
            out = min(out, edge)
        return out

    def rollout(self, name: str) -> Rollout:
        """The live comparison of a declared rollout, made at its first use."""
        r = self.rollouts.get(name)
        if r is None:
            r = self.rollouts[name] = Rollout(name, self.rollout_specs[name],
                                              slice_seconds=self.slice_seconds)
        return r

    def take_decisions(self) -> list[Decision]:
        """The rollouts' final verdicts reached since the last call."""
        out, self.decisions = self.decisions, []
        return out

    def close(self, now: float) -> list[dict[str, Any]]:
        events = [e for s in list(self.stages.values()) for e in s.close(now)]
        self._judge_rollouts(now)
        return events

    def idle(self, now: float, quiet_before: float) -> list[dict[str, Any]]:
        """Close what the clocks allow at ``now``; then, for every model version whose data
        sources are all idle and whose slices have all closed, take event time to go on at
        the wall clock's pace from its newest record (``quiet_before``: how long the sources
        were quiet before they said so) — so the window drains and a replayed file ends in
        a verdict (see :meth:`ModelMonitor.advance`)."""
        events = self.close(now)
        for key, stage in self.stages.items():
            m = stage.monitor
            if not stage.sources_done(now) or not m.idle_work or not math.isfinite(m.max_ts):
                continue
            quiet = now - self.last_partial.get(key, now) + quiet_before
            events += m.advance(m.max_ts + quiet)
            closed = None if m.window is None else m.window.last_closed
            if closed is not None:  # a partial for a drained slice is late from now on
                stage.data.last_closed = max(closed, stage.data.last_closed
                                             if stage.data.last_closed is not None else closed)
            if m.baseline is not None and stage.data.fingerprint is None:
                stage.data.fingerprint = fingerprint(m.baseline)
                stage.fresh_baseline = True
        return events

    def to_state(self) -> dict[str, Any]:
        return {"clocks": [c.to_state() for c in self.clocks], "refused": self.refused,
                "stages": [s.to_state() for s in self.stages.values()],
                "rollouts": {k: r.to_state() for k, r in self.rollouts.items()}}

    def restore(self, state: Mapping[str, Any], load_monitor: Callable[[Any], ModelMonitor],
                now: float) -> None:
        self.clocks = (SourceClock.from_state(state["clocks"][0], now),
                       SourceClock.from_state(state["clocks"][1], now))
        self.refused = int(state["refused"])
        self.stages = {}
        for st in state["stages"]:
            stage = ModelStage.from_state(st, load_monitor(st["monitor"]), *self.clocks)
            stage.known = self.known
            stage.observe = self._observe
            self.stages[stage.key] = stage
            self.last_partial[stage.key] = now
        # a rollout no longer declared is dropped; one declared since starts afresh (a spec
        # saved before a field was added compares with that field's default)
        self.rollouts = {k: Rollout.from_state(k, st)
                         for k, st in state.get("rollouts", {}).items()
                         if k in self.rollout_specs and _same_spec(st["spec"],
                                                                   self.rollout_specs[k])}


def _same_spec(saved: Any, spec: RolloutSpec) -> bool:
    """Whether a checkpointed rollout spec is ``spec`` (False when it no longer reads)."""
    try:
        return msgspec.convert(saved, RolloutSpec) == spec
    except msgspec.ValidationError:
        return False
