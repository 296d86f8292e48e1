"""`driftwarden dashboards push` against a local Grafana stand-in that validates every request
against Grafana's own OpenAPI spec (tests/grafana_stub.py)."""

from __future__ import annotations

import pytest
from grafana_stub import GrafanaStub, Spec

from driftwarden.cli import main
from driftwarden.dashboards import build_all


def test_push_creates_then_changes_nothing(capsys, monkeypatch):
    monkeypatch.setenv("GRAFANA_TOKEN", "s3cret-token")
    with GrafanaStub() as g:
        assert main(["dashboards", "push", "--grafana-url", g.url]) == 0
        first = capsys.readouterr().out
        assert first.count("created") == len(build_all())
        assert "driftwarden" in g.folders
        versions = {uid: d["dashboard"]["version"] for uid, d in g.dashboards.items()}
        posts = len([r for r in g.requests if r[0] == "POST"])
        assert main(["dashboards", "push", "--grafana-url", g.url]) == 0  # idempotent
        assert capsys.readouterr().out.count("unchanged") == len(build_all())
        assert len([r for r in g.requests if r[0] == "POST"]) == posts
        assert {uid: d["dashboard"]["version"] for uid, d in g.dashboards.items()} == versions
        stored = g.dashboards[build_all()[0]["uid"]]
        assert stored["meta"]["folderUid"] == "driftwarden"
        assert g.problems == [], g.problems  # every request conforms to Grafana's spec
    assert "s3cret-token" not in first


def test_a_changed_dashboard_is_updated():
    with GrafanaStub() as g:
        assert main(["dashboards", "push", "--grafana-url", g.url]) == 0
        uid = build_all()[1]["uid"]
        g.dashboards[uid]["dashboard"]["title"] = "edited by hand"
        assert main(["dashboards", "push", "--grafana-url", g.url]) == 0
        assert g.dashboards[uid]["dashboard"]["title"] == build_all()[1]["title"]
        assert g.dashboards[uid]["dashboard"]["version"] == 2
        assert g.problems == []


@pytest.mark.parametrize("mode", ["error", "slow", "down"])
def test_grafana_failing_is_one_line_and_exit_2(mode, capsys):
    with GrafanaStub() as g:
        url = g.url
        if mode == "error":
            g.fail = 500
        elif mode == "slow":
            g.delay = 2.0
        args = ["dashboards", "push", "--grafana-url", url, "--timeout", "0.5"]
        if mode == "down":
            g.server.shutdown()
            g.server.server_close()
        assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("driftwarden: error: Grafana at ") and err.count("\n") == 1, err


def test_the_spec_check_can_fail():
    spec = Spec()
    assert spec.check("POST", "/api/dashboards/db", {"dashboard": {}, "overwrite": "yes"})
    assert spec.check("POST", "/api/dashboards/db", {"dashboard": {}, "folderUID": "x"})
    assert spec.check("PATCH", "/api/dashboards/db", {"dashboard": {}})
    assert spec.check("GET", "/api/no/such/thing", None)
    assert spec.check("POST", "/api/dashboards/db", {"dashboard": {}, "overwrite": True}) == []
