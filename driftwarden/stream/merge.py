"""Stage 2 of one model version: merged partial summaries in, drift events out.

A :class:`ModelStage` holds a :class:`~driftwarden.stream.monitor.ModelMonitor` and two
:class:`~driftwarden.partials.SliceMerger` — one for ``data`` partials (event time), one for
``outcomes`` partials (label time) — over :class:`~driftwarden.partials.SourceClock` shared by
every model of the stage-2 shard. Each closed slice goes to the monitor once, in slice order:

* while the monitor has no baseline, the records of the slice (warm-up partials carry them, in
  a canonical order) extend its warm-up; the baseline is fitted at the end of the slice that
  brings the warm-up to ``warmup`` records, so where it ends does not depend on how records
  were spread over sources or batched;
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

from collections.abc import Mapping
from typing import Any

from driftwarden.partials import (
    Partial,
    SliceMerger,
    SourceClock,
    fingerprint,
    merge_data,
    merge_outcomes,
    merge_records,
    replay_errors,
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

    @property
    def key(self) -> tuple[str, str]:
        return self.monitor.model, self.monitor.version

    def add(self, p: Partial, now: float) -> list[dict[str, Any]]:
        """Take one partial (``now``: the caller's clock, for source idleness); returns the
        drift events of the slices it let close."""
        if p.kind == "outcomes":
            return self._outcome_slices(self.outcomes.add(p, now))
        return self._data_slices(self.data.add(p, now))

    def close(self, now: float) -> list[dict[str, Any]]:
        """Close what the clocks allow at ``now`` (a watermark or idleness moved them)."""
        return (self._data_slices(self.data.close(now))
                + self._outcome_slices(self.outcomes.close(now)))

    @property
    def sources_done(self) -> bool:
        """Every data source is idle and every open slice has closed."""
        return not self.data.open and self.data.clock.horizon(
            float("-inf"), self.data.local) == float("inf")

    def _data_slices(self, slices: list[tuple[int, list[Partial]]]) -> list[dict[str, Any]]:
        m = self.monitor
        events: list[dict[str, Any]] = []
        for sid, parts in slices:
            if m.baseline is None:
                raw = [p for p in parts if p.summary is None]
                self.unusable_rows += sum(p.rows for p in parts if p.summary is not None)
                ts, cols = merge_records(raw)
                events += m.add_warm_slice(ts, cols, rows=sum(p.rows for p in raw))
                if m.baseline is not None:
                    self.data.fingerprint = fingerprint(m.baseline)
                    self.fresh_baseline = True
                continue
            summary = merge_data(m.baseline, [p for p in parts if p.summary is None or
                                              p.baseline == self.data.fingerprint],
                                 reservoir_size=m.detection.reservoir_size,
                                 seed=m.detection.seed, task=m.task)
            events += m.add_slice(sid, summary)
        return events

    def _outcome_slices(self, slices: list[tuple[int, list[Partial]]]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for sid, parts in slices:
            summary, n, total, hist = merge_outcomes(parts, self.monitor.task)
            events += self.monitor.add_outcome_slice(sid, summary, replay_errors(n, total, hist))
        return events

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
