"""Side channels to slow or unreliable HTTP services — Grafana annotations and Alertmanager —
delivered from a thread of their own, so the stream never waits for them.

A :class:`SideSender` holds a bounded queue (``put`` never blocks; when full, the oldest item
is dropped and counted) and a thread that delivers items one by one. A delivery that raises
:class:`Transient` (a timeout, a refused connection, a 5xx or 429) is retried after an
exponential backoff (``min_backoff`` doubling to ``max_backoff``) with the item kept at the
head of the queue; any other error drops that item (a 400 will not become valid by waiting)
and is logged at most once a minute. Counters (sent, dropped, failures, queue depth) are
exported as Prometheus metrics by the worker.

>>> got = []
>>> s = SideSender("demo", got.append).start()
>>> s.put({"text": "hello"}); s.close()
>>> got, s.sent
([{'text': 'hello'}], 1)
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("driftwarden.notify")


class Transient(Exception):
    """The service is away or overloaded: try the same item again later."""


class SideSender:
    """Delivers items with ``deliver(item)`` from a daemon thread; see the module docstring."""

    def __init__(self, name: str, deliver: Callable[[Any], None], *, capacity: int = 10_000,
                 min_backoff: float = 0.5, max_backoff: float = 30.0) -> None:
        self.name = name
        self.deliver = deliver
        self.capacity = capacity
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.sent = 0
        self.dropped = 0      # pushed out of a full queue, or refused by the service
        self.failures = 0     # deliveries that failed (each retry counts)
        self._queue: deque[Any] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._busy = False
        self._thread: threading.Thread | None = None
        self._logged = -math.inf

    @property
    def depth(self) -> int:
        """Items waiting, the one being delivered included."""
        return len(self._queue) + self._busy

    def put(self, item: Any) -> None:
        """Queue ``item``; never blocks (a full queue drops its oldest item)."""
        with self._cond:
            if len(self._queue) >= self.capacity:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(item)
            self._cond.notify()

    def start(self) -> SideSender:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"driftwarden-{self.name}",
                                            daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued for at most ``timeout`` seconds, then stop the thread."""
        with self._cond:
            self._closing = True
            self._deadline = time.monotonic() + timeout
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout + 1.0)

    def _run(self) -> None:
        backoff = self.min_backoff
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue or (self._closing and time.monotonic() > self._deadline):
                    return
                item = self._queue.popleft()
                self._busy = True
            try:
                self.deliver(item)
            except Transient as exc:
                self.failures += 1
                self._warn("%s unavailable (%s); retrying in %.1f s", self.name, exc, backoff)
                with self._cond:
                    self._busy = False
                    self._queue.appendleft(item)  # first again; a full queue drops its oldest
                    if len(self._queue) > self.capacity:
                        self._queue.popleft()
                        self.dropped += 1
                    self._cond.wait_for(lambda: self._closing, timeout=backoff)  # or close
                    if self._closing and time.monotonic() > self._deadline:
                        return
                backoff = min(self.max_backoff, backoff * 2)
                continue
            except Exception as exc:  # noqa: BLE001 - refused for good: drop this item only
                self.failures += 1
                self.dropped += 1
                self._warn("%s refused an item, dropped: %s", self.name, exc)
            else:
                self.sent += 1
                backoff = self.min_backoff
            self._busy = False

    def _warn(self, fmt: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._logged >= 60.0:
            self._logged = now
            log.warning(fmt, *args)


# -- Grafana annotations ---------------------------------------------------------------------------
def annotation(event: Mapping[str, Any]) -> dict[str, Any]:
    """The Grafana annotation (``POST /api/annotations`` body) of a drift or action event:
    a point at the event's time, tagged so dashboards can query it by model.

    >>> a = annotation({"event_id": "e1", "model": "fraud", "version": "7", "kind": "data",
    ...                 "state": "onset", "severity": "critical", "features": ["amount"],
    ...                 "ts": 1764300000.5})
    >>> a["time"], a["tags"][:3]
    (1764300000500, ['driftwarden', 'drift', 'model:fraud'])
    >>> a["text"]
    'critical data drift onset on fraud v7: amount'
    """
    ms = int(round(float(event.get("ts") or time.time()) * 1000))
    model, version = str(event.get("model")), str(event.get("version"))
    tags = ["driftwarden"]
    if "action" in event:
        tags += ["action", f"model:{model}", f"version:{version}", f"action:{event['action']}"]
        target = event.get("target_version")
        text = (f"{event['action']} requested for {model} v{version}"
                + (f" → v{target}" if target else "") + f": {event.get('reason', '')}")
    else:
        kind, state, severity = event.get("kind"), event.get("state"), event.get("severity")
        tags += ["drift", f"model:{model}", f"version:{version}", f"kind:{kind}",
                 f"state:{state}", f"severity:{severity}"]
        features = ", ".join(map(str, event.get("features") or ())) or "-"
        lead = f"{severity} " if state != "recovery" else ""
        text = f"{lead}{kind} drift {state} on {model} v{version}: {features}"
    return {"time": ms, "timeEnd": ms, "tags": tags, "text": text.rstrip(": ")}


class GrafanaAnnotations:
    """``deliver`` for a :class:`SideSender`: posts one annotation with ``grafana-client``.
    Event ids already posted (the last 10,000) are skipped, so a replay after a restart does
    not double the marks."""

    def __init__(self, url: str, token: str | None, timeout: float = 5.0) -> None:
        from grafana_client import GrafanaApi

        self.api = GrafanaApi.from_url(url, credential=token or None, timeout=timeout)
        self.posted: OrderedDict[str, None] = OrderedDict()

    def __call__(self, item: tuple[str, dict[str, Any]]) -> None:
        from grafana_client.client import GrafanaClientError, GrafanaServerError

        event_id, body = item
        if event_id in self.posted:
            return
        try:
            self.api.annotations.add_annotation(
                panel_id=0, time_from=body["time"], time_to=body["timeEnd"],
                tags=body["tags"], text=body["text"])
        except GrafanaServerError as exc:
            raise Transient(f"Grafana {exc.status_code}") from None
        except GrafanaClientError as exc:
            if exc.status_code == 429:
                raise Transient("Grafana 429") from None
            raise
        except Exception as exc:  # noqa: BLE001 - timeouts, refused connections
            if isinstance(exc, (ValueError, TypeError, KeyError)):
                raise
            raise Transient(f"{type(exc).__name__}") from None
        self.posted[event_id] = None
        if len(self.posted) > 10_000:
            self.posted.popitem(last=False)


# -- Alertmanager --------------------------------------------------------------------------------
_LABEL = re.compile(r"\{\{\s*\$labels\.(\w+)\s*\}\}")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def _fill(template: str, labels: Mapping[str, str]) -> str:
    """A rule annotation with its ``{{ $labels.x }}`` filled in."""
    return _LABEL.sub(lambda mt: labels.get(mt.group(1), ""), template)


def _alert_name(kind: str, severity: str) -> str:
    if kind == "concept":
        return "DriftwardenConceptDrift"
    if kind == "quality":
        return "DriftwardenDataQuality"
    return "DriftwardenModelDriftCritical" if severity == "critical" else (
        "DriftwardenModelDriftWarning")


class AlertmanagerAlerts:
    """Turns the worker's current verdicts into Alertmanager v2 alerts (``POST
    /api/v2/alerts``), the way Prometheus does for its rules: every firing alert is re-sent
    each ``resend`` seconds with ``endsAt`` four resends ahead (so Alertmanager resolves it by
    itself if the worker dies), and an alert that stopped firing is sent once more with
    ``endsAt`` now. Names, severities, summaries and runbook links are those of the
    Prometheus rules (:mod:`driftwarden.alerts`), plus the label ``source="worker"``.

    >>> am = AlertmanagerAlerts("http://127.0.0.1:9093", resend=60)
    >>> v = {"model": "fraud", "version": "7", "kind": "data", "drift": True,
    ...      "severity": "critical", "features": ["amount"]}
    >>> [a["labels"]["alertname"] for a in am.snapshot([v], now=0.0)]
    ['DriftwardenModelDriftCritical']
    >>> [a["endsAt"] for a in am.snapshot([{**v, "drift": False}], now=10.0)]
    ['1970-01-01T00:00:10Z']
    """

    def __init__(self, url: str, *, resend: float = 60.0, timeout: float = 5.0,
                 runbook_base: str | None = None) -> None:
        from driftwarden.alerts import AlertConfig, alerts

        config = AlertConfig() if runbook_base is None else AlertConfig(runbook_base=runbook_base)
        self.rules = {a.name: a.rule(config) for a in alerts(config)}
        self.url = url.rstrip("/") + "/api/v2/alerts"
        self.resend = resend
        self.timeout = timeout
        self.firing: dict[tuple[str, ...], dict[str, Any]] = {}
        # stopped alerts are re-sent as resolved until their last endsAt would have passed,
        # so a resolution survives an Alertmanager outage
        self.resolved: dict[tuple[str, ...], tuple[dict[str, Any], float]] = {}

    def snapshot(self, verdicts: Iterable[Mapping[str, Any]], now: float | None = None
                 ) -> list[dict[str, Any]]:
        """The alerts to post now: every firing verdict, and the ones that just stopped."""
        now = time.time() if now is None else now
        current: dict[tuple[str, ...], dict[str, Any]] = {}
        for v in verdicts:
            if not v.get("drift"):
                continue
            name = _alert_name(str(v["kind"]), str(v["severity"]))
            rule: dict[str, Any] = self.rules[name]
            labels = {"alertname": name, "model": str(v["model"]),
                      "version": str(v["version"]), "kind": str(v["kind"]),
                      "severity": rule["labels"]["severity"], "source": "worker"}
            notes = {k: _fill(str(text), labels) for k, text in rule["annotations"].items()}
            features = ", ".join(map(str, v.get("features") or ()))
            if features:
                notes["description"] += f" Features: {features}."
            key: tuple[str, ...] = (name, labels["model"], labels["version"], labels["kind"])
            started = self.firing.get(key, {}).get("startsAt", _iso(now))
            current[key] = {"labels": labels, "annotations": notes, "startsAt": started,
                            "endsAt": _iso(now + 4 * self.resend)}
        for key, alert in self.firing.items():
            if key not in current:
                self.resolved[key] = ({**alert, "endsAt": _iso(now)}, now + 4 * self.resend)
        for key in current:
            self.resolved.pop(key, None)
        self.resolved = {k: (a, until) for k, (a, until) in self.resolved.items() if now < until}
        self.firing = current
        return list(current.values()) + [a for a, _ in self.resolved.values()]

    def __call__(self, alerts: list[dict[str, Any]]) -> None:
        """``deliver`` for a :class:`SideSender` (whose capacity 1 keeps only the newest)."""
        import json
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.url, data=json.dumps(alerts).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout):  # noqa: S310 - configured URL
                return
        except urllib.error.HTTPError as exc:
            if exc.code >= 500 or exc.code == 429:
                raise Transient(f"Alertmanager {exc.code}") from None
            raise ValueError(f"Alertmanager {exc.code}: {exc.read()[:200]!r}") from None
        except (OSError, TimeoutError) as exc:  # refused, unreachable, timed out
            raise Transient(type(exc).__name__) from None
