"""End to end with the real services: broker → worker → Debian's Prometheus (scraping the worker,
evaluating the generated rules) → Debian's Alertmanager. Drift injected into the stream is an
active alert in Alertmanager within a stated bound; every PromQL building block of the rules
returns data; Alertmanager stopped for a minute during an active alert has it again after it
returns (Prometheus re-sends)."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.parse

import numpy as np
import orjson
import pytest
import yaml
from confluent_kafka import Producer
from conftest import get_json

from driftwarden import alerts as rules
from driftwarden import dashboards, promql
from driftwarden.embedded import free_port

PROMETHEUS = shutil.which("prometheus")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
pytestmark = pytest.mark.skipif(PROMETHEUS is None or ALERTMANAGER is None,
                                reason="Debian packages prometheus, prometheus-alertmanager")

PREFIX = "e2e"
TOPICS = ("predictions", "features", "labels", "summaries", "drift", "actions", "dlq", "late",
          "state")
ALERT_BOUND = 45.0  # seconds from the drifted records being produced to the alert in AM


def wait_for(what, check, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


class Service:
    """A Debian binary on a loopback port, stopped at the end."""

    def __init__(self, argv, log):
        self.argv, self.log = argv, log
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(self.argv, stdout=self.log.open("a"),
                                     stderr=subprocess.STDOUT)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def stack(broker, spawn_worker, tmp_path):
    env = {f"DRIFTWARDEN_TOPICS__{t.upper()}": f"{PREFIX}.{t}" for t in TOPICS}
    env.update({"DRIFTWARDEN_KAFKA__GROUP_ID": f"{PREFIX}-workers",
                "DRIFTWARDEN_DETECTION__SLICES": "3", "DRIFTWARDEN_DETECTION__SLICE_SECONDS": "1",
                "DRIFTWARDEN_DETECTION__ALLOWED_LATENESS": "0.2",
                "DRIFTWARDEN_DETECTION__CALIBRATION_SIMS": "50",
                "DRIFTWARDEN_KAFKA__STALL_SECONDS": "8"})
    proc, worker_port, worker_log = spawn_worker(broker.bootstrap_servers, env)

    am_port, prom_port = free_port(), free_port()
    am_cfg = tmp_path / "alertmanager.yml"
    am_cfg.write_text(yaml.safe_dump({
        "route": {"receiver": "null", "group_wait": "1s", "group_interval": "1s"},
        "receivers": [{"name": "null"}]}))
    am = Service([ALERTMANAGER, f"--config.file={am_cfg}",
                  f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address=",
                  f"--storage.path={tmp_path / 'am'}"], tmp_path / "alertmanager.log")
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
               "tmp": tmp_path}
    finally:
        prom.stop()
        am.stop()


def produce_scenario(bootstrap):
    p = Producer({"bootstrap.servers": bootstrap})
    rng = np.random.default_rng(0)
    topic = f"{PREFIX}.predictions"
    for t in range(24):
        for i in range(500):
            rec = {"model": "fraud", "version": "1", "id": f"{t}-{i}", "ts": 1000 + t + i / 500,
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


def active_alerts(port):
    got = get_json(port, "/api/v2/alerts?active=true&silenced=false")
    return [a for a in got or [] if a["status"]["state"] == "active"]


def query(prom_port, expr):
    body = get_json(prom_port, "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert body is not None and body["status"] == "success", (expr, body)
    return body["data"]["result"]


def test_drift_reaches_alertmanager_and_survives_its_restart(stack):
    started = time.monotonic()
    produce_scenario(stack["broker"].bootstrap_servers)
    am_port, prom_port = stack["am_port"], stack["prom_port"]

    def drift_alert():
        return [a for a in active_alerts(am_port)
                if a["labels"]["alertname"].startswith("DriftwardenModelDrift")
                and a["labels"].get("model") == "fraud"]

    alert = wait_for("the drift alert in Alertmanager", drift_alert, ALERT_BOUND)[0]
    took = time.monotonic() - started
    print(f"drift alert active in Alertmanager {took:.1f} s after producing began")
    assert took <= ALERT_BOUND
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
                     .replace("$__rate_interval", "1m").replace("$__range", "10m"))
                if not query(prom_port, e):
                    empty.append(e)
        return not empty or None
    wait_for("every dashboard panel to return data", panels_with_data, 30)

    # Alertmanager away for a minute while the alert is active: Prometheus re-sends it
    stack["am"].stop()
    assert active_alerts(am_port) == []
    time.sleep(60)
    stack["am"].start()
    wait_for("alertmanager back", lambda: get_json(am_port, "/api/v2/status"), 30)
    back = wait_for("the drift alert after Alertmanager's restart", drift_alert, 30)
    assert back[0]["labels"] == labels
    assert stack["worker"].poll() is None, stack["worker_log"].read_text()[-2000:]
