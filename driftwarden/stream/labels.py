"""Joining delayed labels to the predictions they judge.

Ground truth arrives minutes to weeks after a prediction. :class:`LabelJoiner` keeps the
pending predictions of each model (id → version, prediction, event time) for ``ttl`` seconds
of event time and at most ``max_pending`` of them (the oldest go first, counted as
``expired``). A label that finds its prediction yields an :class:`Outcome`. A label whose
prediction is not there waits ``grace`` seconds of event time (its prediction may still be in
flight on another partition or agent); if the prediction arrives meanwhile they are joined,
otherwise the label is handed back by :meth:`LabelJoiner.take_late` so the stream routes it to
the late topic: counted, never lost.

>>> j = LabelJoiner(ttl=60.0)
>>> j.add_prediction("fraud", "r1", "7", 0.9, ts=100.0)
>>> j.add_label("fraud", "r1", 1.0, ts=130.0)
Outcome(model='fraud', version='7', id='r1', prediction=0.9, label=1.0, delay=30.0)
>>> j.add_label("fraud", "r1", 1.0, ts=131.0) is None     # already joined: waits, then late
True
>>> j.add_prediction("fraud", "r2", "7", 0.1, ts=500.0)   # the watermark passes the grace
>>> [lab.id for lab in j.take_late()]
['r1']
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

from driftwarden.errors import ValidationError
from driftwarden.schema import pop_expired


@dataclass(frozen=True)
class Outcome:
    """A prediction with its ground truth and the label's delay in seconds."""

    model: str
    version: str
    id: str
    prediction: Any
    label: Any
    delay: float


@dataclass(frozen=True)
class PendingLabel:
    """A label waiting for its prediction (``raw``: the original message, for the late topic)."""

    model: str
    id: str
    label: Any
    ts: float
    raw: bytes = b""


class LabelJoiner:
    """Pending predictions with an event-time TTL; see the module docstring."""

    def __init__(self, ttl: float = 86_400.0, max_pending: int = 1_000_000,
                 grace: float = 60.0) -> None:
        if ttl <= 0 or max_pending < 1 or grace < 0:
            raise ValidationError("ttl must be > 0, max_pending >= 1 and grace >= 0")
        self.ttl = float(ttl)
        self.max_pending = int(max_pending)
        self.grace = float(grace)
        self._pending: OrderedDict[tuple[str, str], tuple[str, Any, float]] = OrderedDict()
        self._waiting: OrderedDict[tuple[str, str], PendingLabel] = OrderedDict()
        self._heap: list[tuple[float, tuple[str, str]]] = []  # waiting labels by event time
        self._late: list[PendingLabel] = []
        self.joined = 0
        self.late = 0
        self.expired = 0
        self.watermark = float("-inf")        # newest prediction event time
        self.label_watermark = float("-inf")  # newest label event time
        # with journal on, what changed in the pending table since take_delta(): checkpoints
        # then save that, not the whole table (see driftwarden.stream.checkpoint)
        self.journal = False
        # the changes in order (the cap depends on it): ["add", model, version, ids,
        # predictions, ts] (an id already pending moves to the end), ["update", ...] (the
        # bulk path: it keeps its place), ["remove", [[model, id], ...]] (joined)
        self._journal: list[list[Any]] = []

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def waiting(self) -> int:
        """Labels waiting for their prediction."""
        return len(self._waiting)

    def add_prediction(self, model: str, id: str, version: str, prediction: Any,
                       ts: float) -> Outcome | None:
        """Remember a prediction until its label arrives; the outcome if it was waiting."""
        key = (model, id)
        if ts > self.watermark:
            self.watermark = ts
        waiting = self._waiting.pop(key, None) if self._waiting else None
        if self._waiting:
            self._expire_waiting()
        if waiting is not None:
            self.joined += 1
            return Outcome(model, version, id, prediction, waiting.label,
                           max(0.0, waiting.ts - ts))
        self._pending.pop(key, None)
        self._pending[key] = (version, prediction, ts)
        if self.journal:
            last = self._journal[-1] if self._journal else None
            if last is not None and last[0] == "add" and last[1] == model and last[2] == version:
                last[3].append(id)  # single records: grow one entry, not one per record
                last[4].append(prediction)
                last[5].append(ts)
            else:
                self._journal.append(["add", model, version, [id], [prediction], [ts]])
        self.expired += self._trim()
        return None

    def add_predictions(self, model: str, version: str, ids: Sequence[str | None],
                        predictions: Sequence[Any], ts: Sequence[float]) -> list[Outcome]:
        """:meth:`add_prediction` for a batch (records without an id or a prediction are left
        out); the outcomes of labels that were waiting for them.

        >>> j = LabelJoiner()
        >>> j.add_predictions("m", "1", ["a", None, "b"], [0.2, 0.4, None], [1.0, 2.0, 3.0])
        []
        >>> len(j), j.watermark
        (1, 3.0)
        """
        if not ids:
            return []
        if self._waiting or None in ids or None in predictions:  # the general path
            out = []
            for i, p, t in zip(ids, predictions, ts):
                if i is not None and p is not None:
                    o = self.add_prediction(model, i, version, p, t)
                    if o is not None:
                        out.append(o)
            self.watermark = max(self.watermark, max(ts))
            return out
        # nothing waits for a label: one C-level update (an id seen before keeps its place)
        self.watermark = max(self.watermark, max(ts))
        self._pending.update(zip(zip(repeat(model), ids),  # type: ignore[arg-type]  # no None
                                 zip(repeat(version), predictions, ts)))
        if self.journal:
            self._journal.append(["update", model, version, list(ids), list(predictions), list(ts)])
        self.expired += self._trim()
        return []

    def duplicates(self, model: str, version: str, ids: Sequence[str | None],
                   predictions: Sequence[Any], ts: Sequence[float]) -> list[int]:
        """Indexes of the records that repeat a prediction still waiting for its label —
        same model, id, version, prediction and event time: a message the producer sent
        twice (a retry), not a new prediction for a known id.

        >>> j = LabelJoiner(); j.add_prediction("m", "a", "1", 0.2, 5.0)
        >>> j.duplicates("m", "1", ["a", "a", "b"], [0.2, 0.3, 0.2], [5.0, 5.0, 5.0])
        [0]
        """
        pending = self._pending
        if not pending or pending.keys().isdisjoint(zip(repeat(model), ids)):
            return []
        out = []
        for i, (rid, p, t) in enumerate(zip(ids, predictions, ts)):
            hit = pending.get((model, rid)) if rid is not None else None  # type: ignore
            if hit is not None and hit[0] == version and hit[2] == t and hit[1] == p:
                out.append(i)
        return out

    def _trim(self) -> int:
        """Drop the oldest predictions over ``max_pending``; returns how many (at the cap,
        one per prediction added, so in a C loop)."""
        excess = len(self._pending) - self.max_pending
        if excess <= 0:
            return 0
        deque(map(self._pending.popitem, repeat(False, excess)), maxlen=0)
        return excess

    def add_label(self, model: str, id: str, label: Any, ts: float,
                  raw: bytes = b"") -> Outcome | None:
        """The joined outcome, or None while the label waits for its prediction."""
        self.label_watermark = max(self.label_watermark, ts)
        self._expire_waiting()
        self.expire(max(self.watermark, ts))
        hit = self._pending.pop((model, id), None)
        if hit is None:
            self._waiting[(model, id)] = PendingLabel(model, id, label, ts, raw)
            heapq.heappush(self._heap, (ts, (model, id)))
            if len(self._heap) > 2 * len(self._waiting) + 1024:  # stale entries: rebuild
                self._rebuild_heap()
            while len(self._waiting) > self.max_pending:
                self._late.append(self._waiting.popitem(last=False)[1])
                self.late += 1
            self._expire_waiting()
            return None
        version, prediction, pred_ts = hit
        if self.journal:
            last = self._journal[-1] if self._journal else None
            if last is not None and last[0] == "remove":
                last[1].append((model, id))
            else:
                self._journal.append(["remove", [(model, id)]])
        self.joined += 1
        return Outcome(model, version, id, prediction, label, max(0.0, ts - pred_ts))

    def _expire_waiting(self) -> None:
        gone = pop_expired(self._waiting, max(self.watermark, self.label_watermark),
                           self.grace, lambda lab: lab.ts)
        self._late += gone
        self.late += len(gone)

    def oldest_waiting(self) -> float:
        """Event time of the oldest label still waiting for its prediction (inf: none): the
        join's outcome slices stay open while it may still join.

        >>> j = LabelJoiner(); j.add_label("m", "b", 1, ts=7.0); j.add_label("m", "a", 0, ts=5.0)
        >>> j.oldest_waiting(); _ = j.add_prediction("m", "a", "1", 0.4, 4.0); j.oldest_waiting()
        5.0
        7.0
        """
        heap, waiting = self._heap, self._waiting
        while heap:
            ts, key = heap[0]
            w = waiting.get(key)
            if w is not None and w.ts == ts:
                return ts
            heapq.heappop(heap)
        return math.inf

    def _rebuild_heap(self) -> None:
        self._heap = [(w.ts, k) for k, w in self._waiting.items()]
        heapq.heapify(self._heap)

    def take_late(self) -> list[PendingLabel]:
        """Labels whose prediction did not come within the grace period (handed over once)."""
        out, self._late = self._late, []
        return out

    def expire(self, now: float) -> int:
        """Drop predictions older than ``ttl`` at event time ``now``; returns how many.

        Predictions arrive in roughly event-time order, so the oldest are at the front;
        one out of order stays until the ones before it expire (bounded by max_pending).
        """
        n = len(pop_expired(self._pending, now, self.ttl))
        self.expired += n
        return n

    def join_ratio(self) -> float:
        """Labels joined over labels received (1.0 before any label)."""
        total = self.joined + self.late
        return self.joined / total if total else 1.0

    # -- state: whole, or the pending table as a base plus deltas -----------------------------
    def take_delta(self) -> dict[str, Any]:
        """What the pending table gained and lost since the last call (journal on).

        >>> j = LabelJoiner(); j.journal = True
        >>> j.add_predictions("m", "1", ["a", "b"], [0.2, 0.4], [1.0, 2.0])
        []
        >>> j.add_label("m", "a", 1, ts=3.0).id
        'a'
        >>> k = LabelJoiner(); k.apply_delta(j.take_delta()); list(k._pending)
        [('m', 'b')]
        """
        out = {"ops": self._journal}
        self._journal = []
        return out

    def restore_delta(self, delta: Mapping[str, Any]) -> None:
        """Put a delta of :meth:`take_delta` that could not be saved back in front of the
        changes since."""
        self._journal = list(delta["ops"]) + self._journal

    def apply_delta(self, delta: Mapping[str, Any]) -> None:
        """Replay a delta of :meth:`take_delta`, in order, with the cap applied after each
        addition as it was live (so a table at its cap rebuilds exactly)."""
        pending = self._pending
        if "ops" not in delta:  # a checkpoint of an earlier version: additions, then joins
            ops = [["add", *a] for a in delta["added"]] + [["remove", delta["removed"]]]
        else:
            ops = delta["ops"]
        for op in ops:
            if op[0] == "remove":
                for model, i in op[1]:
                    pending.pop((model, i), None)
                continue
            _, model, version, ids, preds, ts = op
            if op[0] == "update":
                pending.update(zip(zip(repeat(model), ids), zip(repeat(version), preds, ts)))
            else:
                for i, p, t in zip(ids, preds, ts):
                    pending.pop((model, i), None)
                    pending[(model, i)] = (version, p, t)
            self._trim()  # not counted: the restored counters already hold these

    def pending_state(self) -> list[Any]:
        """The whole pending table (``[[model, id], [version, prediction, ts]]`` pairs, made
        and encoded in C)."""
        return list(self._pending.items())

    def load_pending(self, pending: Any) -> None:
        self._pending = OrderedDict(((m, i), (v, p, t)) for (m, i), (v, p, t) in pending)

    def to_state(self, pending: bool = True) -> dict[str, Any]:
        """Everything as JSON-ready data; without the pending table when ``pending`` is False
        (a checkpoint saves it as a base and deltas)."""
        return {"ttl": self.ttl, "max_pending": self.max_pending, "grace": self.grace,
                "pending": self.pending_state() if pending else None,
                "waiting": [[w.model, w.id, w.label, w.ts, w.raw.decode("utf-8", "replace")]
                            for w in list(self._waiting.values()) + self._late],
                "n_late_undelivered": len(self._late),
                "joined": self.joined, "late": self.late, "expired": self.expired,
                "watermark": None if self.watermark == float("-inf") else self.watermark,
                "label_watermark": None if self.label_watermark == float("-inf")
                else self.label_watermark}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> LabelJoiner:
        j = cls(state["ttl"], state["max_pending"], state["grace"])
        if state["pending"] is not None:
            j.load_pending(state["pending"])
        waiting = [PendingLabel(m, i, lab, t, raw.encode()) for m, i, lab, t, raw in
                   state["waiting"]]
        n_late = state["n_late_undelivered"]
        j._late = waiting[len(waiting) - n_late:] if n_late else []
        for w in waiting[:len(waiting) - n_late]:
            j._waiting[(w.model, w.id)] = w
        j._rebuild_heap()
        j.joined, j.late, j.expired = state["joined"], state["late"], state["expired"]
        j.watermark = float("-inf") if state["watermark"] is None else state["watermark"]
        lw = state["label_watermark"]
        j.label_watermark = float("-inf") if lw is None else lw
        return j



class JoinerTables:
    """The pending tables of several :class:`LabelJoiner` checkpointed together as one base
    plus deltas (what :class:`~driftwarden.stream.checkpoint.StateStore` saves apart from the
    rest of a shard's state): the join's table and stage 1's memory of re-sends.

    >>> a, b = LabelJoiner(), LabelJoiner()
    >>> t = JoinerTables({"labels": a, "resends": b}); t.journal = True
    >>> b.add_prediction("m", "r1", "1", 0.5, 1.0)
    >>> c, d = LabelJoiner(), LabelJoiner()
    >>> JoinerTables({"labels": c, "resends": d}).apply_delta(t.take_delta()); len(c), len(d)
    (0, 1)
    """

    def __init__(self, joiners: Mapping[str, LabelJoiner]) -> None:
        self.joiners = dict(joiners)

    @property
    def journal(self) -> bool:
        return all(j.journal for j in self.joiners.values())

    @journal.setter
    def journal(self, on: bool) -> None:
        for j in self.joiners.values():
            j.journal = on

    def take_delta(self) -> dict[str, Any]:
        return {"tables": {k: j.take_delta() for k, j in self.joiners.items()}}

    def restore_delta(self, delta: Mapping[str, Any]) -> None:
        for k, d in delta["tables"].items():
            self.joiners[k].restore_delta(d)

    def apply_delta(self, delta: Mapping[str, Any]) -> None:
        for k, d in delta["tables"].items():
            if k in self.joiners:
                self.joiners[k].apply_delta(d)

    def pending_state(self) -> dict[str, Any]:
        return {"tables": {k: j.pending_state() for k, j in self.joiners.items()}}

    def load_pending(self, pending: Mapping[str, Any]) -> None:
        for k, p in pending["tables"].items():
            if k in self.joiners:
                self.joiners[k].load_pending(p)
