"""The README's main command, end to end: embedded broker, worker, traffic with two injected
drifts, events and actions, nothing left running."""

from __future__ import annotations

import json
import subprocess
import sys


def _tansu_processes() -> set[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if "tansu" in line and "broker" in line}


def test_demo_detects_both_drifts_and_acts():
    before = _tansu_processes()
    run = subprocess.run([sys.executable, "-m", "driftwarden.cli", "demo", "--duration", "40",
                          "--json"], capture_output=True, text=True, timeout=240)
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
