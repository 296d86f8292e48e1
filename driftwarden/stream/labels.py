"""Joining delayed labels to the predictions they judge.

Ground truth arrives minutes to weeks after a prediction. :class:`LabelJoiner` keeps the
pending predictions of each model (id → version, prediction, event time) for ``ttl`` seconds
of event time and at most ``max_pending`` of them (the oldest go first, counted as
``expired``). A label that finds its prediction yields an :class:`Outcome`; a label whose
prediction is unknown — expired, never seen, or not yet seen — is returned as *late* so the
stream routes it to the late topic: counted, never lost.

>>> j = LabelJoiner(ttl=60.0)
>>> j.add_prediction("fraud", "r1", "7", 0.9, ts=100.0)
>>> j.add_label("fraud", "r1", 1.0, ts=130.0)
Outcome(model='fraud', version='7', id='r1', prediction=0.9, label=1.0, delay=30.0)
>>> j.add_label("fraud", "r1", 1.0, ts=131.0) is None     # already joined: late
True
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from driftwarden.errors import ValidationError


@dataclass(frozen=True)
class Outcome:
    """A prediction with its ground truth and the label's delay in seconds."""

    model: str
    version: str
    id: str
    prediction: Any
    label: Any
    delay: float


class LabelJoiner:
    """Pending predictions with an event-time TTL; see the module docstring."""

    def __init__(self, ttl: float = 86_400.0, max_pending: int = 1_000_000) -> None:
        if ttl <= 0 or max_pending < 1:
            raise ValidationError("ttl must be > 0 and max_pending >= 1")
        self.ttl = float(ttl)
        self.max_pending = int(max_pending)
        self._pending: OrderedDict[tuple[str, str], tuple[str, Any, float]] = OrderedDict()
        self.joined = 0
        self.late = 0
        self.expired = 0
        self.watermark = float("-inf")

    def __len__(self) -> int:
        return len(self._pending)

    def add_prediction(self, model: str, id: str, version: str, prediction: Any,
                       ts: float) -> None:
        """Remember a prediction until its label arrives or it expires."""
        key = (model, id)
        self._pending.pop(key, None)
        self._pending[key] = (version, prediction, ts)
        if ts > self.watermark:
            self.watermark = ts
        while len(self._pending) > self.max_pending:
            self._pending.popitem(last=False)
            self.expired += 1

    def add_label(self, model: str, id: str, label: Any, ts: float) -> Outcome | None:
        """The joined outcome, or None when the label is late (no pending prediction)."""
        self.expire(max(self.watermark, ts))
        hit = self._pending.pop((model, id), None)
        if hit is None:
            self.late += 1
            return None
        version, prediction, pred_ts = hit
        self.joined += 1
        return Outcome(model, version, id, prediction, label, max(0.0, ts - pred_ts))

    def expire(self, now: float) -> int:
        """Drop predictions older than ``ttl`` at event time ``now``; returns how many.

        Predictions arrive in roughly event-time order, so the oldest are at the front;
        one out of order stays until the ones before it expire (bounded by max_pending).
        """
        n = 0
        while self._pending:
            (_, (_, _, ts)) = next(iter(self._pending.items()))
            if now - ts <= self.ttl:
                break
            self._pending.popitem(last=False)
            n += 1
        self.expired += n
        return n

    def join_ratio(self) -> float:
        """Labels joined over labels received (1.0 before any label)."""
        total = self.joined + self.late
        return self.joined / total if total else 1.0

    def to_state(self) -> dict[str, Any]:
        return {"ttl": self.ttl, "max_pending": self.max_pending,
                "pending": [[m, i, v, p, t] for (m, i), (v, p, t) in self._pending.items()],
                "joined": self.joined, "late": self.late, "expired": self.expired,
                "watermark": None if self.watermark == float("-inf") else self.watermark}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> LabelJoiner:
        j = cls(state["ttl"], state["max_pending"])
        for m, i, v, p, t in state["pending"]:
            j._pending[(m, i)] = (v, p, t)
        j.joined, j.late, j.expired = state["joined"], state["late"], state["expired"]
        j.watermark = float("-inf") if state["watermark"] is None else state["watermark"]
        return j
