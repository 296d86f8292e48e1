"""The database goes away during a drift incident: the worker keeps streaming, and once the
database is back every incident, drift event and action is recorded exactly once."""

from __future__ import annotations

import numpy as np
import orjson
import sqlalchemy as sa
from confluent_kafka import Producer
from conftest import get_json, wait_for
from test_worker_integration import consume

from driftwarden.config import Topics
from driftwarden.store import Store
from driftwarden.store.models import Action, IncidentEvent

PREFIX = "outage"

TOPICS = Topics.__struct_fields__  # every topic, so a test's worker shares none


def produce_model(bootstrap, model, seed):
    """24 s of event time, 500 records a second; the feature shifts at 12 s."""
    p = Producer({"bootstrap.servers": bootstrap})
    rng = np.random.default_rng(seed)
    for t in range(24):
        for i in range(500):
            rec = {"model": model, "version": "1", "id": f"{t}-{i}", "ts": 1000 + t + i / 500,
                   "features": {"amount": float(rng.normal(2.0 if t >= 12 else 0.0, 1))},
                   "prediction": float(rng.random())}
            p.produce(f"{PREFIX}.predictions", key=model.encode(), value=orjson.dumps(rec))
        p.poll(0)
    assert p.flush(30) == 0


def recorded(url):
    """(drift event ids, action event ids with their status) in the store, or None while the
    database does not answer."""
    try:
        engine = sa.create_engine(url, connect_args={"connect_timeout": 2})
        with engine.connect() as c:
            events = [r[0] for r in c.execute(sa.select(IncidentEvent.event_id))]
            actions = {r[0]: r[1] for r in c.execute(sa.select(Action.event_id, Action.status))}
        engine.dispose()
        return events, actions
    except sa.exc.OperationalError:
        return None


def api(port, path, token="reader-1", body=None):
    """GET (or POST ``body`` to) the worker's admin API: the JSON answer, or the error
    status."""
    import json
    import urllib.error
    import urllib.request

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1{path}", headers=headers,
                                 data=data, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code


def published(bootstrap, want_models):
    # both topics: they are read in no particular order, so an action may come first
    got = consume(bootstrap, [f"{PREFIX}.drift", f"{PREFIX}.actions"],
                  lambda g: all({orjson.loads(v)["model"] for t, v, _ in g
                                 if t == f"{PREFIX}.{topic}"} >= want_models
                                for topic in ("drift", "actions")), timeout=90)
    drift = [orjson.loads(v) for t, v, _ in got if t == f"{PREFIX}.drift"]
    actions = [orjson.loads(v) for t, v, _ in got if t == f"{PREFIX}.actions"]
    return drift, actions


def test_database_outage_during_an_incident_loses_and_doubles_nothing(
        broker, spawn_worker, private_postgres):
    pg = private_postgres
    env = {f"DRIFTWARDEN_TOPICS__{t.upper()}": f"{PREFIX}.{t}" for t in TOPICS}
    env.update({"DRIFTWARDEN_KAFKA__GROUP_ID": f"{PREFIX}-workers",
                "DRIFTWARDEN_DATABASE_URL": pg.url,
                "DRIFTWARDEN_API__READ_TOKENS": '["reader-1"]',
                "DRIFTWARDEN_API__ADMIN_TOKENS": '["admin-1"]',
                "DRIFTWARDEN_OUTBOX_SECONDS": "2",
                "DRIFTWARDEN_DETECTION__SLICES": "3", "DRIFTWARDEN_DETECTION__SLICE_SECONDS": "1",
                "DRIFTWARDEN_DETECTION__ALLOWED_LATENESS": "0.2",
                "DRIFTWARDEN_DETECTION__CALIBRATION_SIMS": "50"})
    proc, port, log = spawn_worker(broker.bootstrap_servers, env)
    bootstrap = broker.bootstrap_servers

    # the incident opens and is recorded while the database is up
    produce_model(bootstrap, "fraud", 1)
    wait_for("fraud's incident in the store",
             lambda: (r := recorded(pg.url)) and r[0] and r[1], 60)

    # the database goes away; a second model drifts meanwhile
    pg.stop()
    produce_model(bootstrap, "churn", 2)
    drift, actions = published(bootstrap, {"fraud", "churn"})
    assert {e["model"] for e in drift} == {"fraud", "churn"}
    assert recorded(pg.url) is None  # really down while the worker published churn's events
    assert get_json(port, "/health")["status"] == "ok"  # and the stream kept moving
    assert api(port, "/incidents") == 503  # the admin API says so, on the worker's server

    pg.start()
    want_events = sorted(e["event_id"] for e in drift)
    want_actions = sorted(a["event_id"] for a in actions)

    last = []

    def all_recorded():
        r = recorded(pg.url)
        last[:] = [r, want_events, want_actions]
        return r if r and sorted(r[0]) == want_events and sorted(r[1]) == want_actions and all(
            s == "delivered" for s in r[1].values()) else None
    try:
        events, statuses = wait_for("every event and action recorded", all_recorded, 90)
    except BaseException:
        print("recorded / wanted:", last, log.read_text()[-3000:])
        raise
    assert len(events) == len(set(events)) == len(want_events)  # once each
    assert api(port, "/incidents", token=None) == 401
    listed = api(port, "/incidents")
    assert sorted(i["model"] for i in listed) == sorted({e["model"] for e in drift})
    store = Store(pg.url, migrate=False)
    for model in ("fraud", "churn"):  # the baselines they were judged against
        b = store.baseline(model, "1")
        assert (b["revision"], b["rows"], b["fitted_by"]) == (1, 2000, "worker")
        assert b["source"].startswith("warm-up") and b["summary"]["n_rows"] == 2000
    incidents = store.incidents()
    assert {i["model"] for i in incidents} == {"fraud", "churn"}
    assert all(i["evidence"] for i in incidents)
    assert [a["operation"] for a in store.audit_log()].count("action.review") + [
        a["operation"] for a in store.audit_log()].count("action.retrain") + [
        a["operation"] for a in store.audit_log()].count("action.rollback") == len(want_actions)

    # the outbox: an action recorded but never acknowledged (a worker died between the two)
    # is produced again by the worker holding its model, with its event_id, then delivered
    lost = {**actions[0], "event_id": "lost-action-1"}
    assert store.record_action(lost)
    resent = consume(bootstrap, [f"{PREFIX}.actions"], lambda g: any(
        orjson.loads(v)["event_id"] == "lost-action-1" for _, v, _ in g), timeout=60)
    [(_, value, headers)] = [m for m in resent if orjson.loads(m[1])["event_id"] == "lost-action-1"]
    assert orjson.loads(value) == lost and headers["dw.event_id"] == b"lost-action-1"
    wait_for("the re-sent action marked delivered", lambda: next(
        a for a in store.actions(limit=1000) if a["event_id"] == "lost-action-1")["status"]
        == "delivered", 30)
    store.close()

    # a silence set through the admin API reaches the worker (metric; rules skip the model)
    assert api(port, "/models/churn/silence", token="admin-1",
               body={"minutes": 30, "reason": "retraining"})["model"] == "churn"
    wait_for("the silence on the worker's /metrics",
             lambda: 'driftwarden_model_silenced{model="churn"} 1.0' in metrics_text(port), 30)
    assert proc.poll() is None, log.read_text()[-2000:]


def metrics_text(port):
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()
