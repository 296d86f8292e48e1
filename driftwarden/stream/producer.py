"""The worker's output producer: one idempotent confluent-kafka client for every output
(drift and action events, partials, join rows, watermarks, dead letters, checkpoint chunks).

Delivery is retried by librdkafka until acknowledged (``message.timeout.ms`` 0). What it
cannot retry is a **fatal error**: a broker that lost its state fences the idempotent
producer id (R7: a broker restarted empty answers with an out-of-order sequence) and the
client refuses everything after it. The producer then starts a new client and **re-sends
every output produced since the last confirmed checkpoint** — they were queued in the dead
client and may never have been delivered, while the state that produced them (a partial's
slice closed, a join row sent) has moved on. Re-sent outputs are recognised downstream:
partials by their source, slice, sequence and chunk; join rows by their source offsets;
events by their ``event_id``. Action events are the outbox's: it sends again what was in
flight. Checkpoint chunks are not re-sent: the next checkpoint writes a whole new base
(``on_renewed``).

What is kept for a re-send is bounded by what librdkafka may queue (its own bound blocks the
agents) plus one checkpoint interval of delivered outputs.

>>> from driftwarden.config import load_settings
>>> from driftwarden.embedded import free_port
>>> from driftwarden.stream.output import Output
>>> s = load_settings(env={"DRIFTWARDEN_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"})
>>> p = OutputProducer(s)
>>> p.send([Output("t", None, b"one"), Output("t", None, b"two")])
>>> len(p.unconfirmed)   # not confirmed by a flush yet (no broker here)
2
>>> p.fatal = "fenced"   # as librdkafka reports it
>>> p.renew_if_fatal(), p.resent   # a new client has both again
(True, 2)
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

from driftwarden.config import Settings
from driftwarden.kafka import client_config, produce
from driftwarden.stream.output import Output

log = logging.getLogger("driftwarden.stream")

__all__ = ["OutputProducer"]


def _fenced_codes() -> frozenset[int]:
    from confluent_kafka import KafkaError

    return frozenset(getattr(KafkaError, n) for n in (
        "PRODUCER_FENCED", "_FENCED", "INVALID_PRODUCER_EPOCH", "UNKNOWN_PRODUCER_ID",
        "_FATAL") if hasattr(KafkaError, n))


_FENCED = _fenced_codes()  # the client is unusable for good: a new one gets a new id


class OutputProducer:
    """Produces service outputs (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.config = client_config(
            settings, {"enable.idempotence": True, "acks": "all", "linger.ms": 5,
                       # checkpoints are plain JSON: compressed here, off the event loop
                       "compression.type": "lz4",
                       # never give up on an action: retry until delivered
                       "message.timeout.ms": 0, "error_cb": self._error})
        self.raw = self._client()
        self.fatal: Any = None  # librdkafka's fatal error, until the client is renewed
        self.renewed = 0
        self.failed = 0
        self.resent = 0  # outputs produced again through a renewed client
        # action event_ids produced and not yet acknowledged: the outbox does not queue them
        # a second time while librdkafka still retries them (the broker away for minutes)
        self.in_flight: set[str] = set()
        # called with the event_id of each action event the broker acknowledged
        self.on_action_delivered: Callable[[str], None] | None = None
        self.on_renewed: Callable[[], None] | None = None  # after a renewal
        self.actions_topic = settings.topics.actions
        # outputs (not actions) produced and not yet covered by a flush that left nothing in
        # flight: what a renewed client sends again
        self.unconfirmed: list[Output] = []
        self._lock = threading.Lock()  # flush runs off the event loop

    def _client(self) -> Any:
        from confluent_kafka import Producer

        return Producer(self.config, logger=log)

    def _error(self, err: Any) -> None:
        if err.fatal():  # e.g. the broker lost the idempotent producer's sequence
            self.fatal = err

    def _raised(self, exc: Exception) -> bool:
        """Whether ``exc`` (raised by produce, poll or flush) is librdkafka's fatal error —
        recorded for :meth:`renew_if_fatal`; it must never reach an agent, which would stop
        consuming for good."""
        err = exc.args[0] if exc.args else None
        if err is not None and hasattr(err, "fatal") and (err.fatal() or err.code() in _FENCED):
            self.fatal = err
            return True
        return False

    def renew_if_fatal(self) -> bool:
        """After a fatal error librdkafka's client produces nothing more: replace it and
        produce the unconfirmed outputs again (the outbox re-sends actions). True when it was
        renewed."""
        if self.fatal is None:
            return False
        log.error("output producer: fatal error %s; starting a new client and sending the "
                  "%d unconfirmed outputs again", self.fatal, len(self.unconfirmed))
        old, self.raw, self.fatal = self.raw, self._client(), None
        self.renewed += 1
        self.in_flight.clear()  # dropped with the old client: the outbox sends them again
        with contextlib.suppress(Exception):
            old.purge()
        with self._lock:
            again = list(self.unconfirmed)
        for o in again:
            self._produce(o, self._delivered)
        self.resent += len(again)
        if self.on_renewed is not None:  # what was queued may be missing: say so
            self.on_renewed()
        return True

    def _delivered(self, err: Any, msg: Any, event_id: str | None = None) -> None:
        if event_id is not None:
            self.in_flight.discard(event_id)
        if err is not None:
            self.failed += 1
            log.error("delivery to %s failed: %s", msg.topic(), err)
            if err.code() in _FENCED:  # a broker that lost its state fences this producer id
                self.fatal = err          # for good: a new client gets a new one
        elif event_id is not None and self.on_action_delivered is not None:
            self.on_action_delivered(event_id)

    def _produce(self, o: Output, callback: Callable[..., None]) -> bool:
        try:
            produce(self.raw, o.topic, o.value, o.key, headers=list(o.headers),
                    on_delivery=callback,
                    **({} if o.partition is None else {"partition": o.partition}))
            return True
        except Exception as exc:  # noqa: BLE001 - KafkaException: MSG_SIZE_TOO_LARGE, ...
            self.failed += 1
            self._raised(exc)
            log.error("could not produce %d bytes to %s: %s", len(o.value), o.topic, exc)
            return False

    def send(self, outputs: list[Output]) -> None:
        """Produce every output; one the client refuses (too large, say) is logged and
        counted, and the ones after it are still produced."""
        self.renew_if_fatal()
        for o in outputs:
            if o.topic != self.actions_topic:
                # kept whether or not the client took it: a fatal refusal is sent again
                if self._produce(o, self._delivered) or self.fatal is not None:
                    with self._lock:
                        self.unconfirmed.append(o)
                continue
            # delivery reports carry no headers: bind the action's id
            event_id = dict(o.headers).get("dw.event_id", b"").decode() or None
            if event_id in self.in_flight:  # queued already: retried by librdkafka
                continue
            if event_id is not None:
                self.in_flight.add(event_id)
            if not self._produce(o, functools.partial(self._delivered, event_id=event_id)):
                self.in_flight.discard(event_id)  # type: ignore[arg-type]  # outbox: again
        self.poll()

    def put(self, topic: str, value: bytes | None, key: bytes | None, partition: int) -> None:
        """Produce one message (a checkpoint chunk) through the current client; a fatal
        error is recorded for renewal and raised."""
        try:
            produce(self.raw, topic, value, key, partition=partition)
        except Exception as exc:
            self._raised(exc)
            raise

    def poll(self) -> None:
        """Serve delivery reports; a fatal error is recorded, not raised."""
        try:
            self.raw.poll(0)
        except Exception as exc:  # noqa: BLE001 - librdkafka raises its fatal error here
            if not self._raised(exc):
                raise

    def flush(self, timeout: float = 30.0) -> int:
        """Messages still in flight after ``timeout`` (-1 after a fatal error: nothing the
        client held will be delivered). When none is left, the outputs produced before the
        flush began are confirmed and no longer kept for a re-send."""
        with self._lock:
            mark = len(self.unconfirmed)
        try:
            left = int(self.raw.flush(timeout))
        except Exception as exc:  # noqa: BLE001 - librdkafka raises its fatal error here
            if not self._raised(exc):
                raise
            return -1
        if left == 0 and self.fatal is None:
            with self._lock:
                del self.unconfirmed[:mark]
        return left
