"""The worker's delivery protocol: hold every consumed message until a checkpoint that covers
it is confirmed, then acknowledge it.

Faust commits a message's offset once it is acknowledged. :class:`Delivery` takes an extra
reference on every message it hands to the service (``take``), so nothing is committed when
the batch ends; a checkpoint (``checkpoint``) writes the changed shards to the state topic,
and once the producer has flushed it — with the events the messages caused — the messages it
covers are acknowledged and Faust commits them. A worker killed at any point is replaced by one
that restores the newest confirmed checkpoint and replays from the committed offset; the
service skips what the checkpoint already holds (see :mod:`driftwarden.stream.checkpoint`).

The flush (tens of MB for a busy partition) runs in the background while the agents go on;
one checkpoint is confirmed at a time; forced ones (a rebalance, shutdown) wait for it. A
checkpoint the broker did not take keeps its messages held: the next one covers them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from driftwarden.config import Settings
from driftwarden.stream.service import RawMessage
from driftwarden.stream.shards import Shards

log = logging.getLogger("driftwarden.stream")


class Delivery:
    """Holds, checkpoints and acknowledges (see the module docstring).

    ``consumer`` returns Faust's consumer (its ``assignment()``; messages are acknowledged
    with it); ``producer`` is the worker's OutputProducer (``flush``, ``renew_if_fatal``);
    ``metrics`` its Metrics (processing lag, checkpoints)."""

    def __init__(self, settings: Settings, shards: Shards, producer: Any, metrics: Any,
                 consumer: Callable[[], Any],
                 publish: Callable[[list[Any]], None] | None = None) -> None:
        self.settings = settings
        # where the outputs a confirmed checkpoint releases go (Shards.release; the worker's
        # side channels, then the producer)
        self.publish = publish or (lambda outputs: producer.send(outputs))
        self.shards = shards
        self.producer = producer
        self.metrics = metrics
        self.consumer = consumer
        self.held: dict[int, list[Any]] = {}             # partition -> messages held
        self.handled: dict[tuple[str, int], int] = {}    # last offset taken per partition
        self.restoring: dict[int, asyncio.Future[Any]] = {}
        self.confirming: list[asyncio.Future[None]] = []  # the checkpoint being confirmed
        self.lock = asyncio.Lock()
        self.checkpointed = time.monotonic()
        self.checkpoints = 0
        self.checkpoint_bytes = 0

    async def restore(self, partition: int) -> None:
        """Restore a partition's shard once, off the event loop (a message of it and the
        assignment may both ask)."""
        task = self.restoring.get(partition)
        if task is None:
            task = self.restoring[partition] = asyncio.ensure_future(
                asyncio.to_thread(self.shards.ensure, partition))
        try:
            await task
        finally:
            self.restoring.pop(partition, None)

    async def take(self, events: Any) -> list[RawMessage]:
        """The raw messages of a batch of Faust events, each held until a checkpoint covers
        it; messages of partitions revoked while buffered are left to their next owner."""
        assigned = self.consumer().assignment()
        out = []
        now = time.time()
        for e in events:
            m = e.message
            if m.timestamp:
                self.metrics.processing_lag.observe(max(0.0, now - m.timestamp))
            if m.tp not in assigned:  # revoked while buffered: its next owner replays it
                continue
            if m.partition not in self.shards.services:
                await self.restore(m.partition)
            m.incref()  # released by the checkpoint that includes it
            self.handled[(m.topic, m.partition)] = m.offset
            self.held.setdefault(m.partition, []).append(m)
            out.append(RawMessage(m.value or b"", _pairs(m.headers), m.topic, m.partition,
                                  m.offset, float(m.timestamp or time.time())))
            # held only to be acked: its body goes with the batch, not with the checkpoint
            # (held bodies were ~100 MB per second of batch traffic until a checkpoint)
            m.value = None
        return out

    async def checkpoint(self, force: bool = False, partitions: Iterable[int] | None = None
                         ) -> None:
        """Write a checkpoint of the changed shards (at most every ``checkpoint_seconds``
        unless forced); the messages it covers are released once it is confirmed."""
        if not force and (time.monotonic() - self.checkpointed
                          < self.settings.kafka.checkpoint_seconds
                          or (self.confirming and not self.confirming[0].done())):
            return
        async with self.lock:
            if self.confirming:
                await self.confirming.pop()
            written = self.shards.checkpoint(partitions)
            release = {p: self.held.pop(p, []) for p in written}
            self.checkpointed = time.monotonic()
            task = asyncio.ensure_future(self._confirm(written, release))
            self.confirming.append(task)
        if force:
            await task

    async def _confirm(self, written: dict[int, int], release: dict[int, list[Any]]) -> None:
        try:
            left = await asyncio.to_thread(self.producer.flush, 30.0)
        except Exception as exc:  # noqa: BLE001 - a fatal producer error: renew, hold on
            log.error("checkpoint not confirmed: %s", exc)
            left = -1
        if self.producer.renew_if_fatal():
            left = left or -1
        if left:  # the broker is away: keep holding; the next checkpoint covers them
            log.warning("checkpoint not confirmed (%d messages in flight)", left)
            for p, msgs in release.items():
                self.held[p] = msgs + self.held.get(p, [])
                self.shards.dirty.add(p)
            return
        consumer = self.consumer()
        for msgs in release.values():
            for m in msgs:
                m.ack(consumer)
        held = self.shards.release(written)  # outputs of wall-clock decisions, now covered
        if held:
            self.publish(held)
        self.checkpoints += 1
        self.checkpoint_bytes = sum(written.values())
        self.metrics.checkpoints.inc()
        self.metrics.checkpoint_bytes.set(self.checkpoint_bytes)

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions revoked (after their forced checkpoint): their next owner replays
        what is still held."""
        for p in partitions:
            self.held.pop(p, None)


def _pairs(headers: Any) -> list[tuple[str, bytes | None]]:
    if not headers:
        return []
    if isinstance(headers, dict):
        return list(headers.items())
    return [(k, v) for k, v in headers]
