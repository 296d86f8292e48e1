"""The delivery protocol in process (driftwarden/stream/delivery.py): a message is acknowledged
only once a checkpoint that covers it has been flushed; a checkpoint the broker did not take
keeps its messages held for the next one. (The same protocol against the real broker and
`kill -9`: tests/test_restart.py and the fault suite.)"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from driftwarden.config import load_settings
from driftwarden.stream.delivery import Delivery
from driftwarden.stream.service import RawMessage, StreamService
from driftwarden.stream.shards import Shards


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


@dataclass
class Message:
    """What Delivery uses of a Faust message: its place, body, reference count and ack."""

    tp: TP
    offset: int
    value: bytes | None = b'{"model": "m", "features": {"x": 1.0}}'
    headers: list = field(default_factory=list)
    timestamp: float = 1.7e9
    refs: int = 0
    acked: bool = False

    @property
    def topic(self):
        return self.tp.topic

    @property
    def partition(self):
        return self.tp.partition

    def incref(self):
        self.refs += 1

    def ack(self, consumer):
        assert consumer is CONSUMER
        self.acked = True


@dataclass
class Event:
    message: Message


class Consumer:
    def __init__(self):
        self.assigned = {TP("p", 0), TP("p", 1)}

    def assignment(self):
        return set(self.assigned)


CONSUMER = Consumer()


class Producer:
    def __init__(self):
        self.left = 0  # messages the broker has not taken (0: all flushed)

    def flush(self, timeout):
        return self.left

    def renew_if_fatal(self):
        return False


class Store:
    """Checkpoints written, by partition (the state topic's part of StateStore)."""

    def __init__(self):
        self.written = []

    def read(self, partition):
        return None

    def write(self, partition, state, labels):
        self.written.append(partition)
        return 100


class Metrics:
    class _C:
        def inc(self, *a):
            pass

        def set(self, *a):
            pass

        def observe(self, *a):
            pass

    processing_lag = checkpoints = checkpoint_bytes = _C()


def setup():
    settings = load_settings(env={"DRIFTWARDEN_KAFKA__CHECKPOINT_SECONDS": "0"})
    shards = Shards(lambda p: StreamService(settings), Store())
    producer = Producer()
    return Delivery(settings, shards, producer, Metrics(), lambda: CONSUMER), producer


def test_messages_are_acknowledged_only_after_their_checkpoint_is_flushed():
    async def run():
        d, producer = setup()
        msgs = [Message(TP("p", i % 2), i // 2) for i in range(6)]
        raw = await d.take([Event(m) for m in msgs])
        assert [r.offset for r in raw] == [0, 0, 1, 1, 2, 2] and all(m.refs == 1 for m in msgs)
        assert all(m.value is None for m in msgs)  # bodies are not kept while held
        d.shards.handle("predictions", raw)
        producer.left = 3  # the broker is away: nothing acknowledged, all still held
        await d.checkpoint(force=True)
        assert not any(m.acked for m in msgs) and sum(map(len, d.held.values())) == 6
        assert d.shards.dirty == {0, 1} and d.checkpoints == 0
        producer.left = 0  # back: the next checkpoint covers them all
        await d.checkpoint(force=True)
        assert all(m.acked for m in msgs) and d.held == {} and d.checkpoints == 1
        assert d.handled == {("p", 0): 2, ("p", 1): 2}

    asyncio.run(run())


def test_a_revoked_partitions_buffered_messages_are_left_to_its_next_owner():
    async def run():
        d, _ = setup()
        CONSUMER.assigned = {TP("p", 0)}
        try:
            msgs = [Message(TP("p", 0), 0), Message(TP("p", 1), 0)]
            raw = await d.take([Event(m) for m in msgs])
            assert [(r.partition, r.offset) for r in raw] == [(0, 0)] and msgs[1].refs == 0
            d.forget([0])  # revoked after its forced checkpoint: nothing held any more
            assert d.held == {}
        finally:
            CONSUMER.assigned = {TP("p", 0), TP("p", 1)}

    asyncio.run(run())


class SlowStore(Store):
    """A checkpoint read that takes until the test lets it finish (a big state, a slow
    broker): the restore runs off the event loop meanwhile."""

    def __init__(self):
        super().__init__()
        import threading

        self.reading, self.go = threading.Event(), threading.Event()

    def read(self, partition):
        self.reading.set()
        assert self.go.wait(10)
        return None


def test_a_restore_overtaken_by_the_partitions_revocation_is_not_kept():
    """Restores run off the loop: a partition revoked while its restore runs must not get a
    shard here once the restore ends (its next owner has one: two shards of one partition
    would be two places deciding for its models — seen in the three-worker topology test)."""
    async def run():
        d, _ = setup()
        d.shards.store = store = SlowStore()
        d.shards.assign({0, 1})
        restoring = asyncio.ensure_future(d.restore(0))
        await asyncio.to_thread(store.reading.wait, 10)
        d.shards.drop({0})  # the group took it away meanwhile
        store.go.set()
        await restoring
        assert 0 not in d.shards.services and d.shards.discarded == 1
        # a message of it taken before the revocation is left to the next owner
        assert d.shards.handle("predictions", [RawMessage(b"{}", [], "p", 0, 0, 1.0)]) == []
        assert 0 not in d.shards.services
        d.shards.assign({0})  # given back later: restored as usual
        await d.restore(0)
        assert 0 in d.shards.services and 1 not in d.shards.services
        await d.restore(1)
        assert sorted(d.shards.services) == [0, 1]

    asyncio.run(run())


class Ends:
    """The broker's end and committed offsets as the watchdog asks for them (None: away)."""

    def __init__(self):
        self.end = {("p", 0): 10, ("p", 1): 5, ("f", 0): 0}  # f: a topic nobody writes to
        self.away = False

    def get(self, tps):
        if self.away:
            raise RuntimeError("broker away")
        return {tp: self.end[tp] for tp in tps}

    def committed(self, tps):
        return {("p", 1): 5}  # the group had read p/1 to its end before this worker started


class HealthMetrics(Metrics):
    broker_unreachable = stalled = Metrics._C()

    def set_consumer_lag(self, lag):
        self.lag = lag


def test_the_watchdog_round_gives_lag_caught_up_partitions_and_an_unreachable_broker():
    from driftwarden.stream.watchdog import WorkerHealth

    async def run():
        settings = load_settings(env={"DRIFTWARDEN_KAFKA__STALL_SECONDS": "0.2"})
        ends, metrics = Ends(), HealthMetrics()
        h = WorkerHealth(settings, metrics, ends)
        tps = [("p", 0), ("p", 1), ("f", 0)]
        assert await h.check(tps, {("p", 0): 4}) is None
        # each topic partition on its own: the empty f/0 is read to its end while p/0 is not
        # (by partition number, f/0 waited for p/0, and the merge stage for f/0)
        assert metrics.lag == {("p", 0): 5, ("p", 1): 0, ("f", 0): 0}
        assert h.caught_up == {("p", 1), ("f", 0)}
        assert h.status == "ok" and not h.unhealthy
        await asyncio.sleep(0.25)
        assert await h.check(tps, {("p", 0): 4}) is None
        assert h.stalled == [("p", 0)] and h.status == "stalled"  # waiting, no progress
        assert await h.check(tps, {("p", 0): 9}) is None
        assert h.caught_up == {("p", 0), ("p", 1), ("f", 0)} and not h.unhealthy
        ends.away = True
        assert await h.check(tps, {("p", 0): 9}) == "broker away"
        assert h.caught_up == set() and not h.unreachable  # not yet for stall_seconds
        await asyncio.sleep(0.25)
        await h.check(tps, {("p", 0): 9})
        assert h.unreachable and h.status == "broker_unreachable" and h.unhealthy
        ends.away = False
        assert await h.check(tps, {("p", 0): 9}) is None and h.status == "ok"

    asyncio.run(run())


def test_outputs_of_a_wall_clock_decision_wait_for_the_checkpoint_that_holds_it():
    """A source closed for idleness (a decision of the wall clock, which a replay would not
    repeat at the same place): its outputs, and every output of that shard after them, wait
    in the shard's outbox until a checkpoint holding them is confirmed, then go out in order;
    a shard restored with an outbox publishes it again first."""
    import orjson

    settings = load_settings(env={"DRIFTWARDEN_KAFKA__CHECKPOINT_SECONDS": "0",
                                  "DRIFTWARDEN_KAFKA__PARTITIONS": "1",
                                  "DRIFTWARDEN_DETECTION__SLICE_SECONDS": "1"})
    clock = [0.0]
    saved = {}

    class Saving(Store):
        def read(self, partition):
            return saved.get(partition)

        def write(self, partition, state, labels):
            from types import SimpleNamespace
            saved[partition] = SimpleNamespace(state=orjson.loads(orjson.dumps(state)),
                                               pending=None, deltas=(), generation=1)
            return 100

    def make(p):
        svc = StreamService(settings, loopback=False, partition=p)
        svc.monotonic = lambda: clock[0]
        return svc

    shards = Shards(make, Saving())
    published = []
    producer = Producer()
    delivery = Delivery(settings, shards, producer, Metrics(), lambda: CONSUMER,
                        publish=published.extend)

    def records(t0, n):
        return [RawMessage(orjson.dumps({"model": "m", "version": "1", "ts": 1.7e9 + t0 + i,
                                         "features": {"x": float(i)}}), [],
                           "driftwarden.predictions", 0, int(t0) + i, 1.7e9 + t0 + i)
                for i in range(n)]

    first = shards.handle("predictions", records(0, 5))
    assert first and not shards.holding  # deterministic outputs: out at once
    clock[0] = 60.0  # quiet for a minute: the source is idle, its open slices flushed
    assert shards.handle_idle([("driftwarden.predictions", 0)]) == []
    assert shards.holding == {0}
    flushed = list(shards.services[0].outbox)
    assert any(o.topic == "driftwarden.summaries" for o in flushed)
    later = records(100, 3)
    assert shards.handle("predictions", later) == []  # after the decision: held too
    assert len(shards.services[0].outbox) > len(flushed)
    in_order = list(shards.services[0].outbox)
    # the broker does not take the checkpoint: nothing is released
    producer.left = 1
    asyncio.run(delivery.checkpoint(force=True))
    assert published == [] and shards.holding == {0}
    # a shard restored from that checkpoint publishes its outbox first
    again = Shards(make, Saving())
    assert again.handle("predictions", records(200, 1))[:len(in_order)] == in_order
    # confirmed: released in order, and the shard's outputs flow again
    producer.left = 0
    asyncio.run(delivery.checkpoint(force=True))
    assert published == in_order and not shards.holding and not shards.services[0].outbox
    assert shards.handle("predictions", records(300, 1)) != []
