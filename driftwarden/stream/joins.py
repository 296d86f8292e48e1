"""The label join, whatever keys the producers used: both sides re-keyed by request id.

Stage 1 does not join: a prediction's partition follows its producer's key (a request id, the
model name, or none), and so does its label's, so the two may never meet there. Instead every
shard routes what the join needs — of a prediction: model, version, id, prediction, event
time; of a label: model, id, label, event time — to the partition of the **joins** topic given
by the request id (:func:`join_partition`), batched per destination (:class:`JoinRouter`). The
shard owning that joins partition (:class:`JoinStage`) joins them with a
:class:`~driftwarden.stream.labels.LabelJoiner` and turns outcomes into ``outcomes`` partials
sliced by label time (:class:`~driftwarden.stream.sources.Sources`), published to the merge
stage like data partials. Labels that find no prediction go to the late topic, as before.

Every row carries its source message's offset: a stage-1 shard that replays after a crash
sends rows again, and the join stage skips those at or below the newest offset it applied per
source — so replays join nothing twice.

>>> r = JoinRouter("joins", n_partitions=2)
>>> r.prediction("predictions/0", 7, "m", "1", "req-1", 0.9, 10.0)
>>> r.label("labels/1", 3, "m", "req-1", 1, 12.0)
>>> outs = r.outputs()
>>> len(outs), {o.partition for o in outs} == {join_partition("req-1", 2)}
(2, True)
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from driftwarden.config import Detection
from driftwarden.partials import OutcomeBuilder, SourceClock, Watermark, decode
from driftwarden.stream.labels import LabelJoiner, Outcome
from driftwarden.stream.output import Output, RawMessage
from driftwarden.stream.sources import Sources

JOIN_FORMAT = 1


def join_partition(request_id: str, n_partitions: int) -> int:
    """The joins partition of a request id (CRC-32 of its UTF-8 bytes)."""
    return zlib.crc32(request_id.encode("utf-8", "surrogatepass")) % max(1, n_partitions)


class JoinRouter:
    """A shard's rows for the join, collected during a batch and sent as one message per
    joins partition and source (see the module docstring)."""

    def __init__(self, topic: str, n_partitions: int) -> None:
        self.topic = topic
        self.n_partitions = n_partitions
        # (partition, source) -> {"p": prediction rows, "l": label rows}
        self.rows: dict[tuple[int, str], dict[str, list[list[Any]]]] = {}

    def _rows(self, request_id: str, source: str) -> dict[str, list[list[Any]]]:
        key = (join_partition(request_id, self.n_partitions), source)
        return self.rows.setdefault(key, {"p": [], "l": []})

    def prediction(self, source: str, offset: int, model: str, version: str, request_id: str,
                   prediction: Any, ts: float) -> None:
        self._rows(request_id, source)["p"].append(
            [offset, model, version, request_id, prediction, ts])

    def predictions(self, source: str, offset: int, model: str, version: str,
                    ids: Sequence[str | None], predictions: Sequence[Any],
                    ts: Sequence[float]) -> None:
        for i, p, t in zip(ids, predictions, ts):
            if i is not None and p is not None:
                self.prediction(source, offset, model, version, i, p, t)

    def label(self, source: str, offset: int, model: str, request_id: str, label: Any,
              ts: float) -> None:
        self._rows(request_id, source)["l"].append([offset, model, request_id, label, ts])

    def outputs(self) -> list[Output]:
        out = []
        for (partition, source), rows in sorted(self.rows.items()):
            value = orjson.dumps({"format": JOIN_FORMAT, "source": source, **rows},
                                 default=repr)
            out.append(Output(self.topic, None, value, partition=partition))
        self.rows = {}
        return out


class JoinStage:
    """One joins partition's join and its outcome partials (see the module docstring)."""

    def __init__(self, detection: Detection, *, summaries: str, late: str, n_partitions: int,
                 tasks: Mapping[str, str] | None = None,
                 label_sources: Sequence[str] = (), now: float = 0.0,
                 prediction_sources: Sequence[str] = ()) -> None:
        self.detection = detection
        # model -> its shadow candidate versions: they score the same requests as the
        # serving version, so a label joins each of them too (see _shadow_joiner; set by the
        # service: StreamService.set_rollouts)
        self.shadows: dict[str, tuple[str, ...]] = {}
        self.shadow_joiners: dict[tuple[str, str], LabelJoiner] = {}
        self.shadow_unjoined = 0  # labels copied to a shadow that never scored their request
        self.late_topic = late
        self.tasks = dict(tasks or {})
        # the label partitions' event time, from their Watermark messages: an outcome's time
        # is its label's, so the outcome slices of this partition close when every active
        # label partition has passed them (the same rule as the merge stage's)
        self.label_clock = SourceClock(detection.source_idle_seconds)
        for name in label_sources:
            self.label_clock.expect(name, now)
        # the prediction partitions' event time (their data watermarks): a label waiting for
        # its prediction holds its slice until every prediction partition is idle — never a
        # wall-clock wait, which a prediction routed through a shard that is behind outlasts
        self.prediction_clock = SourceClock(detection.source_idle_seconds)
        for name in prediction_sources:
            self.prediction_clock.expect(name, now)
        self.late_outcomes = 0
        self.joiner = LabelJoiner(detection.label_ttl, detection.max_pending_labels,
                                  detection.label_grace)
        self.applied: dict[str, int] = {}  # source -> newest offset whose rows are applied
        self.replayed_rows = 0
        self.outcomes = Sources(
            "outcomes", slice_seconds=detection.slice_seconds,
            # the watermark follows the label partitions' (see handle): no further lateness
            allowed_lateness=0.0,
            n_partitions=n_partitions, topic=summaries, new_builder=self._builder)

    def _builder(self, source: str, model: str, version: str, time: Any) -> OutcomeBuilder:
        return OutcomeBuilder(model=model, version=version, source=source,
                              slice_seconds=self.detection.slice_seconds,
                              task=self.tasks.get(model, "classification"), time=time)

    def handle(self, msg: RawMessage, now: float) -> list[Output]:
        """One joins message — rows, or a label partition's watermark; raises on a message
        this code did not write (the caller dead-letters it)."""
        here = f"{msg.topic}/{msg.partition}"
        if msg.value[:1] != b"{":
            mark = decode(msg.value)
            if not isinstance(mark, Watermark) or mark.kind not in ("labels", "data"):
                raise ValueError("not a join message nor a label or data watermark")
            clock = self.label_clock if mark.kind == "labels" else self.prediction_clock
            clock.see(mark.source, now, mark.watermark, mark.idle)
            return self.tick(here, now)
        body = orjson.loads(msg.value)
        if not isinstance(body, dict) or body.get("format") != JOIN_FORMAT:
            raise ValueError("not a join message of format 1")
        source = str(body["source"])
        done = self.applied.get(source, -1)
        joined: list[tuple[Outcome, float]] = []
        newest = done
        for offset, model, version, rid, prediction, ts in body["p"]:
            newest = max(newest, offset)
            if offset <= done:
                self.replayed_rows += 1
                continue
            joiner = (self._shadow_joiner(model, version)
                      if version in self.shadows.get(model, ()) else self.joiner)
            o = joiner.add_prediction(model, rid, version, prediction, float(ts))
            if o is not None:
                joined.append((o, float(ts) + o.delay))
        for offset, model, rid, label, ts in body["l"]:
            newest = max(newest, offset)
            if offset <= done:
                self.replayed_rows += 1
                continue
            o = self.joiner.add_label(model, rid, label, float(ts))
            if o is not None:
                joined.append((o, float(ts)))
            for version in self.shadows.get(model, ()):
                o = self._shadow_joiner(model, version).add_label(model, rid, label, float(ts))
                if o is not None:
                    joined.append((o, float(ts)))
        self.applied[source] = newest
        if joined:
            ts = np.array([t for _, t in joined])
            # on time: not older than this partition's watermark (what the label partitions
            # have passed); a label that waited for its prediction may be older
            ok = np.isfinite(ts) & (ts >= self.outcomes.time(here).watermark)
            self.late_outcomes += int((~ok).sum())
            by_key: dict[tuple[str, str], list[tuple[Outcome, float]]] = {}
            for (o, t), fine in zip(joined, ok):
                if fine:
                    by_key.setdefault((o.model, o.version), []).append((o, t))
            for (model, version), rows in by_key.items():
                self.outcomes.add_outcomes(here, model, version, [o.prediction for o, _ in rows],
                                           [o.label for o, _ in rows], [t for _, t in rows])
        return self.tick(here, now)

    def _shadow_joiner(self, model: str, version: str) -> LabelJoiner:
        """The join of a shadow version's predictions: apart from the serving version's (the
        same request ids), fed a copy of every label of its model. A copy whose request the
        shadow never scored expires unreported (counted in ``shadow_unjoined``): the label
        itself joined, or went to the late topic, through the main join."""
        j = self.shadow_joiners.get((model, version))
        if j is None:
            d = self.detection
            j = self.shadow_joiners[(model, version)] = LabelJoiner(
                d.label_ttl, d.max_pending_labels, d.label_grace)
        return j

    def tick(self, here: str, now: float, force: bool = False) -> list[Output]:
        """Move this partition's outcome time to its label sources' horizon, held back to the
        oldest label still waiting for its prediction (it joins with its own label time: a
        prediction routed through a slower shard must still find its slice open): the
        outcome partials and watermark that lets out — all of them, announced idle, once
        every label source is idle."""
        horizon = self.label_clock.horizon(now)
        if horizon == -math.inf:
            return self.late_outputs()
        # a label still waiting holds its slice open, idle label sources or not: its
        # prediction may be on its way through a shard that is behind — unless every label
        # source and every prediction source is idle (``force``: the input has ended), when
        # its prediction will not come
        done = self.prediction_clock.horizon(now) == math.inf or not (
            self.prediction_clock.sources)
        if not (horizon == math.inf and (force or done)):
            horizon = min(horizon, self.joiner.oldest_waiting())
        out = self.outcomes.advance(here, horizon, now, idle=horizon == math.inf)
        return out + self.late_outputs()

    @property
    def late_rows(self) -> int:
        """Outcomes not counted: older than this partition's outcome watermark when they
        joined, or in a slice already published."""
        return self.late_outcomes + self.outcomes.late_rows()

    def late_outputs(self) -> list[Output]:
        for j in self.shadow_joiners.values():
            self.shadow_unjoined += len(j.take_late())
        return [Output(self.late_topic, lab.model.encode("utf-8", "surrogatepass"), orjson.dumps(
            {"model": lab.model, "id": lab.id, "label": lab.label, "ts": lab.ts}, default=repr),
            [("dw.reason", b"no_pending_prediction")]) for lab in self.joiner.take_late()]

    def to_state(self, pending: bool = True) -> dict[str, Any]:
        return {"joiner": self.joiner.to_state(pending), "applied": dict(self.applied),
                "label_clock": self.label_clock.to_state(), "late_outcomes": self.late_outcomes,
                "prediction_clock": self.prediction_clock.to_state(),
                "replayed_rows": self.replayed_rows, "outcomes": self.outcomes.to_state(),
                # whole (the checkpoint keeps only the main pending tables as deltas)
                "shadow": [[m, v, j.to_state(True)]
                           for (m, v), j in self.shadow_joiners.items()],
                "shadow_unjoined": self.shadow_unjoined}

    def restore(self, state: Mapping[str, Any], now: float) -> None:
        self.joiner = LabelJoiner.from_state(state["joiner"])
        self.applied = {k: int(v) for k, v in state["applied"].items()}
        self.label_clock = SourceClock.from_state(state["label_clock"], now)
        if "prediction_clock" in state:
            self.prediction_clock = SourceClock.from_state(state["prediction_clock"], now)
        self.late_outcomes = int(state["late_outcomes"])
        self.replayed_rows = int(state["replayed_rows"])
        self.shadow_joiners = {(m, v): LabelJoiner.from_state(st)
                               for m, v, st in state.get("shadow", [])}
        self.shadow_unjoined = int(state.get("shadow_unjoined", 0))
        self.outcomes.load(state["outcomes"], lambda s, m, v, t, st: OutcomeBuilder.from_state(
            st, model=m, version=v, source=s, slice_seconds=self.detection.slice_seconds,
            task=self.tasks.get(m, "classification"), time=t))
