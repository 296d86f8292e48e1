"""The SQL store, on SQLite and on the real PostgreSQL: migrations equal the models, incidents
follow their drift events, everything the stream records is idempotent, lineage and baselines,
and one audit row per change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from driftwarden.store import Conflict, NotFound, Store
from driftwarden.store.models import Base


def drift(state, event_id, severity="warning", ts=1764300000.0, features=("amount",)):
    return {"event_id": event_id, "incident_id": "inc-1", "model": "fraud", "version": "7",
            "kind": "data", "state": state, "severity": severity, "features": list(features),
            "evidence": [{"feature": f, "test": "psi", "statistic": 0.3} for f in features],
            "ts": ts}


def test_migrations_make_exactly_the_models_schema_and_are_idempotent(db_url):
    store = Store(db_url)
    store.migrate()  # a second time: nothing to do, nothing broken
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                Base.metadata)
        assert diff == []
        tables = set(sa.inspect(conn).get_table_names())
        version = conn.execute(sa.text("select version_num from alembic_version")).scalar()
    assert {"models", "model_versions", "baselines", "incidents", "incident_events", "actions",
            "silences", "audit_log", "rollouts", "rollout_verdicts"} <= tables
    assert version == "0003"
    store.close()


def test_an_incident_follows_its_drift_events_and_replays_record_nothing_twice(db_url):
    store = Store(db_url)
    assert store.record_event(drift("onset", "e1"))
    assert not store.record_event(drift("onset", "e1"))  # replayed after a restart
    assert store.record_event(drift("escalation", "e2", "critical", 1764300060.0,
                                    ("amount", "country")))
    inc = store.incident("inc-1")
    assert (inc["status"], inc["severity"], inc["features"]) == (
        "escalated", "critical", ["amount", "country"])
    assert inc["evidence"][1] == {"feature": "country", "test": "psi", "statistic": 0.3}
    assert inc["opened_at"].startswith("2025-11-28T03:20:00")
    acked = store.ack_incident("inc-1", actor="cli:alice", note="looking")
    assert acked["status"] == "acknowledged" and acked["acknowledged_by"] == "cli:alice"
    # acknowledging again is a no-op: the first acknowledgement stands, one audit row
    again = store.ack_incident("inc-1", actor="cli:bob", note="me too")
    assert again["acknowledged_by"] == "cli:alice" and again["acknowledged_at"] == acked[
        "acknowledged_at"]
    assert [a["operation"] for a in store.audit_log()].count("incident.ack") == 1
    assert store.record_event(drift("recovery", "e3", "none", 1764300120.0))
    inc = store.incident("inc-1")
    assert inc["status"] == "resolved" and inc["resolved_at"].startswith("2025-11-28T03:22")
    assert [e["state"] for e in inc["events"]] == ["onset", "escalation", "recovery"]
    assert [i["id"] for i in store.incidents(status="resolved")] == ["inc-1"]
    assert store.incidents(model="other") == []
    with pytest.raises(NotFound):
        store.ack_incident("nope", actor="cli:alice")
    store.close()


def test_actions_are_recorded_once_audited_and_marked_delivered(db_url):
    store = Store(db_url)
    action = {"event_id": "a1", "action": "rollback", "model": "fraud", "version": "7",
              "target_version": "6", "incident_id": "inc-1", "reason": "concept drift",
              "evidence": {"kind": "concept"}, "ts": 1764300000.0}
    assert store.record_action(action) and not store.record_action(action)
    [row] = store.actions()
    assert (row["status"], row["target_version"]) == ("pending", "6")
    # the outbox: pending and old enough, for the models asked about; each read is an attempt
    later = datetime(2030, 1, 1, tzinfo=UTC)
    assert store.pending_actions(datetime(2000, 1, 1, tzinfo=UTC)) == []  # not old enough
    assert store.pending_actions(later, ["churn"]) == []
    assert store.pending_actions(later, ["fraud"]) == [action]  # the event as produced
    store.mark_delivered("a1")
    assert store.actions(model="fraud")[0]["status"] == "delivered"
    assert store.pending_actions(later) == []
    audit = store.audit_log()
    assert [(a["actor"], a["operation"], a["target"]) for a in audit] == [
        ("worker", "action.rollback", "fraud")]
    store.close()


def test_versions_with_lineage_promotion_baselines_and_an_audit_row_per_change(db_url):
    store = Store(db_url)
    store.register_model("fraud", actor="admin", owner="risk-team")
    with pytest.raises(Conflict):
        store.register_model("fraud", actor="admin")
    lineage = {"training_data_hash": "sha256:abc", "code_ref": "git:1234",
               "hyperparameters": {"depth": 6}, "evaluation": {"auc": 0.91},
               "approved_by": "bob"}
    v6 = store.register_version("fraud", "6", actor="admin", lineage=lineage, status="live")
    assert v6["deployed_at"] and v6["approved_by"] == "bob"
    store.register_version("fraud", "7", actor="admin", status="canary")
    promoted = store.promote("fraud", "7", "live", actor="admin")
    assert promoted["status"] == "live"
    [model] = store.models()
    assert {v["version"]: v["status"] for v in model["versions"]} == {"6": "retired", "7": "live"}
    assert model["versions"][0]["hyperparameters"] == {"depth": 6}
    with pytest.raises(NotFound):
        store.promote("fraud", "99", "live", actor="admin")
    with pytest.raises(Conflict):
        store.promote("fraud", "7", "sideways", actor="admin")
    b1 = store.add_baseline("fraud", "7", {"features": {"a": 1}}, rows=5000, source="warm-up",
                            actor="worker")
    b2 = store.add_baseline("fraud", "7", {"features": {"a": 2}}, rows=900, source="ref.csv",
                            actor="admin")
    assert (b1["revision"], b2["revision"]) == (1, 2)
    assert store.baseline("fraud", "7")["summary"] == {"features": {"a": 2}}
    assert store.baseline("fraud", "7", 1)["rows"] == 5000
    # a worker refitting the same warm-up after a replay stores no new revision
    same = store.add_baseline("fraud", "7", {"features": {"a": 2}}, rows=900, source="warm-up",
                              actor="worker", unless_same=True)
    assert same["revision"] == 2 and store.baseline("fraud", "7")["source"] == "ref.csv"
    until = datetime.now(UTC) + timedelta(hours=1)
    store.silence("fraud", until, actor="admin", reason="planned retrain")
    assert store.silenced_until("fraud") is not None and store.silenced_until("churn") is None
    assert store.silenced_until("fraud", until + timedelta(seconds=1)) is None
    ops = [a["operation"] for a in reversed(store.audit_log())]
    # one row per change that happened; the refused ones raised before writing anything
    assert ops == ["model.register", "version.register", "version.register", "version.promote",
                   "baseline.add", "baseline.add", "model.silence"]
    assert store.audit_log()[3]["detail"] == {"from": "canary", "to": "live", "retired": ["6"]}
    store.close()


def test_the_database_refuses_to_change_or_delete_audit_rows(db_url):
    store = Store(db_url)
    store.audit("api:read-token", "incident.ack", "inc-1", "refused", {"status": 403})
    for statement in ("UPDATE audit_log SET outcome = 'ok'", "DELETE FROM audit_log"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), store.engine.begin() as c:
            c.execute(sa.text(statement))
    [row] = store.audit_log()
    assert (row["outcome"], row["detail"]) == ("refused", {"status": 403})
    # whole-table and replacing statements too: TRUNCATE on PostgreSQL (row triggers do not
    # see it), INSERT OR REPLACE / REPLACE INTO on SQLite (no delete trigger fires for it)
    rewrites = (["TRUNCATE audit_log"] if db_url.startswith("postgresql") else [
        f"{verb} INTO audit_log (id, at, actor, operation, target, outcome, detail) "
        f"VALUES ({row['id']}, '2026-01-01', 'x', 'y', '', 'ok', '{{}}')"
        for verb in ("INSERT OR REPLACE", "REPLACE")])
    for statement in rewrites:
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), store.engine.begin() as c:
            c.execute(sa.text(statement))
    assert store.audit_log() == [row]
    store.close()


def test_incidents_are_named_by_a_unique_prefix_and_resolved_by_hand_once(db_url):
    store = Store(db_url)
    for iid in ("ea1b77a0-0001", "ea1b77a0-0002", "fb_%0000-0003"):
        ev = drift("onset", f"ev-{iid}")
        ev["incident_id"] = iid
        store.record_event(ev)
    assert store.find_incident("fb_%") == "fb_%0000-0003"  # LIKE wildcards are literal
    assert store.find_incident("ea1b77a0-0002") == "ea1b77a0-0002"
    with pytest.raises(NotFound, match="several"):
        store.find_incident("ea1b77a")  # what a cut table cell showed: ambiguous
    with pytest.raises(NotFound, match="4 characters"):
        store.find_incident("ea1")
    with pytest.raises(NotFound):
        store.find_incident("ea1b77a1")
    with pytest.raises(NotFound):
        store.find_incident("fb_x")  # `_` is not a wildcard
    done = store.resolve_incident("ea1b77a0-0001", actor="cli:alice", note="false alarm")
    again = store.resolve_incident("ea1b77a0-0001", actor="cli:bob")
    assert done["status"] == again["status"] == "resolved"
    assert again["resolved_at"] == done["resolved_at"]
    assert [a["operation"] for a in store.audit_log()].count("incident.resolve") == 1
    assert {i["id"] for i in store.incidents(status="open")} == {"ea1b77a0-0002",
                                                                 "fb_%0000-0003"}
    store.close()


def test_versions_the_stream_saw_are_listed_with_the_registered_ones(db_url):
    store = Store(db_url)
    store.register_model("fraud", actor="cli:a")
    store.register_version("fraud", "7", actor="cli:a")
    store.add_baseline("fraud", "8", {"x": 1}, rows=10, source="warm-up", actor="worker")
    store.add_baseline("churn", "1", {"x": 1}, rows=10, source="warm-up", actor="worker")
    store.add_baseline("churn", "2", {"x": 1}, rows=10, source="warm-up", actor="worker")
    ev = drift("onset", "e-churn-3")
    ev |= {"incident_id": "i-churn-3", "model": "churn", "version": "3"}
    store.record_event(ev)
    store.record_event(drift("onset", "e-fraud-7"))  # fraud v7: registered already
    models = {m["name"]: m for m in store.models()}
    assert [(v["version"], v["status"]) for v in models["fraud"]["versions"]] == [
        ("7", "registered"), ("8", "seen")]
    # in the order first seen: v3's incident has an event time in 2025, before the baselines
    assert [(v["version"], v["status"]) for v in models["churn"]["versions"]] == [
        ("3", "seen"), ("1", "seen"), ("2", "seen")]
    assert models["fraud"]["registered"] and not models["churn"]["registered"]
    store.close()


def test_an_unreachable_or_malformed_database_is_one_line_without_its_password(monkeypatch,
                                                                               capsys):
    from driftwarden.cli import main

    for url, says in (("postgresql+psycopg://dw:s3cret@127.0.0.1:1/x", "127.0.0.1:1/x"),
                      ("nonsense://dw:s3cret@host/x", "not a database URL")):
        monkeypatch.setenv("DRIFTWARDEN_DATABASE_URL", url)
        assert main(["incidents", "list"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0] and "s3cret" not in err[0], err


def test_rollouts_are_kept_with_their_verdicts_and_people_s_decisions_audited(db_url):
    store = Store(db_url)
    spec = {"model": "churn", "baseline": "1", "candidates": ["2", "3"],
            "strategy": "champion_challenger"}
    store.sync_config_rollouts({"churn-v2": spec})
    store.sync_config_rollouts({"churn-v2": spec})  # once
    (r,) = store.rollouts()
    assert (r["name"], r["source"], r["status"], r["verdicts"]) == (
        "churn-v2", "config", "running", [])

    def action(candidate, verdict, event_id):
        return {"event_id": event_id, "model": "churn", "reason": f"r {verdict}",
                "ts": 1_700_000_000.0,
                "rollout": {"rollout": "churn-v2", "strategy": "champion_challenger",
                            "baseline": "1", "candidate": candidate, "verdict": verdict,
                            "signal": "performance", "estimate": 0.03, "lower": 0.02,
                            "upper": 0.04, "margin": 0.01, "alpha": 0.025,
                            "samples": {"1": 900, candidate: 100}, "slice": 7}}

    assert store.record_rollout_verdict(action("2", "rollback", "e1"))
    assert not store.record_rollout_verdict(action("2", "rollback", "e1"))  # a replay
    assert store.rollout("churn-v2")["status"] == "running"  # candidate 3 undecided
    assert store.record_rollout_verdict(action("3", "promote", "e2"))
    r = store.rollout("churn-v2")
    assert r["status"] == "promoted" and r["ended_at"]
    assert [(v["candidate"], v["verdict"], v["evidence"]["samples"]) for v in r["verdicts"]] == [
        ("2", "rollback", {"1": 900, "2": 100}), ("3", "promote", {"1": 900, "3": 100})]
    with pytest.raises(Conflict):
        store.end_rollout("churn-v2", actor="alice", status="aborted")  # it has ended

    started = store.start_rollout("fraud-v9", {"model": "fraud", "baseline": "8",
                                               "candidates": ["9"]}, actor="admin-token:ab")
    assert (started["source"], started["created_by"]) == ("api", "admin-token:ab")
    with pytest.raises(Conflict):
        store.start_rollout("fraud-v9", {"model": "fraud", "baseline": "8",
                                         "candidates": ["9"]}, actor="x")
    with pytest.raises(Conflict):
        store.end_rollout("fraud-v9", actor="bob", status="promoted", candidate="7")
    done = store.end_rollout("fraud-v9", actor="bob", status="promoted", candidate="9")
    assert (done["status"], done["promoted_by_hand"]) == ("promoted", "9")
    with pytest.raises(NotFound):
        store.end_rollout("nope", actor="bob", status="aborted")
    ops = [(a["actor"], a["operation"], a["target"]) for a in store.audit_log()]
    assert ("bob", "rollout.promote", "fraud-v9") in ops
    assert ("admin-token:ab", "rollout.start", "fraud-v9") in ops
    store.close()
