"""The worker's writer to the store: drift events, action events and their delivery, written
from a :class:`~driftwarden.notify.SideSender` thread so a database that is down or slow never
stops the stream. A lost connection (or a database not up yet when the worker starts) is a
:class:`~driftwarden.notify.Transient` failure: the item stays at the head of the queue and is
retried with backoff, and since every write is idempotent by ``event_id``, a retry after a
write whose commit was lost records nothing twice.

>>> from driftwarden.notify import SideSender
>>> sink = StoreSink("sqlite://")
>>> s = SideSender("database", sink).start()
>>> s.put(("action", {"event_id": "a1", "action": "review", "model": "m", "version": "1",
...                   "incident_id": "i1", "ts": 0}))
>>> s.put(("delivered", "a1")); s.close()
>>> [(a["event_id"], a["status"]) for a in sink.store.actions()]
[('a1', 'delivered')]
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy.exc import DBAPIError, OperationalError

from driftwarden.notify import Transient
from driftwarden.store import Store

log = logging.getLogger("driftwarden.store")


class StoreSink:
    """``deliver`` for a SideSender: items ``("event", drift_event)``, ``("action",
    action_event)``, ``("delivered", event_id)`` or ``("baseline", {model, version, summary,
    rows, source})`` (a warm-up fit; not stored again when equal to the newest revision)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.store: Store | None = None
        self._lock = threading.Lock()  # the writer thread and the API / timers' threads
        self.connect()  # best effort now; else at the first item

    def connect(self) -> Store | None:
        """The store, opened (and migrated) on first use; None while the database is away."""
        with self._lock:
            if self.store is None:
                try:
                    self.store = Store(self.url, timeout=5.0)
                except (OperationalError, DBAPIError) as exc:
                    log.warning("database unavailable (%s); will retry", type(exc).__name__)
            return self.store

    def __call__(self, item: tuple[str, Any]) -> None:
        store = self.connect()
        if store is None:
            raise Transient("database unavailable")
        what, payload = item
        try:
            if what == "event":
                store.record_event(payload)
            elif what == "action":
                store.record_action(payload)
                if payload.get("rollout"):  # a rollout's verdict: its history too
                    store.record_rollout_verdict(payload)
            elif what == "delivered":
                store.mark_delivered(payload)
            elif what == "baseline":
                store.add_baseline(payload["model"], payload["version"], payload["summary"],
                                   rows=payload["rows"], source=payload["source"],
                                   actor="worker", unless_same=True)
            else:
                raise ValueError(f"unknown store item {what!r}")
        except OperationalError as exc:
            raise Transient(type(exc.orig).__name__ if exc.orig else "OperationalError") from None
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise Transient("connection lost") from None
            raise
