"""One :class:`~driftwarden.stream.service.StreamService` per source partition number.

State belongs to the partition it came from, so it can move with the partition when workers
join or leave the consumer group: a shard is restored from its checkpoint (see
:mod:`driftwarden.stream.checkpoint`) the first time a worker sees its partition, saved every
few seconds, and dropped when the partition is revoked. Every topic the worker consumes —
predictions, features, labels, joins, summaries — has the same partition count, and Faust
assigns the same partition number of each to one worker, so shard *p* holds all of partition
*p*: stage 1 of its input partitions, the join of its joins partition, stage 2 of the models
whose summaries partition it is (see :mod:`driftwarden.stream.service`).

**Held outputs** (:meth:`Shards._route`, :meth:`Shards.checkpoint`, :meth:`Shards.release`).
A shard's outputs depend on its input log alone — a replay after a crash repeats them, and
their consumers (stage 2's sequence numbers, the join's applied offsets, event ids) recognise
the repeats — except where a shard acts on the wall clock: a source idle for
``idle_close_seconds`` flushed, a source silent for ``source_idle_seconds`` no longer waited
for. A replay may take such a decision at another place in the log, or not at all, and
publish a partial under a sequence number stage 2 has already taken with other content —
dropped there as a repeat, its records lost (seen: 120 outcomes of a slice, after a worker was
killed). So what such a decision sends to the next stage (summaries, joins), and every such
output of that shard after it, waits in the shard's outbox, which is saved with its state;
once a checkpoint holding them is confirmed they are published, and a shard restored with an
outbox publishes it again first (repeats, recognised as such). The decision is then part of
the state every replay starts from.

>>> from driftwarden.config import load_settings
>>> from driftwarden.stream.service import RawMessage
>>> settings = load_settings(env={})
>>> shards = Shards(lambda p: StreamService(settings))
>>> outs = shards.handle("predictions", [RawMessage(b"{", [], "p", 3, 0, 1.0)])
>>> sorted(shards.services), shards.dirty, shards.invalid()["bad_json"]
([3], {3}, 1)
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import msgspec

from driftwarden.config import RolloutSpec
from driftwarden.errors import ValidationError
from driftwarden.stream.checkpoint import StateStore
from driftwarden.stream.monitor import ModelMonitor
from driftwarden.stream.service import Output, RawMessage, StreamService

log = logging.getLogger("driftwarden.stream")


class Shards:
    """The worker's services by partition; see the module docstring."""

    def __init__(self, factory: Callable[[int], StreamService],
                 store: StateStore | None = None) -> None:
        self.factory = factory
        self.store = store
        self.services: dict[int, StreamService] = {}
        self.dirty: set[int] = set()
        self.restored: dict[int, int] = {}  # partition -> checkpoint generation restored
        self.silenced: frozenset[str] = frozenset()
        self.failed_checkpoints = 0
        self.forget_until = 0.0  # see forget_offsets
        self.baselines: dict[tuple[str, str], Any] = {}  # fitted by stage 2 (BaselineFeed)
        # the partitions assigned to this worker (None: every one — in process); see ensure
        self.owned: set[int] | None = None
        self.drops: dict[int, int] = {}  # partition -> times dropped (a restore racing a drop)
        self.discarded = 0  # shards restored for a partition revoked meanwhile, thrown away
        # a restore installs its shard from a thread, a revocation drops on the event loop:
        # the check that the partition is still ours and the install are one step
        self._install = threading.Lock()
        # partitions whose outputs wait in their shard's outbox for a checkpoint (see "Held
        # outputs" in the module docstring),
        # and how many outbox items the last checkpoint written of each covers
        self.holding: set[int] = set()
        self.covered: dict[int, int] = {}

    def assign(self, partitions: Iterable[int]) -> None:
        """The group gave this worker ``partitions``: their shards may be made from now on."""
        if self.owned is None:
            self.owned = set()
        self.owned.update(partitions)

    def set_silenced(self, models: frozenset[str]) -> None:
        """Models whose actions are not emitted (silenced through the admin API)."""
        self.silenced = models
        for svc in self.services.values():
            svc.silenced = models

    def set_baseline(self, model: str, version: str, baseline: Any) -> None:
        """A baseline stage 2 fitted: every shard's stage 1 bins with it (new ones too)."""
        self.baselines[(model, version)] = baseline
        for svc in self.services.values():
            svc.set_baseline(model, version, baseline)

    def ensure(self, partition: int) -> StreamService | None:
        """The shard of ``partition``, restored from its checkpoint when it is new here; None
        for a partition not assigned to this worker (any more): a restore that ran while the
        partition was revoked (it runs off the event loop) is thrown away, never installed
        beside the next owner's — two shards of one partition would be two places deciding
        for its models."""
        svc = self.services.get(partition)
        if svc is None:
            if self.owned is not None and partition not in self.owned:
                return None
            drops = self.drops.get(partition, 0)
            svc = self.factory(partition)
            svc.silenced = self.silenced
            if self.store is not None:
                svc.tables().journal = True  # checkpoints save the tables' changes
                saved = self.store.read(partition)
                if saved is not None:
                    try:
                        svc.restore(saved.state, saved.pending, saved.deltas)
                    except ValidationError as exc:  # an older format: start afresh, say so
                        log.warning("partition %d: %s", partition, exc)
                        svc = self.factory(partition)
                        svc.silenced = self.silenced
                        svc.tables().journal = True
                    else:
                        self.restored[partition] = saved.generation
                        if time.monotonic() < self.forget_until:
                            svc.offsets = {}
            for (model, version), baseline in self.baselines.items():
                svc.set_baseline(model, version, baseline)
            with self._install:
                if self.drops.get(partition, 0) != drops or partition in self.services or (
                        self.owned is not None and partition not in self.owned):
                    self.discarded += 1
                    log.info("partition %d was revoked while it was restored: not kept here",
                             partition)
                    return self.services.get(partition)
                self.services[partition] = svc
        return svc

    def handle(self, kind: str, messages: Sequence[RawMessage]) -> list[Output]:
        """Hand each partition's messages to its shard (``kind``: predictions, labels, joins
        or summaries)."""
        by_partition: dict[int, list[RawMessage]] = {}
        for m in messages:
            by_partition.setdefault(m.partition, []).append(m)
        out: list[Output] = []
        for p, msgs in by_partition.items():
            svc = self.ensure(p)
            if svc is None:  # revoked since they were taken: the next owner replays them
                continue
            self.dirty.add(p)
            mine: list[Output] = []
            try:
                mine = getattr(svc, f"handle_{kind}")(msgs)
            except Exception as exc:  # noqa: BLE001 - the last net: the service isolates
                # each message itself, so this is a bug outside a message's own handling
                log.exception("partition %d: handling a batch of %d messages failed", p,
                              len(msgs))
                mine = []
                for m in msgs:
                    svc._internal_error(m, exc, mine)
            out += self._route(p, svc, mine)
        return out

    def _route(self, p: int, svc: StreamService, outputs: list[Output],
               decided: bool = False) -> list[Output]:
        """A shard's outputs: out now, or into its outbox while it holds (see "Held outputs"
        in the module docstring); ``decided``: they come from a wall-clock decision, which
        starts holding."""
        if self.store is None:  # in process: no checkpoint, no replay
            return outputs
        if decided:
            self.holding.add(p)
        if p in self.holding:
            # only what the next stage takes by sequence number or source offset waits;
            # drift and action events (deterministic ids, the store's outbox), dead letters
            # and baselines go out as before
            staged = (svc.topics.summaries, svc.topics.joins)
            svc.outbox += [o for o in outputs if o.topic in staged]
            return [o for o in outputs if o.topic not in staged]
        if svc.outbox:  # restored with its checkpoint: published again, before the rest
            outputs, svc.outbox = svc.outbox + outputs, []
            self.dirty.add(p)
        return outputs

    def release(self, written: Iterable[int]) -> list[Output]:
        """A checkpoint of ``written`` was confirmed: the outbox items it covered, to
        publish now, in order; a shard whose outbox is empty stops holding."""
        out: list[Output] = []
        for p in written:
            n = self.covered.pop(p, 0)
            svc = self.services.get(p)
            if svc is None or not n:
                continue
            out += svc.outbox[:n]
            del svc.outbox[:n]
            self.dirty.add(p)  # the outbox changed: the next checkpoint saves it emptier
            if not svc.outbox:
                self.holding.discard(p)
        return out

    def handle_idle(self, sources: Iterable[tuple[str, int]] | None = None) -> list[Output]:
        """Close the slices of idle models in every shard (or in those with a source among
        ``sources``, the input topic partitions read to their end; see
        StreamService.handle_idle); a shard that changed is checkpointed with the next
        round."""
        out: list[Output] = []
        wanted: dict[int, list[str]] | None = None
        if sources is not None:
            wanted = {}
            for topic, p in sources:
                wanted.setdefault(p, []).append(f"{topic}/{p}")
        for p, svc in list(self.services.items()):  # a restore may add one meanwhile
            if wanted is not None and p not in wanted:
                continue
            before = svc.idle_closes
            mine: list[Output] = []
            try:
                mine = svc.handle_idle(None if wanted is None else wanted[p])
            except Exception:  # noqa: BLE001 - the last net, as in handle
                log.exception("partition %d: closing idle slices failed", p)
            changed = svc.idle_closes != before
            if changed:
                self.dirty.add(p)
            out += self._route(p, svc, mine, decided=changed and bool(mine))
        return out

    def tick(self) -> list[Output]:
        """Every shard's merge stage at the wall clock (see StreamService.tick); a shard
        whose stage closed a slice is checkpointed with the next round."""
        out: list[Output] = []
        for p, svc in list(self.services.items()):
            before = svc.idle_closes
            mine = svc.tick()
            changed = svc.idle_closes != before
            if changed:
                self.dirty.add(p)
            out += self._route(p, svc, mine, decided=changed and bool(mine))
        return out

    def checkpoint(self, partitions: Iterable[int] | None = None) -> dict[int, int]:
        """Write the changed shards (or the given ones) to the store, unflushed; returns
        partition -> bytes written."""
        assert self.store is not None
        todo = sorted(self.dirty if partitions is None else set(partitions) & self.dirty)
        written = {}
        for p in todo:
            if p not in self.services:
                continue
            try:
                svc = self.services[p]
                written[p] = self.store.write(p, svc.to_state(pending=False), svc.tables())
                self.covered[p] = len(svc.outbox)
            except Exception:  # noqa: BLE001 - its messages stay held: replayed, never lost
                self.failed_checkpoints += 1
                log.exception("checkpoint of partition %d failed; its messages stay held", p)
                continue
            self.dirty.discard(p)
        return written

    def forget_offsets(self, window: float = 120.0) -> None:
        """Forget the offsets applied: the broker lost the log they name, and the new log's
        offsets start again at 0 (they must not be skipped as replays). Shards restored in
        the next ``window`` seconds forget theirs too: a checkpoint queued while the broker
        was away reaches the new one with the old log's offsets."""
        self.forget_until = time.monotonic() + window
        for p, svc in self.services.items():
            svc.offsets = {}
            self.dirty.add(p)

    def drop(self, partitions: Iterable[int]) -> None:
        """``partitions`` were revoked: their shards go (the next owner restores them)."""
        with self._install:
            for p in partitions:
                self.services.pop(p, None)
                self.dirty.discard(p)
                self.holding.discard(p)  # its outbox is in its checkpoint: the next owner's
                self.covered.pop(p, None)
                self.drops[p] = self.drops.get(p, 0) + 1
                if self.owned is not None:
                    self.owned.discard(p)

    # -- the worker's view over all shards -------------------------------------------------------
    @property
    def monitors(self) -> list[ModelMonitor]:
        return [m for svc in self.services.values() for m in svc.monitors.values()]

    def take_fresh_baselines(self) -> list[dict[str, Any]]:
        return [b for svc in self.services.values() for b in svc.take_fresh_baselines()]

    def verdicts(self) -> list[dict[str, Any]]:
        return [v for svc in self.services.values() for v in svc.verdicts()]

    def control_rollouts(self, config: Mapping[str, RolloutSpec],
                         rows: Sequence[Mapping[str, Any]]) -> list[Output]:
        """The rollouts as the store has them (``rows``, see Store.rollouts): those started
        through the admin API are judged alongside the config's, and a person's abort or
        promote by hand is applied — once: the verdicts it publishes are kept in the shard's
        state (checkpointed with the next round) and their event ids are deterministic."""
        specs = dict(config)
        for r in rows:
            if r["source"] == "api" and r["name"] not in specs:
                try:
                    specs[r["name"]] = msgspec.convert(r["spec"], RolloutSpec)
                except msgspec.ValidationError:
                    log.warning("rollout %s: its spec in the store is not valid", r["name"])
        out: list[Output] = []
        for p, svc in list(self.services.items()):
            svc.set_rollouts(specs)
            before = len(out)
            for r in rows:
                if r["status"] == "aborted":
                    out += svc.end_rollout(r["name"], "aborted through the admin API")
                elif r["status"] == "promoted" and r.get("promoted_by_hand"):
                    out += svc.end_rollout(
                        r["name"], "promoted by hand through the admin API",
                        promote=r["promoted_by_hand"])
            if len(out) != before:
                self.dirty.add(p)
        return out

    def rollouts(self) -> list[dict[str, Any]]:
        """The rollouts judged in this worker's shards (a model's live in one shard)."""
        return sorted((r for svc in self.services.values() for r in svc.rollouts()),
                      key=lambda r: r["name"])

    def invalid(self) -> Counter[str]:
        return sum((svc.invalid for svc in self.services.values()), Counter())

    def replayed(self) -> int:
        return sum(svc.replayed for svc in self.services.values())
