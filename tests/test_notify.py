"""Side channels (driftwarden.notify): the bounded, never-blocking sender; Grafana annotations
against the spec-validating Grafana stand-in (slow, failing, refusing); alerts posted straight
to a real Alertmanager (firing, re-sent, resolved)."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import ALERTMANAGER, active_alerts, alertmanager_service, get_json, wait_for
from grafana_stub import GrafanaStub
from prometheus_client import CollectorRegistry

from driftwarden.embedded import free_port
from driftwarden.metrics import Metrics
from driftwarden.notify import (
    AlertmanagerAlerts,
    GrafanaAnnotations,
    SideSender,
    Transient,
    annotation,
)

DRIFT = {"event_id": "e1", "incident_id": "i1", "model": "fraud", "version": "7",
         "kind": "data", "state": "onset", "severity": "critical",
         "features": ["amount", "country"], "evidence": [], "ts": 1764300000.25}
ACTION = {"event_id": "a1", "action": "rollback", "model": "fraud", "version": "7",
          "target_version": "6", "incident_id": "i1", "reason": "concept drift", "ts": 1764300001}


def test_sender_delivers_in_order_and_retries_transient_failures_with_backoff():
    got, attempts = [], []

    def deliver(item):
        attempts.append(time.monotonic())
        if len(attempts) <= 3:
            raise Transient("away")
        got.append(item)

    s = SideSender("t", deliver, min_backoff=0.05, max_backoff=0.2).start()
    for i in range(5):
        s.put(i)
    wait_for("delivery", lambda: len(got) == 5, 10)
    s.close()
    assert got == [0, 1, 2, 3, 4]  # the failed item was retried first, none lost
    assert (s.sent, s.failures, s.dropped, s.depth) == (5, 3, 0, 0)
    gaps = [b - a for a, b in zip(attempts, attempts[1:4], strict=False)]
    assert gaps[0] >= 0.04 and gaps[1] >= 0.09 and gaps[2] >= 0.18  # doubling backoff


def test_a_hanging_service_never_blocks_put_and_a_full_queue_drops_its_oldest():
    release, taken = threading.Event(), threading.Event()
    got = []

    def deliver(item):
        taken.set()
        release.wait(10)
        got.append(item)

    s = SideSender("t", deliver, capacity=3).start()
    s.put("first")  # taken by the thread, which now hangs
    assert taken.wait(5) and s.depth == 1
    t0 = time.perf_counter()
    for i in range(1000):
        s.put(i)
    took = time.perf_counter() - t0
    assert took < 0.5, took  # 1,000 puts while the service hangs: no waiting
    assert s.depth == 4 and s.dropped == 997  # three waiting, one in flight
    release.set()
    wait_for("the rest", lambda: s.depth == 0, 5)
    s.close()
    # the item in flight was delivered; of the rest, the newest three
    assert got == ["first", 997, 998, 999]


def test_a_refused_item_is_dropped_alone_and_close_is_bounded():
    got = []

    def deliver(item):
        if item == "bad":
            raise ValueError("400 bad request")
        got.append(item)

    s = SideSender("t", deliver).start()
    for item in ("a", "bad", "b"):
        s.put(item)
    wait_for("delivery", lambda: got == ["a", "b"], 5)
    assert s.dropped == 1

    def always_away(item):
        raise Transient("down")

    stuck = SideSender("t2", always_away, min_backoff=0.05).start()
    stuck.put("x")
    t0 = time.monotonic()
    stuck.close(timeout=0.5)
    assert time.monotonic() - t0 < 2.0 and stuck.depth == 1  # kept, not delivered, not hung


def test_sender_counters_are_exported_as_metrics():
    registry = CollectorRegistry()
    s = SideSender("grafana", lambda item: None)
    Metrics.create(registry, lambda: [], [s])
    s.put(1)
    s.put(2)
    assert registry.get_sample_value("driftwarden_notification_queue", {"sink": "grafana"}) == 2
    s.start()
    s.close()
    assert registry.get_sample_value("driftwarden_notifications_sent_total",
                                     {"sink": "grafana"}) == 2


def test_annotations_conform_to_grafanas_spec_and_survive_failures():
    with GrafanaStub() as g:
        post = GrafanaAnnotations(g.url, "token-123", timeout=0.5)
        post(("e1", annotation(DRIFT)))
        post(("a1", annotation(ACTION)))
        post(("e1", annotation(DRIFT)))  # a replayed event: posted once
        assert g.problems == [], g.problems
        assert len(g.annotations) == 2
        drift, action = g.annotations
        assert drift["time"] == drift["timeEnd"] == 1764300000250
        assert {"model:fraud", "version:7", "kind:data", "severity:critical"} <= set(drift["tags"])
        assert drift["text"] == "critical data drift onset on fraud v7: amount, country"
        assert {"action", "action:rollback", "model:fraud"} <= set(action["tags"])
        assert action["text"] == "rollback requested for fraud v7 → v6: concept drift"

        g.fail = 500  # Grafana failing: retry later
        with pytest.raises(Transient):
            post(("e2", annotation({**DRIFT, "event_id": "e2"})))
        g.fail, g.delay = None, 2.0  # slower than the timeout: retry later
        with pytest.raises(Transient):
            post(("e3", annotation({**DRIFT, "event_id": "e3"})))
        g.delay = 0.0
        g.fail = 400  # a request Grafana will never take: not retried
        with pytest.raises(Exception) as refused:
            post(("e4", annotation({**DRIFT, "event_id": "e4"})))
        assert not isinstance(refused.value, Transient)
    with pytest.raises(Transient):  # Grafana gone
        post(("e5", annotation({**DRIFT, "event_id": "e5"})))


def test_the_stub_rejects_an_annotation_the_spec_does_not_allow():
    # the check above can fail: a property Grafana's spec does not name is reported
    with GrafanaStub() as g:
        problems = g.spec.check("POST", "/api/annotations", {**annotation(DRIFT), "model": "x"})
        assert problems and "unknown property 'model'" in problems[0]
        assert g.spec.check("POST", "/api/annotations", {"time": "soon"})


def verdict(drift=True, severity="critical", kind="data", model="fraud"):
    return {"model": model, "version": "7", "kind": kind, "drift": drift,
            "severity": severity, "features": ["amount"]}


def test_alert_snapshots_follow_the_verdicts():
    am = AlertmanagerAlerts("http://127.0.0.1:9", resend=60)
    first = am.snapshot([verdict(), verdict(kind="concept", severity="warning"),
                         verdict(drift=False, kind="quality")], now=100.0)
    assert sorted(a["labels"]["alertname"] for a in first) == [
        "DriftwardenConceptDrift", "DriftwardenModelDriftCritical"]
    again = am.snapshot([verdict(), verdict(kind="concept", severity="warning")], now=160.0)
    # re-sent with the same start and a later end
    assert [a["startsAt"] for a in again] == [a["startsAt"] for a in first]
    assert all(a["endsAt"] == "1970-01-01T00:06:40Z" for a in again)  # 160 + 4 * 60
    recovered = am.snapshot([verdict(kind="concept", severity="warning")], now=220.0)
    ends = {a["labels"]["alertname"]: a["endsAt"] for a in recovered}
    assert ends["DriftwardenModelDriftCritical"] == "1970-01-01T00:03:40Z"  # resolved now
    # the resolution is repeated for four resends (an outage may swallow one), then dropped
    later = am.snapshot([verdict(kind="concept", severity="warning")], now=220.0 + 4 * 60)
    assert [a["labels"]["alertname"] for a in later] == ["DriftwardenConceptDrift"]
    with pytest.raises(Transient):
        am(recovered)  # nothing listens on port 9


@pytest.mark.skipif(ALERTMANAGER is None, reason="Debian package prometheus-alertmanager")
def test_alerts_posted_to_a_real_alertmanager_fire_and_resolve(tmp_path):
    port = free_port()
    service = alertmanager_service(tmp_path, port)
    service.start()
    try:
        wait_for("alertmanager", lambda: get_json(port, "/api/v2/status"), 30)
        am = AlertmanagerAlerts(f"http://127.0.0.1:{port}", resend=5)
        am(am.snapshot([verdict(), verdict(model="churn", severity="warning")]))
        firing = wait_for("two active alerts", lambda: (lambda a: a if len(a) == 2 else None)(
            active_alerts(port)), 10)
        by_model = {a["labels"]["model"]: a for a in firing}
        assert by_model["fraud"]["labels"] == {
            "alertname": "DriftwardenModelDriftCritical", "model": "fraud", "version": "7",
            "kind": "data", "severity": "critical", "source": "worker"}
        assert by_model["churn"]["labels"]["alertname"] == "DriftwardenModelDriftWarning"
        notes = by_model["fraud"]["annotations"]
        assert notes["summary"] == "critical data drift on fraud v7"
        assert notes["runbook_url"].endswith("#driftwardenmodeldriftcritical")
        assert "Features: amount." in notes["description"]
        am(am.snapshot([verdict(model="churn", severity="warning")]))  # fraud recovered
        left = wait_for("fraud resolved", lambda: (lambda a: a if len(a) == 1 else None)(
            active_alerts(port)), 10)
        assert left[0]["labels"]["model"] == "churn"
        with pytest.raises(ValueError):  # Alertmanager refuses a malformed alert: not retried
            am([{"labels": {}}])
    finally:
        service.stop()
