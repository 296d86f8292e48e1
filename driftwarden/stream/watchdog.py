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
>>> w.observe({("p", 0): 49}, {("p", 0): 50}, now=95.0)   # quiet for a minute
[]
>>> w.observe({("p", 0): 49}, {("p", 0): 60}, now=100.0)  # then a burst: not stalled
[]
>>> w.observe({("p", 0): 49}, {("p", 0): 60}, now=131.0)  # not taken for 31 s
[('p', 0)]
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from driftwarden.config import Settings
from driftwarden.kafka import client_config

log = logging.getLogger("driftwarden.stream")
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
            # the clock runs from the last move or the last time nothing was waiting: a
            # partition quiet for an hour that gets a message is not stalled at once
            if last is None or offset != last[0] or end - 1 <= offset:
                self._seen[tp] = (offset, now)
                continue
            if end - 1 > offset and now - last[1] >= self.stall_seconds:
                stalled.append(tp)
        for tp in [tp for tp in self._seen if tp not in ends]:
            del self._seen[tp]
        self.stalled = sorted(stalled)
        return self.stalled


class EndOffsets:
    """The broker's end offsets of topic partitions, on a connection of its own (so a stuck
    Faust consumer does not hide them)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._consumer: Any = None
        self._group: Any = None

    def get(self, tps: list[tuple[str, int]], timeout: float = 5.0) -> dict[tuple[str, int], int]:
        from confluent_kafka import Consumer, TopicPartition

        if self._consumer is None:
            self._consumer = Consumer(client_config(
                self.settings, {"group.id": f"{self.settings.kafka.group_id}-watchdog",
                                "enable.auto.commit": False}), logger=log)
        out = {}
        for topic, partition in tps:
            _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                          timeout=timeout, cached=False)
            out[(topic, partition)] = int(high)
        return out

    def committed(self, tps: list[tuple[str, int]], timeout: float = 5.0
                  ) -> dict[tuple[str, int], int]:
        """The workers' group's committed offsets (the next offset to read; partitions with
        none are left out). Asked by a client that never joins the group."""
        from confluent_kafka import Consumer, TopicPartition

        if self._group is None:
            self._group = Consumer(client_config(
                self.settings, {"group.id": self.settings.kafka.group_id,
                                "enable.auto.commit": False}), logger=log)
        got = self._group.committed([TopicPartition(t, p) for t, p in tps], timeout=timeout)
        return {(tp.topic, tp.partition): tp.offset for tp in got if tp.offset >= 0}


class WorkerHealth:
    """One round of the watchdog (the worker runs it every few seconds): the broker's end
    offsets on a connection of its own against the offsets the worker handled give the
    consumer lag, the stalled partitions, whether the broker has been unreachable for
    ``stall_seconds``, and which topic partitions are read to their end (``caught_up``: the
    sources that may be taken as idle — each on its own, so an unused features topic does not
    wait for the busy predictions partition of the same number). ``status`` and
    ``unhealthy`` are what /health and /ready say."""

    def __init__(self, settings: Settings, metrics: Any, ends: Any = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.ends = ends or EndOffsets(settings)
        self.watchdog = StallWatchdog(settings.kafka.stall_seconds)
        self.unreachable = False
        self.away_since: float | None = None
        self.caught_up: set[TP] = set()  # topic partitions read to their end at the last look
        self.positions: dict[TP, int] = {}  # the newest offset handled (or committed) per tp

    @property
    def stalled(self) -> list[TP]:
        return self.watchdog.stalled

    @property
    def unhealthy(self) -> bool:
        return bool(self.watchdog.stalled) or self.unreachable

    @property
    def status(self) -> str:
        return ("broker_unreachable" if self.unreachable else
                "stalled" if self.watchdog.stalled else "ok")

    async def check(self, tps: list[TP], handled: Mapping[TP, int]) -> str | None:
        """Look once at ``tps`` (the assigned source partitions); returns the error text when
        the broker did not answer (None when it did)."""
        now = time.monotonic()
        try:
            end = await asyncio.to_thread(self.ends.get, tps)
            # where this worker starts on a partition it has taken nothing from yet: after a
            # clean restart with nothing new, that is the end (not "nothing handled")
            missing = [tp for tp in tps if tp not in handled]
            committed = (await asyncio.to_thread(self.ends.committed, missing)
                         if missing else {})
        except Exception as exc:  # noqa: BLE001 - the broker may be away; try again later
            log.warning("stall watchdog: end offsets unavailable: %s", exc)
            self.caught_up.clear()
            if self.away_since is None:
                self.away_since = now
            self.unreachable = now - self.away_since >= self.settings.kafka.stall_seconds
            self.metrics.broker_unreachable.set(1 if self.unreachable else 0)
            return str(exc)
        self.away_since = None
        self.unreachable = False
        self.metrics.broker_unreachable.set(0)
        position = {tp: handled.get(tp, committed.get(tp, 0) - 1) for tp in tps}
        self.positions = position
        self.caught_up = {tp for tp in tps if end.get(tp, 0) - 1 <= position[tp]}
        self.metrics.set_consumer_lag({tp: max(0, e - 1 - position[tp])
                                       for tp, e in end.items()})
        stalled = self.watchdog.observe(position, end, now)
        self.metrics.stalled.set(len(stalled))
        if stalled:
            log.error("stalled partitions (messages waiting, no progress for %.0f s): %s",
                      self.settings.kafka.stall_seconds, stalled)
        return None
