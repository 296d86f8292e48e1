"""End to end with the real services: broker → worker → Debian's Prometheus (scraping the worker,
evaluating the generated rules) → Debian's Alertmanager. Drift injected into the stream is an
active alert in Alertmanager within a stated bound; every PromQL building block of the rules
returns data; Alertmanager stopped for a minute during an active alert has it again after it
returns (Prometheus re-sends)."""

from __future__ import annotations

import shutil
import time
import urllib.parse
import urllib.request

import numpy as np
import orjson
import pytest
import yaml
from confluent_kafka import Producer
from conftest import (
    ALERTMANAGER,
    Service,
    active_alerts,
    alertmanager_service,
    get_json,
    wait_for,
)
from grafana_stub import GrafanaStub

from driftwarden import alerts as rules
from driftwarden import dashboards, promql
from driftwarden.config import Topics
from driftwarden.embedded import free_port

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None or ALERTMANAGER is None,
                                reason="Debian packages prometheus, prometheus-alertmanager")

PREFIX = "e2e"

TOPICS = Topics.__struct_fields__  # every topic, so a test's worker shares none
ALERT_BOUND = 45.0  # seconds from the drifted records being produced to the alert in AM


@pytest.fixture
def stack(broker, spawn_worker, tmp_path):
    am_port, prom_port = free_port(), free_port()
    grafana = GrafanaStub().__enter__()
    grafana.fail, grafana.delay = 500, 2.0  # Grafana failing, and slowly, as the stream starts
    env = {f"DRIFTWARDEN_TOPICS__{t.upper()}": f"{PREFIX}.{t}" for t in TOPICS}
    env.update({"DRIFTWARDEN_KAFKA__GROUP_ID": f"{PREFIX}-workers",
                "DRIFTWARDEN_DETECTION__SLICES": "3", "DRIFTWARDEN_DETECTION__SLICE_SECONDS": "1",
                "DRIFTWARDEN_DETECTION__ALLOWED_LATENESS": "0.2",
                "DRIFTWARDEN_DETECTION__CALIBRATION_SIMS": "50",
                "DRIFTWARDEN_KAFKA__STALL_SECONDS": "8",
                # the worker's side channels: annotations, and alerts posted directly
                "DRIFTWARDEN_GRAFANA__URL": grafana.url, "DRIFTWARDEN_GRAFANA__TIMEOUT": "1",
                "DRIFTWARDEN_GRAFANA__TOKEN": "s3cret-token",
                "DRIFTWARDEN_ALERTMANAGER__URL": f"http://127.0.0.1:{am_port}",
                "DRIFTWARDEN_ALERTMANAGER__RESEND_SECONDS": "2",
                # a canary of fraud v2 for the last seconds: the rollout series exist
                "DRIFTWARDEN_ROLLOUTS": orjson.dumps({"fraud-v2": {
                    "model": "fraud", "baseline": "1", "candidates": ["2"]}}).decode()})
    proc, worker_port, worker_log = spawn_worker(broker.bootstrap_servers, env)

    am = alertmanager_service(tmp_path, am_port)
    # the generated rules with `for:` shortened to seconds, so the test waits seconds
    config = rules.AlertConfig(drift_for="5s", critical_for="5s")
    (tmp_path / "rules.yml").write_text(rules.render_rules(config))
    prom_cfg = tmp_path / "prometheus.yml"
    prom_cfg.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "rules.yml")],
        "alerting": {"alertmanagers": [{"static_configs": [
            {"targets": [f"127.0.0.1:{am_port}"]}]}]},
        "scrape_configs": [{"job_name": config.job, "static_configs": [
            {"targets": [f"127.0.0.1:{worker_port}"]}]}]}))
    prom = Service([PROMETHEUS, f"--config.file={prom_cfg}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                    f"--storage.tsdb.path={tmp_path / 'prom'}", "--rules.alert.resend-delay=1s",
                    "--web.enable-lifecycle"], tmp_path / "prometheus.log")
    am.start()
    prom.start()
    try:
        wait_for("alertmanager", lambda: get_json(am_port, "/api/v2/status"), 30)
        wait_for("prometheus", lambda: get_json(prom_port, "/api/v1/status/buildinfo"), 30)
        yield {"broker": broker, "worker": proc, "worker_log": worker_log, "am": am,
               "am_port": am_port, "prom_port": prom_port, "config": config,
               "tmp": tmp_path, "worker_port": worker_port, "grafana": grafana}
    finally:
        prom.stop()
        am.stop()
        grafana.__exit__(None, None, None)


def produce_scenario(bootstrap):
    p = Producer({"bootstrap.servers": bootstrap})
    rng = np.random.default_rng(0)
    topic = f"{PREFIX}.predictions"
    for t in range(24):
        for i in range(500):
            canary = t >= 22 and i % 10 == 0  # v2 takes 10 % for the last two seconds
            rec = {"model": "fraud", "version": "2" if canary else "1", "id": f"{t}-{i}",
                   "ts": 1000 + t + i / 500,
                   "features": {"amount": float(rng.normal(2.0 if t >= 12 else 0.0, 1)),
                                "country": str(rng.choice(["DE", "FR"]))},
                   "prediction": float(rng.random())}
            p.produce(topic, key=b"fraud", value=orjson.dumps(rec))
        p.poll(0)
    p.produce(topic, key=b"fraud", value=b"{not json")  # one dead letter
    for i in range(500):  # labels for the last second: the concept detector gets outcomes
        p.produce(f"{PREFIX}.labels", key=b"fraud",
                  value=orjson.dumps({"model": "fraud", "id": f"23-{i}", "label": 1}))
    assert p.flush(30) == 0


def sink_counts(port):
    """The worker's side-channel counters for Grafana, once one was sent."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            if sample.labels.get("sink") == "grafana" and sample.name.endswith("_total"):
                what = sample.name.removeprefix("driftwarden_").split("_")[1]
                out[what] = sample.value
    return out if out.get("sent") else None


def query(prom_port, expr):
    body = get_json(prom_port, "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert body is not None and body["status"] == "success", (expr, body)
    return body["data"]["result"]


def test_drift_reaches_alertmanager_and_survives_its_restart(stack):
    started = time.monotonic()
    produce_scenario(stack["broker"].bootstrap_servers)
    am_port, prom_port = stack["am_port"], stack["prom_port"]

    def drift_alert(source=None):  # source None: from Prometheus' rules; "worker": direct
        return [a for a in active_alerts(am_port)
                if a["labels"]["alertname"].startswith("DriftwardenModelDrift")
                and a["labels"].get("model") == "fraud"
                and a["labels"].get("source") == source]

    alert = wait_for("the drift alert in Alertmanager", drift_alert, ALERT_BOUND)[0]
    took = time.monotonic() - started
    print(f"drift alert active in Alertmanager {took:.1f} s after producing began")
    assert took <= ALERT_BOUND
    # the worker posted its own alert too, named and annotated like the rule's
    direct = wait_for("the worker's own alert", lambda: drift_alert("worker"), 10)[0]
    assert direct["labels"]["kind"] == "data" and direct["labels"]["version"] == "1"
    assert direct["annotations"]["runbook_url"] == alert["annotations"]["runbook_url"] or (
        direct["labels"]["alertname"] != alert["labels"]["alertname"])
    assert "{{" not in direct["annotations"]["summary"] + direct["annotations"]["description"]
    assert "fraud v1" in direct["annotations"]["summary"]
    # ... while Grafana answered every annotation with a slow 500: the stream did not wait
    grafana = stack["grafana"]
    assert grafana.requests and not grafana.annotations
    labels = alert["labels"]
    assert labels["kind"] == "data" and labels["version"] == "1"
    assert labels["severity"] in {"warning", "critical"}
    assert alert["annotations"]["runbook_url"].endswith("#" + labels["alertname"].lower())

    # every PromQL building block of the rules returns data in this scenario
    def all_blocks():
        blocks = {"drift_severity": promql.drift_severity(),
                  "drift_detected(data)": promql.drift_detected("data"),
                  "drift_detected(quality)": promql.drift_detected("quality"),
                  "drift_detected(concept)": promql.drift_detected("concept"),
                  "event_rate": promql.event_rate(), "dlq_ratio": promql.dlq_ratio(),
                  "consumer_lag": promql.consumer_lag(),
                  "actions_increase": promql.actions_increase(),
                  "up": f'up{{job="{stack["config"].job}"}}'}
        missing = [name for name, expr in blocks.items() if not query(prom_port, expr)]
        return not missing or None
    wait_for("every rule expression to return data", all_blocks, 30)
    for a in rules.alerts(stack["config"]):  # and every full rule expression is valid PromQL
        query(prom_port, a.expr)

    # every dashboard panel's PromQL, with Grafana's variables filled in, returns data
    def panels_with_data():
        empty = []
        for d in dashboards.build_all():
            for expr in dashboards.expressions(d):
                e = (expr.replace("$model", "fraud").replace("$version", "1")
                     .replace("$rollout", "fraud-v2")
                     .replace("$__rate_interval", "1m").replace("$__range", "10m"))
                if not query(prom_port, e):
                    empty.append(e)
        return not empty or None
    wait_for("every dashboard panel to return data", panels_with_data, 30)

    # the Argo Rollouts and Flagger templates' PromQL, their arguments filled in, returns the
    # candidate's verdict (0: not decided yet; 50 labelled outcomes are too few)
    from driftwarden import rollout_templates

    argo = [m["provider"]["prometheus"]["query"] for d in rollout_templates.argo_templates()
            for m in d["spec"]["metrics"]]
    flagger = [d["spec"]["query"] for d in rollout_templates.flagger_templates()]
    for q in argo + flagger:
        e = (q.replace("{{args.rollout}}", "fraud-v2").replace("{{args.candidate}}", "2")
             .replace("{{ variables.rollout }}", "fraud-v2")
             .replace("{{ variables.candidate }}", "2"))
        assert "{{" not in e
        assert [float(r["value"][1]) for r in query(prom_port, e)] == [0.0], e
    verdict = query(prom_port, 'driftwarden_rollout_verdict{rollout="fraud-v2",'
                               'verdict="continue"}')
    assert [float(r["value"][1]) for r in verdict] == [1.0]
    assert query(prom_port, 'driftwarden_rollout_difference{rollout="fraud-v2",'
                            'bound="upper"}'), "no outcome of both versions compared"

    # Alertmanager away for a minute while the alert is active: Prometheus re-sends it
    stack["am"].stop()
    outage = time.monotonic()
    assert active_alerts(am_port) == []
    # meanwhile Grafana recovers: the worker's queued annotations arrive, valid per its spec
    grafana.fail, grafana.delay = None, 0.0

    def drift_marks():
        return [a for a in grafana.annotations
                if {"driftwarden", "drift", "model:fraud", "kind:data", "state:onset"}
                <= set(a["tags"])]
    mark = wait_for("the drift onset as a Grafana annotation", drift_marks, 50)[0]
    assert grafana.problems == [], grafana.problems
    assert "fraud v1" in mark["text"] and mark["time"] >= 1_000_000  # ms of event time
    counts = wait_for("the annotation counters", lambda: sink_counts(stack["worker_port"]), 10)
    assert counts["sent"] >= 1 and counts["failures"] >= 1, counts
    time.sleep(max(0.0, 60 - (time.monotonic() - outage)))
    stack["am"].start()
    wait_for("alertmanager back", lambda: get_json(am_port, "/api/v2/status"), 30)
    back = wait_for("the drift alert after Alertmanager's restart", drift_alert, 30)
    assert back[0]["labels"] == labels
    wait_for("the worker's alert after Alertmanager's restart", lambda: drift_alert("worker"), 10)
    assert "s3cret-token" not in stack["worker_log"].read_text()
    assert stack["worker"].poll() is None, stack["worker_log"].read_text()[-2000:]
