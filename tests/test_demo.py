"""The README's main command, end to end: embedded broker, worker, traffic with two injected
drifts, events and actions, nothing left running."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import orjson


def _tansu_processes() -> set[str]:
    """Orphaned embedded brokers (what a demo that did not stop its broker leaves behind:
    reparented to init) — not the brokers other tests running meanwhile hold as children."""
    out = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines()
            if "tansu" in line and "broker" in line and line.split()[1] == "1"}


@contextlib.contextmanager
def busy_cores(n, seconds):
    """``n`` processes spinning on the CPU (the machine's cores busy with other work), each
    ending by itself after ``seconds`` and killed at the end of the block."""
    spin = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"
    procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_demo_detects_both_drifts_and_acts(tmp_path):
    """With both cores kept busy by other processes the whole time: the demo waits for its
    worker instead of a fixed time, so what it reports does not depend on the machine."""
    before = _tansu_processes()
    env = {**os.environ, "DRIFTWARDEN_DATA_DIR": str(tmp_path / "dw")}
    env.pop("DRIFTWARDEN_DATABASE_URL", None)  # the default store: SQLite in the data dir
    with busy_cores(os.cpu_count() or 2, 300):
        run = subprocess.run([sys.executable, "-m", "driftwarden.cli", "demo", "--duration",
                              "40", "--json"], capture_output=True, text=True, timeout=420,
                             env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    onsets = {(e["model"], e["kind"]): e for e in result["drift_events"]
              if e["state"] == "onset"}
    data = onsets[("fraud", "data")]
    t0 = result["t0"]
    assert "amount" in data["features"]
    # no alarm before the injected drift, detection within a window (5 × 2 s) after it
    assert result["data_drift_at"] <= data["ts"] - t0 <= result["data_drift_at"] + 10
    concept = next(e for e in result["drift_events"] if e["state"] == "onset" and (
        e["model"], e["kind"], e["version"]) == ("churn", "concept", "2"))
    assert concept["severity"] == "critical"
    assert result["concept_drift_at"] <= concept["ts"] - t0 <= result["concept_drift_at"] + 10
    assert not any(m == "churn" and k == "data" for m, k in onsets)  # no false data alarm
    actions = {(a["model"], a["action"]): a for a in result["actions"]}
    assert actions[("churn", "rollback")]["target_version"] == "1"
    check_rollouts(result)
    assert ("fraud", "retrain") in actions or ("fraud", "review") in actions
    assert len({a["event_id"] for a in result["actions"]}) == len(result["actions"])
    records = {}
    for m in result["models"]:
        records[m["model"]] = records.get(m["model"], 0) + m["records"]
    assert records == {k: v for k, v in result["produced"].items() if k != "labels"}
    assert _tansu_processes() <= before  # the embedded broker is gone

    # the demo recorded its incidents and actions: the CLI lists them, with evidence
    listed = subprocess.run([sys.executable, "-m", "driftwarden.cli", "incidents", "list",
                             "--json"], capture_output=True, text=True, timeout=60, env=env)
    assert listed.returncode == 0, listed.stderr
    incidents = json.loads(listed.stdout)
    by = {(i["model"], i["kind"]): i for i in incidents}
    assert {e["incident_id"] for e in onsets.values()} <= {i["id"] for i in incidents}
    assert by[("fraud", "data")]["evidence"] and "amount" in by[("fraud", "data")]["features"]
    assert any(i["version"] == "2" for i in incidents if (i["model"], i["kind"]) == (
        "churn", "concept"))
    for i in incidents:
        assert {"model", "version", "kind", "status", "severity", "features",
                "evidence"} <= set(i)
    table = subprocess.run([sys.executable, "-m", "driftwarden.cli", "incidents", "list"],
                           capture_output=True, text=True, timeout=60, env=env)
    assert "fraud" in table.stdout and "churn" in table.stdout
    # piped, the table still holds every id whole (they are typed back into `ack`)
    assert all(i["id"] in table.stdout for i in incidents)
    # the demo resolved what it opened: nothing left open forever by demo runs
    opened = {e["incident_id"] for e in result["drift_events"] if e["state"] == "onset"}
    recovered = {e["incident_id"] for e in result["drift_events"] if e["state"] == "recovery"}
    assert set(result["resolved"]) == opened - recovered
    assert {i["status"] for i in incidents if i["id"] in result["resolved"]} == {"resolved"}
    # the versions the stream saw (their baselines) are listed
    models = json.loads(subprocess.run(
        [sys.executable, "-m", "driftwarden.cli", "models", "list", "--json"],
        capture_output=True, text=True, timeout=60, env=env).stdout)
    assert {(m["name"], v["version"]) for m in models for v in m["versions"]} >= {
        ("fraud", "1"), ("churn", "1"), ("churn", "2")}
    # an incident is acknowledged by the start of its id
    prefix = data["incident_id"][:8]
    ack = subprocess.run([sys.executable, "-m", "driftwarden.cli", "incidents", "ack", prefix],
                         capture_output=True, text=True, timeout=60, env=env)
    assert ack.returncode == 0 and ack.stdout.startswith(data["incident_id"]), ack.stderr
    from driftwarden.store import Store

    store = Store(f"sqlite:///{tmp_path / 'dw' / 'driftwarden.db'}")
    recorded = {a["event_id"]: a["status"] for a in store.actions()}
    assert set(recorded) == {a["event_id"] for a in result["actions"]}
    assert set(recorded.values()) == {"delivered"}
    # the rollouts are in the store with where they ended and their verdicts
    kept = {r["name"]: r for r in store.rollouts()}
    assert {k: r["status"] for k, r in kept.items()} == {"churn-v2": "rolled_back",
                                                         "fraud-v2": "promoted"}
    assert [v["verdict"] for v in kept["churn-v2"]["verdicts"]] == ["rollback"]
    # the rollouts' actions are in the store with their evidence, as published
    rows = {a["event_id"]: a for a in store.actions()}
    for a in result["actions"]:
        if a.get("rollout"):
            assert rows[a["event_id"]]["rollout"] == a["rollout"]


def check_rollouts(result):
    """churn v2, a 10 % canary, is rolled back on performance after the concept change —
    before it ever took all traffic — and fraud v2, in shadow, promoted; each verdict once,
    as a typed action event whose evidence the worker's metrics and /rollouts repeat."""
    from test_events import check_events

    decided = {a["model"]: a for a in result["actions"] if a.get("rollout")}
    assert len(decided) == len([a for a in result["actions"] if a.get("rollout")]) == 2
    churn, fraud = decided["churn"], decided["fraud"]
    assert (churn["action"], churn["version"], churn["target_version"]) == ("rollback", "2", "1")
    assert churn["rollout"]["signal"] == "performance"
    assert churn["rollout"]["lower"] > churn["rollout"]["margin"]
    assert churn["ts"] - result["t0"] >= result["concept_drift_at"]  # not before the change
    assert (fraud["action"], fraud["version"]) == ("promote", "2")
    assert fraud["rollout"]["upper"] < fraud["rollout"]["margin"]
    canary = result["canary"]  # never more than the canary's share of churn's traffic
    assert 0 < canary["2"] < 0.15 * (canary["1"] + canary["2"])
    check_events([], [orjson.dumps(a) for a in decided.values()])
    status = {(r["name"], c): v for r in result["rollouts"] for c, v in r["verdicts"].items()}
    assert status[("churn-v2", "2")]["verdict"] == "rollback"
    assert status[("fraud-v2", "2")]["verdict"] == "promote"
    # the shadow paired with its serving version request by request through the real broker,
    # and each version's latency_ms reached the rollout (v2 the slower: evidence, no margin)
    ev = status[("fraud-v2", "2")]["evidence"]
    assert ev["pairs"]["n"] > 0 and 0.0 < ev["pairs"]["agreement"] < 1.0
    assert ev["latency"]["candidate_mean"] > ev["latency"]["baseline_mean"] > 8.0
    samples = {(m["labels"]["rollout"], m["labels"]["verdict"]): m["value"]
               for m in result["rollout_metrics"] if m["name"] == "driftwarden_rollout_verdict"}
    assert samples[("churn-v2", "rollback")] == samples[("fraud-v2", "promote")] == 1.0
    assert samples[("churn-v2", "continue")] == samples[("fraud-v2", "continue")] == 0.0
