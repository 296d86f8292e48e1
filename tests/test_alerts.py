"""Alert rules: promtool checks the generated file, and `promtool test rules` runs a case per
alert — silent one evaluation before `for:` has elapsed, firing at it with exact labels and
annotations (runbook link included). The committed copy in deploy/ equals the generated one."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from driftwarden.alerts import RUNBOOK_BASE, AlertConfig, alerts, render_rules
from driftwarden.cli import main

ROOT = Path(__file__).resolve().parents[1]
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian prometheus)")

MV = {"model": "fraud", "version": "1"}


def _minutes(d: str) -> int:
    return int(d.removesuffix("m"))


# alert -> (input series, labels of the firing alert, summary, description)
CASES = {
    "DriftwardenModelDriftWarning": (
        [("driftwarden_drift_severity{model='fraud',version='1',kind='data',instance='w1'}",
          "1+0x30")],
        {**MV, "kind": "data", "severity": "warning"},
        "data drift on fraud v1",
        "The data distribution of fraud v1 differs from its baseline beyond the calibrated "
        "thresholds (warning: below the critical PSI)."),
    "DriftwardenModelDriftCritical": (
        [("driftwarden_drift_severity{model='fraud',version='1',kind='prediction',"
          "instance='w1'}", "2+0x30")],
        {**MV, "kind": "prediction", "severity": "critical"},
        "critical prediction drift on fraud v1",
        "The prediction distribution of fraud v1 moved far from its baseline (PSI above the "
        "critical level): predictions are made on data the model has not seen."),
    "DriftwardenConceptDrift": (
        [("driftwarden_drift_detected{model='fraud',version='1',kind='concept',instance='w1'}",
          "1+0x30")],
        {**MV, "severity": "critical"}, "concept drift on fraud v1",
        "The error rate of fraud v1 on joined labels rose above its reference."),
    "DriftwardenDataQuality": (
        [("driftwarden_drift_detected{model='fraud',version='1',kind='quality',instance='w1'}",
          "1+0x30")],
        {**MV, "severity": "warning"}, "data quality problem on fraud v1",
        "Missing, unseen or invalid values or a schema change on fraud v1."),
}


def test_rules_pass_promtool_check(tmp_path):
    if PROMTOOL is None:
        pytest.skip("promtool missing")
    f = tmp_path / "rules.yml"
    f.write_text(render_rules())
    r = subprocess.run([PROMTOOL, "check", "rules", str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(alerts())} rules found" in r.stdout


def test_every_alert_has_severity_annotations_and_a_runbook_section():
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    doc = yaml.safe_load(render_rules())
    for rule in doc["groups"][0]["rules"]:
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        ann = rule["annotations"]
        assert ann["summary"] and ann["description"]
        anchor = rule["alert"].lower()
        assert ann["runbook_url"] == f"{RUNBOOK_BASE}#{anchor}"
        assert f"## {rule['alert']}" in runbooks  # GitHub's anchor of that heading


def test_committed_rule_file_is_the_generated_one(capsys):
    assert main(["alerts", "render"]) == 0
    out = capsys.readouterr().out
    assert out == (ROOT / "deploy" / "prometheus" / "driftwarden-rules.yml").read_text(), (
        "deploy/ is stale: driftwarden alerts render > deploy/prometheus/driftwarden-rules.yml")


def _case(name, series, labels, summary, description, at):
    ann = {"summary": summary, "description": description,
           "runbook_url": f"{RUNBOOK_BASE}#{name.lower()}"}
    return {"interval": "1m",
            "input_series": [{"series": s.replace("'", '"'), "values": v} for s, v in series],
            "alert_rule_test": [
                # `at` = when the condition began + `for:`; a minute earlier it is pending
                {"eval_time": f"{at - 1}m", "alertname": name, "exp_alerts": []},
                {"eval_time": f"{at}m", "alertname": name,
                 "exp_alerts": [{"exp_labels": labels, "exp_annotations": ann}]}]}


def _extra_cases(c: AlertConfig):
    """Alerts whose inputs are rates, lag, `up` or actions (built from the config)."""
    silence = _minutes(c.silence_for)
    # 10 predictions/min for 30 min, then nothing: the 5 m rate is 0 from minute 35 on
    yield ("DriftwardenNoEvents", [(
        "driftwarden_events_total{model='fraud',version='1',kind='prediction',instance='w1'}",
        "0+10x30 300+0x60")], {**MV, "severity": "warning"}, "no predictions from fraud v1",
        f"fraud v1 sent predictions in the last hour but none for {c.silence_for}: the "
        "serving pipeline or its logging may be stalled.", 35 + silence)
    yield ("DriftwardenConsumerLag", [(
        "driftwarden_consumer_lag_messages{topic='driftwarden.predictions',partition='0',"
        "instance='w1'}", f"{c.lag_messages + 1}+0x30")],
        {"topic": "driftwarden.predictions", "severity": "warning"},
        "driftwarden is behind on driftwarden.predictions",
        f"{c.lag_messages + 1} messages are waiting on driftwarden.predictions: verdicts are "
        "late.", _minutes(c.lag_for))
    yield ("DriftwardenRolloutRolledBack", [(
        "driftwarden_rollout_verdict{rollout='churn-v2',model='churn',candidate='2',"
        "verdict='rollback',instance='w1'}", "0+0x5 1+0x30")],
        {"rollout": "churn-v2", "model": "churn", "candidate": "2", "severity": "warning"},
        "rollout churn-v2: churn v2 rolled back",
        "The candidate v2 of churn was worse than its baseline version on the same traffic, "
        "beyond the rollout's margin: driftwarden asked for a rollback (see the action "
        "event's rollout evidence).", 6)
    yield ("DriftwardenWorkerDown", [(f"up{{job='{c.job}',instance='w1'}}", "0+0x30")],
           {"job": c.job, "instance": "w1", "severity": "critical"},
           "driftwarden worker w1 is down",
           "Prometheus cannot scrape w1: its partitions are not monitored until the group "
           "rebalances.", _minutes(c.down_for))
    # 2 % of messages to the DLQ
    yield ("DriftwardenDeadLetterRate", [
        ("driftwarden_invalid_events_total{reason='bad_json',instance='w1'}", "0+2x40"),
        ("driftwarden_events_total{model='fraud',version='1',kind='prediction',instance='w1'}",
         "0+98x40")], {"severity": "warning"},
        "malformed messages are going to the dead-letter topic",
        "2% of messages are rejected to the DLQ (see driftwarden_invalid_events_total by "
        "reason).", 1 + _minutes(c.dlq_for))  # a rate needs two samples: true from 1 m


@needs_promtool
def test_promtool_unit_tests_for_every_alert(tmp_path):
    c = AlertConfig()
    tests = []
    fors = {a.name: _minutes(a.for_) for a in alerts(c)}
    for name, (series, labels, summary, description) in CASES.items():
        tests.append(_case(name, series, labels, summary, description, fors[name]))
    for name, series, labels, summary, description, at in _extra_cases(c):
        tests.append(_case(name, series, labels, summary, description, at))
    # a model silenced through the admin API does not page, though its verdict says drift
    silenced = ("driftwarden_model_silenced{model='fraud',instance='w1'}", "1+0x30")
    for name, (series, labels, summary, description) in CASES.items():
        quiet = _case(name, [*series, silenced], labels, summary, description, fors[name])
        quiet["alert_rule_test"][1]["exp_alerts"] = []
        tests.append(quiet)
    # an action: fires at once (no `for:`), and not before the action happened
    tests.append({"interval": "1m", "input_series": [{
        "series": 'driftwarden_actions_total{model="fraud",action="retrain",instance="w1"}',
        "values": "0+0x5 1+0x20"}], "alert_rule_test": [
        {"eval_time": "5m", "alertname": "DriftwardenActionEmitted", "exp_alerts": []},
        {"eval_time": "7m", "alertname": "DriftwardenActionEmitted", "exp_alerts": [{
            "exp_labels": {"model": "fraud", "action": "retrain", "severity": "info"},
            "exp_annotations": {
                "summary": "retrain requested for fraud",
                "description": "driftwarden published a retrain action event for fraud in "
                               "the last 10 minutes.",
                "runbook_url": f"{RUNBOOK_BASE}#driftwardenactionemitted"}}]}]})
    assert {t["alert_rule_test"][0]["alertname"] for t in tests} == {a.name for a in alerts()}
    (tmp_path / "rules.yml").write_text(render_rules(c))
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(
        {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests},
        sort_keys=False))
    r = subprocess.run([PROMTOOL, "test", "rules", "tests.yml"], cwd=tmp_path,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


AMTOOL = shutil.which("amtool")
AM_CONFIG = ROOT / "deploy" / "alertmanager.yml"


@pytest.mark.skipif(AMTOOL is None, reason="amtool (Debian prometheus-alertmanager)")
def test_alertmanager_config_checks_and_routes_by_severity():
    r = subprocess.run([AMTOOL, "check-config", str(AM_CONFIG)], capture_output=True, text=True)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    # every alert's severity reaches the receiver meant for it (amtool exits 1 on a mismatch)
    want = {"critical": "on-call-pager", "warning": "team-channel", "info": "audit-log"}
    for a in alerts():
        r = subprocess.run([AMTOOL, "config", "routes", "test", f"--config.file={AM_CONFIG}",
                            f"--verify.receivers={want[a.severity]}", f"alertname={a.name}",
                            f"severity={a.severity}", "model=fraud"],
                           capture_output=True, text=True)
        assert r.returncode == 0, (a.name, r.stdout + r.stderr)
    # and a wrong expectation is caught (the check can fail)
    r = subprocess.run([AMTOOL, "config", "routes", "test", f"--config.file={AM_CONFIG}",
                        "--verify.receivers=team-channel", "severity=critical"],
                       capture_output=True, text=True)
    assert r.returncode != 0
    cfg = yaml.safe_load(AM_CONFIG.read_text())
    inhibit = cfg["inhibit_rules"][0]
    assert inhibit["equal"] == ["model"] and 'severity="warning"' in inhibit["target_matchers"]


def test_runbook_links_follow_the_configured_base(tmp_path, capsys):
    """`alerts render --runbook-base`, the `runbook_base` setting, and action events: every
    runbook link under the team's own URL, with anchors that docs/runbooks.md has."""
    from driftwarden.cli import main
    from driftwarden.config import load_settings
    from driftwarden.stream.policy import ACTIONS
    from driftwarden.stream.service import StreamService

    base = "https://wiki.example.com/ml/runbooks"
    assert main(["alerts", "render", "--runbook-base", base]) == 0
    rules = yaml.safe_load(capsys.readouterr().out)["groups"][0]["rules"]
    assert {r["annotations"]["runbook_url"].partition("#")[0] for r in rules} == {base}
    cfg = tmp_path / "dw.toml"
    cfg.write_text(f'runbook_base = "{base}/v2"\n')
    assert main(["alerts", "render", "--config", str(cfg)]) == 0
    rules = yaml.safe_load(capsys.readouterr().out)["groups"][0]["rules"]
    assert all(r["annotations"]["runbook_url"].startswith(f"{base}/v2#") for r in rules)
    assert main(["alerts", "render", "--runbook-base", "wiki/runbooks"]) == 2
    assert "http" in capsys.readouterr().err

    svc = StreamService(load_settings(cfg, env={}))
    event = {"event_id": "e1", "incident_id": "i1", "model": "m", "version": "1",
             "kind": "data", "state": "onset", "severity": "critical",
             "features": ["x"], "evidence": [], "ts": 1e9}
    actions = svc.policy.decide(event)
    assert actions and all(a["runbook_url"] == f"{base}/v2#action-{a['action']}"
                           for a in actions)
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    assert all(f"## action-{a}\n" in runbooks for a in ACTIONS)
