"""Stall detection: a partition with messages waiting that the worker stops moving on.

Faust workers are known to stop fetching after a broker outage (faust-streaming #175 / #523)
while the process stays up. The watchdog compares, per assigned source partition, the
broker's end offset (asked on its own connection, not through Faust's consumer) with the
last offset the worker handled; a partition that has messages waiting and has not moved for
``stall_seconds`` is *stalled*, and the worker's ``/health`` and ``/ready`` say so (HTTP 503),
so an orchestrator restarts it.

>>> w = StallWatchdog(stall_seconds=30)
>>> w.observe({("p", 0): 10}, {("p", 0): 50}, now=0.0)
[]
>>> w.observe({("p", 0): 10}, {("p", 0): 50}, now=31.0)   # 39 waiting, no move in 31 s
[('p', 0)]
>>> w.observe({("p", 0): 49}, {("p", 0): 50}, now=32.0)   # caught up
[]
"""

from __future__ import annotations

from collections.abc import Mapping

TP = tuple[str, int]


class StallWatchdog:
    """Per partition: last offset handled, when it last moved; see the module docstring."""

    def __init__(self, stall_seconds: float = 60.0) -> None:
        self.stall_seconds = stall_seconds
        self._seen: dict[TP, tuple[int, float]] = {}  # tp -> (offset, since)
        self.stalled: list[TP] = []

    def observe(self, handled: Mapping[TP, int], ends: Mapping[TP, int], now: float
                ) -> list[TP]:
        """``handled``: last offset handled per partition (-1: none); ``ends``: the broker's
        end offsets (next offset to be written). Returns the stalled partitions."""
        stalled = []
        for tp, end in ends.items():
            offset = handled.get(tp, -1)
            last = self._seen.get(tp)
            if last is None or offset != last[0]:
                self._seen[tp] = (offset, now)
                continue
            if end - 1 > offset and now - last[1] >= self.stall_seconds:
                stalled.append(tp)
        for tp in [tp for tp in self._seen if tp not in ends]:
            del self._seen[tp]
        self.stalled = sorted(stalled)
        return self.stalled
