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

import heapq
import math
import zlib
from collections import OrderedDict
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
        """A batch's predictions (the per-record work of :meth:`prediction`, inlined: this
        runs for every record of every batch)."""
        rows, n, crc = self.rows, max(1, self.n_partitions), zlib.crc32
        for i, p, t in zip(ids, predictions, ts):
            if i is not None and p is not None:
                key = (crc(i.encode("utf-8", "surrogatepass")) % n, source)
                dest = rows.get(key)
                if dest is None:
                    dest = rows[key] = {"p": [], "l": []}
                dest["p"].append([offset, model, version, i, p, t])

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


class ShadowPairs:
    """Shadow mode, live: the serving (baseline) version's and each shadow version's
    predictions of the same request id, paired where the join meets them (every prediction of
    a request id lands in one joins partition, whatever the producers' keys).

    ``roles``: model -> (window, {candidate: baseline}). Two predictions pair when their event
    times are at most ``window`` seconds apart; the pair is timed at the baseline prediction's
    event time. A request waits while the prediction partitions' clock (``horizon``, their
    watermarks' minimum) has not passed its newest prediction by ``window``: any partner not
    late at its source has arrived by then, so which predictions pair does not depend on the
    order partitions were read in. Then it is dropped, its unpaired predictions counted
    (``unpaired``); ``max_pending`` requests at most wait (the oldest go first, counted in
    ``evicted`` — the one case where pairing depends on timing).

    >>> sp = ShadowPairs(max_pending=100)
    >>> roles = {"m": (5.0, {"2": "1"})}
    >>> sp.add(roles, "m", "r1", "1", 0.9, 10.0), sp.add(roles, "m", "r1", "2", 0.2, 11.0)
    ([], [('m', '2', 0.9, 0.2, 10.0)])
    >>> sp.add(roles, "m", "r2", "1", 0.4, 12.0)   # its shadow never scores it
    []
    >>> sp.expire(17.5, window=5.0); sp.unpaired, len(sp.pending)
    (1, 0)
    """

    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        # (model, request id) -> version -> [prediction, ts, paired]; oldest first (an
        # OrderedDict: evicting the oldest stays O(1) however many went before)
        self.pending: OrderedDict[tuple[str, str], dict[str, list[Any]]] = OrderedDict()
        self.heap: list[tuple[float, str, str]] = []  # (a prediction's ts, model, id), lazy
        self.paired = 0     # pairs made
        self.unpaired = 0   # predictions whose partner did not come within the window
        self.evicted = 0    # requests dropped to keep max_pending
        self.apart = 0      # partners further apart in event time than the window
        self.duplicates = 0  # a version's second prediction of one request id: ignored

    def add(self, roles: Mapping[str, tuple[float, Mapping[str, str]]], model: str, rid: str,
            version: str, prediction: Any, ts: float) -> list[tuple[str, str, Any, Any, float]]:
        """One prediction; the pairs it completes: (model, candidate, baseline's prediction,
        candidate's prediction, baseline's event time)."""
        window, pairs = roles[model]
        if version not in pairs and version not in pairs.values():
            return []
        key = (model, rid)
        entry = self.pending.get(key)
        if entry is None:
            entry = self.pending[key] = {}
            while len(self.pending) > self.max_pending:
                self.evicted += 1
                self._drop(next(iter(self.pending)))
        if version in entry:
            self.duplicates += 1
            return []
        entry[version] = [prediction, ts, False]
        heapq.heappush(self.heap, (ts, model, rid))
        if len(self.heap) > 4 * len(self.pending) + 1024:  # entries of requests gone: rebuild
            self.heap = [(x[1], m, r) for (m, r), e in self.pending.items()
                         for x in e.values()]
            heapq.heapify(self.heap)
        out = []
        for cand, base in pairs.items():
            if version not in (cand, base) or cand not in entry or base not in entry:
                continue
            b, c = entry[base], entry[cand]
            if c[2]:
                continue
            c[2] = b[2] = True
            if abs(b[1] - c[1]) <= window:
                self.paired += 1
                out.append((model, cand, b[0], c[0], b[1]))
            else:
                self.apart += 1
        if all(v in entry for v in {*pairs, *pairs.values()}):
            del self.pending[key]  # every version of the request is in: nothing to wait for
        return out

    def _drop(self, key: tuple[str, str]) -> None:
        entry = self.pending.pop(key)
        self.unpaired += sum(1 for e in entry.values() if not e[2])

    def expire(self, horizon: float, window: float = 0.0) -> None:
        """The prediction partitions have passed ``horizon``: drop the requests whose newest
        prediction is more than the window older (``window``: the largest of the roles')."""
        while self.heap and self.heap[0][0] + window < horizon:
            _, model, rid = heapq.heappop(self.heap)
            entry = self.pending.get((model, rid))
            if entry is not None and max(e[1] for e in entry.values()) + window < horizon:
                self._drop((model, rid))

    def hold(self, window: float) -> float:
        """The oldest event time a pair still to come can have (+inf: none is waiting)."""
        while self.heap and (self.heap[0][1], self.heap[0][2]) not in self.pending:
            heapq.heappop(self.heap)
        return self.heap[0][0] - window if self.heap else math.inf

    def fates(self) -> dict[str, int]:
        """What became of the predictions offered for pairing (the metric
        ``driftwarden_shadow_pairs_total``)."""
        return {"paired": self.paired, "unpaired": self.unpaired, "evicted": self.evicted,
                "apart": self.apart, "duplicate": self.duplicates}

    def to_state(self) -> dict[str, Any]:
        return {"pending": [[m, r, e] for (m, r), e in self.pending.items()],
                "counts": [self.paired, self.unpaired, self.evicted, self.apart,
                           self.duplicates]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], max_pending: int) -> ShadowPairs:
        sp = cls(max_pending)
        sp.pending = OrderedDict(((m, r), {v: list(x) for v, x in e.items()})
                                 for m, r, e in state["pending"])
        sp.heap = [(float(x[1]), m, r) for (m, r), e in sp.pending.items() for x in e.values()]
        heapq.heapify(sp.heap)
        sp.paired, sp.unpaired, sp.evicted, sp.apart, sp.duplicates = (
            int(x) for x in state["counts"])
        return sp


class JoinStage:
    """One joins partition's join and its outcome partials (see the module docstring)."""

    def __init__(self, detection: Detection, *, summaries: str, late: str, n_partitions: int,
                 tasks: Mapping[str, str] | None = None,
                 label_sources: Sequence[str] = (), now: float = 0.0,
                 prediction_sources: Sequence[str] = ()) -> None:
        self.detection = detection
        # model -> its shadow candidate versions: they score the same requests as the
        # serving version, so a label joins each of them too (see _shadow_joiner; set with
        # pair_roles by set_shadows)
        self.shadows: dict[str, tuple[str, ...]] = {}
        self.shadow_joiners: dict[tuple[str, str], LabelJoiner] = {}
        self.shadow_unjoined = 0  # labels copied to a shadow that never scored their request
        # model -> (window, {candidate: baseline}): shadow versions paired live with their
        # baseline on the same request ids (see ShadowPairs and set_shadows)
        self.pair_roles: dict[str, tuple[float, dict[str, str]]] = {}
        self.pairs = ShadowPairs(detection.max_pending_labels)
        self.late_pairs = 0  # pairs timed before this partition's outcome watermark
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

    def set_shadows(self, roles: Mapping[str, tuple[float, Mapping[str, str]]]) -> None:
        """The shadow rollouts' versions (``roles``: model -> (pairing window, {candidate:
        baseline}); see :func:`driftwarden.stream.service.shadow_pairs`): their predictions
        are paired with the serving version's, and each label joins them too."""
        self.pair_roles = {m: (w, dict(p)) for m, (w, p) in roles.items()}
        self.shadows = {m: tuple(p) for m, (_, p) in self.pair_roles.items()}

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
        paired: list[tuple[str, str, Any, Any, float]] = []
        newest = done
        rows = body["p"]
        if rows and rows[-1][0] > done and not self.joiner.waiting and not self.shadows and (
                not self.pair_roles) and rows[0][0] > done:
            # the common case — nothing waits for these predictions, no shadow, no replayed
            # row: into the pending table in runs of one model version (one bulk insert and
            # one trim a run, not one a row; in order, so the eviction order is the same)
            newest = max(newest, max(r[0] for r in rows))
            start = 0
            for i in range(1, len(rows) + 1):
                if i == len(rows) or rows[i][1:3] != rows[start][1:3]:
                    run = rows[start:i]
                    self.joiner.add_predictions(run[0][1], run[0][2], [r[3] for r in run],
                                                [r[4] for r in run],
                                                [float(r[5]) for r in run])
                    start = i
            rows = []
        for offset, model, version, rid, prediction, ts in rows:
            newest = max(newest, offset)
            if offset <= done:
                self.replayed_rows += 1
                continue
            joiner = (self._shadow_joiner(model, version)
                      if version in self.shadows.get(model, ()) else self.joiner)
            o = joiner.add_prediction(model, rid, version, prediction, float(ts))
            if o is not None:
                joined.append((o, float(ts) + o.delay))
            if model in self.pair_roles:
                paired += self.pairs.add(self.pair_roles, model, rid, version, prediction,
                                         float(ts))
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
        if paired:
            self._add_pairs(here, paired)
        return self.tick(here, now)

    def _add_pairs(self, here: str, paired: list[tuple[str, str, Any, Any, float]]) -> None:
        """Shadow pairs into the candidates' outcome partials, at the baseline's event time
        (held open for them by :meth:`tick`: none is late unless max_pending evicted)."""
        mark = self.outcomes.time(here).watermark
        by_key: dict[tuple[str, str], list[tuple[Any, Any, float]]] = {}
        for model, cand, b, c, t in paired:
            if math.isfinite(t) and t >= mark:
                by_key.setdefault((model, cand), []).append((b, c, t))
            else:
                self.late_pairs += 1
        for (model, cand), rows in by_key.items():
            self.outcomes.add_pairs(here, model, cand, [r[0] for r in rows],
                                    [r[1] for r in rows], [r[2] for r in rows])

    def _pair_hold(self, now: float, force: bool) -> float:
        """How far outcome time may move for the shadow pairs still to come: the requests
        waiting for a partner, and the prediction partitions' clock (a pair is timed by its
        baseline prediction, which is not older than its partition's watermark)."""
        if not self.pair_roles:
            return math.inf
        window = max(w for w, _ in self.pair_roles.values())
        clock = self.prediction_clock.horizon(now) if self.prediction_clock.sources else math.inf
        if force:
            clock = math.inf
        self.pairs.expire(clock, window)
        return min(clock, self.pairs.hold(window))

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
        horizon = min(horizon, self._pair_hold(now, force))
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
                "shadow_unjoined": self.shadow_unjoined, "pairs": self.pairs.to_state(),
                "late_pairs": self.late_pairs}

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
        if "pairs" in state:
            self.pairs = ShadowPairs.from_state(state["pairs"], self.detection.max_pending_labels)
            self.late_pairs = int(state["late_pairs"])
        self.outcomes.load(state["outcomes"], lambda s, m, v, t, st: OutcomeBuilder.from_state(
            st, model=m, version=v, source=s, slice_seconds=self.detection.slice_seconds,
            task=self.tasks.get(m, "classification"), time=t))
