"""The README's main command, end to end: embedded broker, worker, traffic with two injected
drifts, events and actions, nothing left running."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys


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
    concept = onsets[("churn", "concept")]
    assert concept["version"] == "2" and concept["severity"] == "critical"
    assert result["concept_drift_at"] <= concept["ts"] - t0 <= result["concept_drift_at"] + 10
    assert not any(m == "churn" and k == "data" for m, k in onsets)  # no false data alarm
    actions = {(a["model"], a["action"]): a for a in result["actions"]}
    assert actions[("churn", "rollback")]["target_version"] == "1"
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
    assert by[("churn", "concept")]["version"] == "2"
    for i in incidents:
        assert {"model", "version", "kind", "status", "severity", "features",
                "evidence"} <= set(i)
    table = subprocess.run([sys.executable, "-m", "driftwarden.cli", "incidents", "list"],
                           capture_output=True, text=True, timeout=60, env=env)
    assert "fraud" in table.stdout and "churn" in table.stdout
    # piped, the table still holds every id whole (they are typed back into `ack`)
    assert all(i["id"] in table.stdout for i in incidents)
    # the demo resolved what it opened: nothing left open forever by demo runs
    assert set(result["resolved"]) == {e["incident_id"] for e in onsets.values()}
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
