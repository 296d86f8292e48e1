"""Dashboards: built with grafana-foundation-sdk from the metric definitions, stable UIDs, every
metric they query declared in driftwarden.metrics, and the provisioned copies in deploy/ equal
to what the code builds. (Their PromQL runs against a real Prometheus in test_alerting_e2e.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

from driftwarden.cli import main
from driftwarden.dashboards import MODEL_UID, OVERVIEW_UID, build_all, expressions
from driftwarden.metrics import DEFINITIONS

ROOT = Path(__file__).resolve().parents[1]


def test_stable_uids_variables_and_declared_metrics():
    overview, model = build_all()
    assert (overview["uid"], model["uid"]) == (OVERVIEW_UID, MODEL_UID)
    assert [v["name"] for v in model["templating"]["list"]] == ["model", "version"]
    declared = {d.full_name for d in DEFINITIONS.values()}
    for d in (overview, model):
        exprs = expressions(d)
        assert exprs and len(exprs) >= len([p for p in d["panels"] if p["type"] != "row"])
        for e in exprs:
            used = set(re.findall(r"driftwarden_[a-z_]+", e))
            used = {u.removesuffix("_bucket") for u in used}
            assert used <= declared, e
        for p in d["panels"]:
            if p["type"] != "row":
                assert p["datasource"]["uid"] == "driftwarden-prometheus"
    # the per-model panels are filtered by the variables
    assert all('model="$model"' in e for e in expressions(model))
    # the overview repeats a row, and its panels, for each rollout; they filter by it
    rows = [p for p in overview["panels"] if p["type"] == "row"]
    (repeated,) = [r for r in rows if r.get("repeat")]
    assert repeated["repeat"] == "rollout" and "$rollout" in repeated["title"]
    assert [v["name"] for v in overview["templating"]["list"]] == ["rollout"]
    after = overview["panels"][overview["panels"].index(repeated) + 1:]
    inside = after[:next(i for i, p in enumerate(after) if p["type"] == "row")]
    assert len(inside) >= 3
    assert all('rollout=~"$rollout"' in t["expr"] for p in inside for t in p["targets"])


def test_provisioned_copies_are_what_the_code_builds(tmp_path):
    assert main(["dashboards", "export", str(tmp_path)]) == 0
    for f in sorted(tmp_path.iterdir()):
        committed = ROOT / "deploy" / "grafana" / "dashboards" / f.name
        assert committed.exists(), f"missing {committed}"
        assert json.loads(committed.read_text()) == json.loads(f.read_text()), (
            "deploy/ is stale: driftwarden dashboards export deploy/grafana/dashboards")
    assert len(list(tmp_path.iterdir())) == len(build_all())


def test_export_to_an_unwritable_place_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["dashboards", "export", str(tmp_path / "file" / "sub")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("driftwarden: error: cannot write") and err.count("\n") == 1
