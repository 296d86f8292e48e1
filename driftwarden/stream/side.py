"""The worker's side channels: what a batch's outputs mean besides the Kafka topics.

For every batch, :meth:`SideChannels.send` hands drift and action events to the SQL store
(incidents, the actions outbox), to Grafana as annotations and to Alertmanager as a fresh
snapshot of the paging verdicts, logs one line per event and per baseline fitted, then gives
the outputs to the producer. Each channel is a bounded :class:`~driftwarden.notify.SideSender`
on its own thread: a database, Grafana or Alertmanager that is slow or away never holds up the
stream (see the README's failure modes).

>>> describe({"model": "fraud", "version": "7", "kind": "data", "state": "onset",
...           "severity": "warning", "features": ["amount", "country"]}, False)
'drift onset: fraud v7 data (warning) features amount, country'
>>> describe({"model": "churn", "version": "2", "action": "rollback",
...           "target_version": "1", "reason": "concept drift"}, True)
'action rollback: churn v2 -> v1 (concept drift)'
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from driftwarden.config import Settings
from driftwarden.notify import AlertmanagerAlerts, GrafanaAnnotations, SideSender, annotation
from driftwarden.store import database_url
from driftwarden.store.sink import StoreSink
from driftwarden.stream.service import Output
from driftwarden.stream.shards import Shards

log = logging.getLogger("driftwarden.stream")


class SideChannels:
    """The store, Grafana and Alertmanager senders of one worker (see the module docstring).
    ``store`` is the store sink (its ``connect()`` also serves the admin API and the outbox);
    ``sinks`` every sender, for metrics, start and close."""

    def __init__(self, settings: Settings, shards: Shards, producer: Any) -> None:
        self.settings = settings
        self.shards = shards
        self.producer = producer
        self.notable = {settings.topics.drift, settings.topics.actions}
        g, a = settings.grafana, settings.alertmanager
        self.annotations: SideSender | None = None
        self.alerting: SideSender | None = None
        self.am: AlertmanagerAlerts | None = None
        if g.url:
            self.annotations = SideSender(
                "grafana", GrafanaAnnotations(g.url, g.token, g.timeout), capacity=g.queue)
        if a.url:
            self.am = AlertmanagerAlerts(a.url, resend=a.resend_seconds, timeout=a.timeout,
                                         runbook_base=a.runbook_base or settings.runbook_base)
            # capacity 1: only the newest snapshot of the alerts matters
            self.alerting = SideSender("alertmanager", self.am, capacity=1)
        # incidents and actions to the SQL store, off the event loop (a database that is down
        # or slow never stalls the stream; writes are retried until they succeed)
        self.store = StoreSink(database_url(settings))
        self.records = SideSender("database", self.store, capacity=1_000_000)
        producer.on_action_delivered = lambda event_id: self.records.put(
            ("delivered", event_id))
        self.sinks = [s for s in (self.records, self.annotations, self.alerting)
                      if s is not None]

    def send(self, outputs: list[Output]) -> None:
        """Queue a batch's records on the side channels, then produce its outputs."""
        try:
            self._side(outputs)
        except Exception:  # noqa: BLE001 - bookkeeping for side channels never stops a partition
            log.exception("side channels: could not queue the records of a batch")
        self.producer.send(outputs)  # after the records: an action's delivery mark comes later

    def _side(self, outputs: list[Output]) -> None:
        changed = False
        for o in outputs:  # drift and action events are rare: a JSON decode each is nothing
            if o.topic in self.notable:
                changed = True
                # decoded from the bytes produced, not taken from the service's dict: JSON-safe
                # (no NaN, no numpy) and exactly what consumers of the topics see
                event = orjson.loads(o.value)
                is_action = o.topic == self.settings.topics.actions
                self.records.put(("action" if is_action else "event", event))
                log.info("%s", describe(event, is_action))  # what the worker found, in a line
                if self.annotations is not None:
                    self.annotations.put((event["event_id"], annotation(event)))
        for fitted in self.shards.take_fresh_baselines():  # once per model version's warm-up
            log.info("baseline fitted: %s v%s from %s", fitted["model"], fitted["version"],
                     fitted["source"])
            self.records.put(("baseline", fitted))
        if changed:  # page now, not at the next resend
            self.page()

    def page(self) -> None:
        """Send Alertmanager the current snapshot of the paging verdicts (silenced models
        left out); nothing without Alertmanager."""
        if self.alerting is not None and self.am is not None:
            verdicts = [v for v in self.shards.verdicts() if v["model"] not in self.shards.silenced]
            self.alerting.put(self.am.snapshot(verdicts))

    def start(self) -> None:
        for sink in self.sinks:
            sink.start()

    async def close(self, timeout: float = 2.0) -> None:
        """A last try for what is queued, never a long wait."""
        for sink in self.sinks:
            await asyncio.to_thread(sink.close, timeout)


def describe(event: dict[str, Any], is_action: bool) -> str:
    """One log line for a drift or action event (see the module docstring)."""
    if is_action:
        target = f" -> v{event['target_version']}" if event.get("target_version") else ""
        return (f"action {event['action']}: {event['model']} v{event['version']}{target} "
                f"({event.get('reason', '')})")
    feats = list(event.get("features") or [])
    more = f" and {len(feats) - 10} more" if len(feats) > 10 else ""
    return (f"drift {event['state']}: {event['model']} v{event['version']} {event['kind']} "
            f"({event['severity']})" + (f" features {', '.join(feats[:10])}{more}"
                                        if feats else ""))
