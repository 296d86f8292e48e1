"""driftwarden's memory in SQL: which model version ran, what baseline judged it, why an incident
opened, who acknowledged it, which action followed — and an append-only audit log of every
change. SQLite file by default (``<data_dir>/driftwarden.db``), PostgreSQL through
``DRIFTWARDEN_DATABASE_URL`` (``postgresql+psycopg://…``). The schema is made by Alembic
migrations (:meth:`Store.migrate`, run on open).

Everything the stream records is idempotent by its ``event_id`` (a replay records nothing
twice); every change made through the API or the CLI writes its audit row in the same
transaction.

>>> s = Store("sqlite://")
>>> s.record_event({"event_id": "e1", "incident_id": "i1", "model": "fraud", "version": "7",
...                 "kind": "data", "state": "onset", "severity": "warning",
...                 "features": ["amount"], "evidence": [], "ts": 1764300000.0})
True
>>> [(i["id"], i["status"], i["severity"]) for i in s.incidents()]
[('i1', 'open', 'warning')]
>>> s.ack_incident("i1", actor="cli:alice")["status"], s.audit_log()[0]["operation"]
('acknowledged', 'incident.ack')
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from driftwarden.errors import DriftwardenError
from driftwarden.store.models import (
    VERSION_STATUSES,
    Action,
    AuditEntry,
    Base,
    Baseline,
    Incident,
    IncidentEvent,
    Model,
    ModelVersion,
    Rollout,
    RolloutVerdict,
    Silence,
)

__all__ = ["Base", "NotFound", "Conflict", "Store", "database_url", "now"]


class NotFound(DriftwardenError, LookupError):
    """The model, version or incident named does not exist."""


class Conflict(DriftwardenError):
    """The change contradicts what is stored (e.g. a model registered twice)."""


def now() -> datetime:
    return datetime.now(UTC)


def database_url(settings: Any) -> str:
    """The settings' database URL, or the default SQLite file in the data directory."""
    if settings.database_url:
        return str(settings.database_url)
    return f"sqlite:///{Path(settings.data_dir).resolve() / 'driftwarden.db'}"


def open_store(url: str, what: str = "database") -> Store:
    """:class:`Store` at ``url``, or one readable :class:`~driftwarden.errors.InputError`
    (credentials never shown): a bad URL, a database that does not answer.

    >>> open_store("nonsense://x")
    Traceback (most recent call last):
    ...
    driftwarden.errors.InputError: DRIFTWARDEN_DATABASE_URL is not a database URL: nonsense://x
    """
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    from driftwarden.config import safe_url
    from driftwarden.errors import InputError

    try:
        return Store(url)
    except (ArgumentError, NoSuchModuleError):
        raise InputError(f"DRIFTWARDEN_DATABASE_URL is not a database URL: "
                         f"{safe_url(url)}") from None
    except (SQLAlchemyError, OSError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise InputError(f"{what} {safe_url(url)}: {reason}") from None


def _utc(t: datetime | None) -> str | None:
    if t is None:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).isoformat()


def _ts(value: Any) -> datetime:
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return now()


class Store:
    """The repository over one database; see the module docstring."""

    def __init__(self, url: str, *, migrate: bool = True, timeout: float = 10.0) -> None:
        self.url = url
        args: dict[str, Any] = {}
        if url.startswith("sqlite"):
            path = url.split("///", 1)[1] if "///" in url else ""
            if path and path != ":memory:":
                from driftwarden.config import private_dir

                private_dir(Path(path).parent)
                if not Path(path).exists():  # the store: readable by this user only
                    Path(path).touch(mode=0o600)
            args["connect_args"] = {"timeout": timeout}
            if path in ("", ":memory:"):  # one in-memory database shared by every session
                from sqlalchemy.pool import StaticPool

                args.update(poolclass=StaticPool,
                            connect_args={"check_same_thread": False, "timeout": timeout})
        else:
            args["connect_args"] = {"connect_timeout": max(1, int(timeout))}
        self.engine: Engine = create_engine(url, pool_pre_ping=True, **args)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        if migrate:
            self.migrate()

    def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":  # workers starting together migrate once
                conn.execute(text("SELECT pg_advisory_xact_lock(7305481)"))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._session.begin() as s:
            yield s

    # -- the stream's records (idempotent by event_id) ------------------------------------
    def record_event(self, ev: Mapping[str, Any]) -> bool:
        """Record a drift event in its incident; False if it was recorded already."""
        at = _ts(ev.get("ts"))
        try:
            with self.session() as s:
                if s.get(IncidentEvent, ev["event_id"]) is not None:
                    return False
                inc = s.get(Incident, ev["incident_id"])
                state = ev["state"]
                if inc is None:
                    inc = Incident(id=ev["incident_id"], model=ev["model"],
                                   version=str(ev["version"]), kind=ev["kind"], status="open",
                                   severity=ev["severity"], features=list(ev.get("features", [])),
                                   evidence=list(ev.get("evidence", [])), opened_at=at,
                                   updated_at=at)
                    s.add(inc)
                    s.flush()
                if state == "escalation":
                    inc.escalated_at = at
                    if inc.status != "acknowledged":
                        inc.status = "escalated"
                if state == "recovery":
                    inc.resolved_at, inc.status = at, "resolved"
                else:
                    inc.severity = ev["severity"]
                    inc.features = list(ev.get("features", []))
                    inc.evidence = list(ev.get("evidence", []))
                inc.updated_at = at
                s.add(IncidentEvent(event_id=ev["event_id"], incident_id=inc.id, state=state,
                                    severity=ev["severity"],
                                    features=list(ev.get("features", [])),
                                    evidence=list(ev.get("evidence", [])), ts=at))
            return True
        except IntegrityError:  # a concurrent writer recorded it first
            return False

    def record_action(self, action: Mapping[str, Any]) -> bool:
        """Record an action event (``pending`` until :meth:`mark_delivered`) and its audit
        row; False if it was recorded already."""
        try:
            with self.session() as s:
                if s.get(Action, action["event_id"]) is not None:
                    return False
                s.add(Action(event_id=action["event_id"], incident_id=action["incident_id"],
                             model=action["model"], version=str(action["version"]),
                             action=action["action"],
                             target_version=action.get("target_version"),
                             reason=str(action.get("reason", "")), payload=dict(action),
                             # when recorded (the event's own time is in the payload): the
                             # outbox's age is wall-clock time, also for replayed old logs
                             status="pending", attempts=1, created_at=now()))
                s.add(_audit("worker", f"action.{action['action']}", action["model"], "ok",
                             {"event_id": action["event_id"],
                              "incident_id": action["incident_id"],
                              "target_version": action.get("target_version")}))
            return True
        except IntegrityError:
            return False

    def mark_delivered(self, event_id: str) -> None:
        with self.session() as s:
            a = s.get(Action, event_id)
            if a is not None and a.status != "delivered":
                a.status, a.delivered_at = "delivered", now()

    def pending_actions(self, older_than: datetime, models: Iterable[str] | None = None,
                        limit: int = 100) -> list[dict[str, Any]]:
        """Action events recorded before ``older_than`` and still not acknowledged by the
        broker (the outbox), oldest first; each counts one more attempt."""
        with self.session() as s:
            q = (select(Action).where(Action.status == "pending",
                                      Action.created_at < older_than)
                 .order_by(Action.created_at, Action.event_id).limit(limit))
            if models is not None:
                q = q.where(Action.model.in_(list(models)))
            out = []
            for a in s.scalars(q):
                a.attempts += 1
                out.append(dict(a.payload))
            return out

    # -- models, versions, baselines ------------------------------------------------------
    def register_model(self, name: str, *, actor: str, description: str = "",
                       owner: str = "") -> dict[str, Any]:
        with self.session() as s:
            if s.scalar(select(Model).where(Model.name == name)) is not None:
                raise Conflict(f"model {name!r} is registered already")
            m = Model(name=name, description=description, owner=owner, created_at=now())
            s.add(m)
            s.add(_audit(actor, "model.register", name, "ok",
                         {"description": description, "owner": owner}))
            s.flush()
            return _model_dict(m, [])

    def register_version(self, model: str, version: str, *, actor: str,
                         lineage: Mapping[str, Any] | None = None,
                         status: str = "registered") -> dict[str, Any]:
        """Register a version with its lineage (training_data_hash, code_ref,
        hyperparameters, evaluation); the model is registered too when new."""
        lin = dict(lineage or {})
        _check_status(status)
        with self.session() as s:
            m = s.scalar(select(Model).where(Model.name == model))
            if m is None:
                m = Model(name=model, description="", owner="", created_at=now())
                s.add(m)
                s.flush()
            if s.scalar(select(ModelVersion).where(ModelVersion.model_id == m.id,
                                                   ModelVersion.version == version)):
                raise Conflict(f"version {version!r} of {model!r} is registered already")
            v = ModelVersion(model_id=m.id, version=version, status=status,
                             training_data_hash=str(lin.get("training_data_hash", "")),
                             code_ref=str(lin.get("code_ref", "")),
                             hyperparameters=dict(lin.get("hyperparameters") or {}),
                             evaluation=dict(lin.get("evaluation") or {}),
                             approved_by=lin.get("approved_by"),
                             approved_at=now() if lin.get("approved_by") else None,
                             deployed_at=now() if status in ("canary", "live") else None,
                             created_at=now())
            s.add(v)
            s.add(_audit(actor, "version.register", f"{model}/{version}", "ok",
                         {"status": status, **lin}))
            s.flush()
            return _version_dict(v)

    def promote(self, model: str, version: str, status: str, *, actor: str) -> dict[str, Any]:
        """Set a version's status; promoting one to ``live`` retires the live one before."""
        _check_status(status)
        with self.session() as s:
            m, v = self._version(s, model, version)
            retired = []
            if status == "live":
                for other in s.scalars(select(ModelVersion).where(
                        ModelVersion.model_id == m.id, ModelVersion.status == "live",
                        ModelVersion.id != v.id)):
                    other.status = "retired"
                    retired.append(other.version)
            before = v.status
            v.status = status
            if status in ("canary", "live"):
                v.deployed_at = now()
            s.add(_audit(actor, "version.promote", f"{model}/{version}", "ok",
                         {"from": before, "to": status, "retired": retired}))
            return _version_dict(v)

    def add_baseline(self, model: str, version: str, summary: Mapping[str, Any], *, rows: int,
                     source: str, actor: str, unless_same: bool = False) -> dict[str, Any]:
        """Store a new revision of the baseline of (model, version); with ``unless_same``, a
        summary equal to the newest revision's is not stored again (a refit after a replay)."""
        with self.session() as s:
            newest = s.scalars(select(Baseline).where(
                Baseline.model == model, Baseline.version == version)
                .order_by(Baseline.revision.desc()).limit(1)).first()
            if unless_same and newest is not None and newest.summary == dict(summary):
                return _baseline_dict(newest, summary=False)
            rev = (newest.revision if newest is not None else 0) + 1
            b = Baseline(model=model, version=version, revision=rev, summary=dict(summary),
                         rows=int(rows), source=source, fitted_by=actor, created_at=now())
            s.add(b)
            s.add(_audit(actor, "baseline.add", f"{model}/{version}", "ok",
                         {"revision": rev, "rows": rows, "source": source}))
            s.flush()
            return _baseline_dict(b, summary=False)

    def baseline(self, model: str, version: str, revision: int | None = None
                 ) -> dict[str, Any]:
        """The newest (or the given) revision of a baseline, with its summary."""
        with self.session() as s:
            q = select(Baseline).where(Baseline.model == model, Baseline.version == version)
            q = (q.where(Baseline.revision == revision) if revision is not None
                 else q.order_by(Baseline.revision.desc()))
            b = s.scalars(q.limit(1)).first()
            if b is None:
                raise NotFound(f"no baseline for {model} v{version}")
            return _baseline_dict(b, summary=True)

    def baseline_revisions(self, model: str, revision: int | None = None
                           ) -> dict[str, dict[str, Any]]:
        """Per version of ``model``: its newest baseline revision (or revision ``revision``,
        for the versions that have one), with the summary."""
        with self.session() as s:
            q = select(Baseline).where(Baseline.model == model)
            if revision is not None:
                q = q.where(Baseline.revision == revision)
            out: dict[str, dict[str, Any]] = {}
            for b in s.scalars(q.order_by(Baseline.version, Baseline.revision)):
                out[b.version] = _baseline_dict(b, summary=True)  # the newest stays
            return out

    def models(self) -> list[dict[str, Any]]:
        """Every model with its versions: those registered (with their status) and those the
        stream only saw — a baseline fitted or an incident opened — as status ``seen``."""
        with self.session() as s:
            versions: dict[str, list[dict[str, Any]]] = {}
            models = list(s.scalars(select(Model).order_by(Model.name)))
            names = {m.id: m.name for m in models}
            for v in s.scalars(select(ModelVersion).order_by(ModelVersion.created_at,
                                                             ModelVersion.id)):
                versions.setdefault(names[v.model_id], []).append(_version_dict(v))
            seen: dict[tuple[str, str], datetime] = {}
            for name, version, at in [
                    *s.execute(select(Baseline.model, Baseline.version,
                                      func.min(Baseline.created_at))
                               .group_by(Baseline.model, Baseline.version)),
                    *s.execute(select(Incident.model, Incident.version,
                                      func.min(Incident.opened_at))
                               .group_by(Incident.model, Incident.version))]:
                key = (name, version)
                seen[key] = min(seen.get(key, at), at)
            for (name, version), at in sorted(seen.items(), key=lambda kv: (kv[0][0], kv[1])):
                known = versions.setdefault(name, [])
                if all(v["version"] != version for v in known):
                    known.append(_seen_version(version, at))
            out = [_model_dict(m, versions.get(m.name, [])) for m in models]
            registered = {m.name for m in models}
            # models seen only by the stream (baselines, incidents) appear too
            out += [{"name": name, "description": "", "owner": "", "created_at": None,
                     "versions": vs, "registered": False}
                    for name, vs in versions.items() if name not in registered]
            return sorted(out, key=lambda m: m["name"])

    # -- incidents, silences, actions, audit ----------------------------------------------
    def incidents(self, *, model: str | None = None, status: str | None = None,
                  limit: int = 100) -> list[dict[str, Any]]:
        with self.session() as s:
            q = select(Incident).order_by(Incident.opened_at.desc(), Incident.id).limit(limit)
            if model:
                q = q.where(Incident.model == model)
            if status:
                q = q.where(Incident.status == status)
            return [_incident_dict(i) for i in s.scalars(q)]

    def incident(self, incident_id: str) -> dict[str, Any]:
        with self.session() as s:
            i = s.get(Incident, incident_id)
            if i is None:
                raise NotFound(f"no incident {incident_id!r}")
            out = _incident_dict(i)
            out["events"] = [
                {"event_id": e.event_id, "state": e.state, "severity": e.severity,
                 "features": e.features, "ts": _utc(e.ts)}
                for e in s.scalars(select(IncidentEvent).where(
                    IncidentEvent.incident_id == incident_id).order_by(IncidentEvent.ts))]
            return out

    def find_incident(self, id_or_prefix: str) -> str:
        """The id of the incident ``id_or_prefix`` names: its full id, or a prefix of at least
        4 characters that only one incident id starts with (what a cut table cell shows).

        Raises :class:`NotFound` when none or several match."""
        with self.session() as s:
            if s.get(Incident, id_or_prefix) is not None:
                return id_or_prefix
            if len(id_or_prefix) < 4:
                raise NotFound(f"no incident {id_or_prefix!r} (a prefix needs 4 characters)")
            pattern = id_or_prefix.replace("\\", "\\\\").replace("%", "\\%").replace(
                "_", "\\_") + "%"
            ids = list(s.scalars(select(Incident.id).where(
                Incident.id.like(pattern, escape="\\")).limit(3)))
        if not ids:
            raise NotFound(f"no incident {id_or_prefix!r}")
        if len(ids) > 1:
            raise NotFound(f"{id_or_prefix!r} is the start of several incident ids "
                           f"({', '.join(ids[:2])}, …): give more of it")
        return ids[0]

    def ack_incident(self, incident_id: str, *, actor: str, note: str = "") -> dict[str, Any]:
        """Acknowledge an incident (its id or a unique prefix); acknowledging it again keeps
        the first acknowledgement and writes no audit row."""
        incident_id = self.find_incident(incident_id)
        with self.session() as s:
            i = s.get(Incident, incident_id)
            if i is None:
                raise NotFound(f"no incident {incident_id!r}")
            if i.acknowledged_at is not None:  # idempotent: the first acknowledgement stands
                return _incident_dict(i)
            i.acknowledged_at, i.acknowledged_by = now(), actor
            if i.status != "resolved":
                i.status = "acknowledged"
            s.add(_audit(actor, "incident.ack", incident_id, "ok", {"note": note}))
            return _incident_dict(i)

    def resolve_incident(self, incident_id: str, *, actor: str, note: str = ""
                         ) -> dict[str, Any]:
        """Resolve an incident by hand (its id or a unique prefix): a false alarm, or the end
        of a demo. The stream resolves an incident itself when its verdict recovers; resolving
        one already resolved changes nothing and writes no audit row."""
        incident_id = self.find_incident(incident_id)
        with self.session() as s:
            i = s.get(Incident, incident_id)
            if i is None:
                raise NotFound(f"no incident {incident_id!r}")
            if i.status == "resolved":
                return _incident_dict(i)
            i.status, i.resolved_at, i.updated_at = "resolved", now(), now()
            s.add(_audit(actor, "incident.resolve", incident_id, "ok", {"note": note}))
            return _incident_dict(i)

    def silence(self, model: str, until: datetime, *, actor: str, reason: str = ""
                ) -> dict[str, Any]:
        with self.session() as s:
            row = Silence(model=model, until=until, reason=reason, created_by=actor,
                          created_at=now())
            s.add(row)
            s.add(_audit(actor, "model.silence", model, "ok",
                         {"until": until.isoformat(), "reason": reason}))
            s.flush()
            return {"id": row.id, "model": model, "until": _utc(until), "reason": reason,
                    "created_by": actor}

    def active_silences(self, at: datetime | None = None) -> dict[str, datetime]:
        """Every silenced model and the end of its longest silence active at ``at``."""
        at = at or now()
        out: dict[str, datetime] = {}
        with self.session() as s:
            for model, until in s.execute(select(Silence.model, Silence.until)):
                until = until if until.tzinfo else until.replace(tzinfo=UTC)
                if until > at and (model not in out or until > out[model]):
                    out[model] = until
        return out

    def silenced_until(self, model: str, at: datetime | None = None) -> datetime | None:
        """The end of the longest silence of ``model`` active at ``at`` (None: not silenced)."""
        return self.active_silences(at).get(model)

    def actions(self, *, model: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        with self.session() as s:
            q = select(Action).order_by(Action.created_at.desc(), Action.event_id).limit(limit)
            if model:
                q = q.where(Action.model == model)
            return [{"event_id": a.event_id, "incident_id": a.incident_id, "model": a.model,
                     "version": a.version, "action": a.action,
                     "target_version": a.target_version, "reason": a.reason,
                     "status": a.status, "created_at": _utc(a.created_at),
                     "delivered_at": _utc(a.delivered_at),
                     # a rollout's verdict: its evidence, as published
                     "rollout": (a.payload or {}).get("rollout")} for a in s.scalars(q)]

    # -- rollouts ---------------------------------------------------------------------------
    def sync_config_rollouts(self, specs: Mapping[str, Mapping[str, Any]]) -> None:
        """The config's rollouts (name -> spec as JSON) recorded, once each: a new one as
        running; a running one whose spec changed takes the new spec."""
        with self.session() as s:
            for name, spec in specs.items():
                row = s.get(Rollout, name)
                if row is None:
                    at = now()
                    s.add(Rollout(name=name, model=str(spec["model"]), spec=dict(spec),
                                  source="config", status="running", created_by="config",
                                  created_at=at, updated_at=at))
                elif row.status == "running" and row.spec != dict(spec):
                    row.spec, row.updated_at = dict(spec), now()

    def start_rollout(self, name: str, spec: Mapping[str, Any], *, actor: str
                      ) -> dict[str, Any]:
        """A rollout started through the admin API (Conflict: the name is taken)."""
        with self.session() as s:
            if s.get(Rollout, name) is not None:
                raise Conflict(f"rollout {name!r} exists")
            at = now()
            s.add(Rollout(name=name, model=str(spec["model"]), spec=dict(spec), source="api",
                          status="running", created_by=actor, created_at=at, updated_at=at))
            s.add(_audit(actor, "rollout.start", name, "ok", {"spec": dict(spec)}))
        return self.rollout(name)

    def end_rollout(self, name: str, *, actor: str, status: str, reason: str = "",
                    candidate: str | None = None) -> dict[str, Any]:
        """A person ends a running rollout: ``aborted``, or ``promoted`` by hand
        (``candidate``); audited. The worker judging it publishes the matching action."""
        with self.session() as s:
            row = s.get(Rollout, name)
            if row is None:
                raise NotFound(f"no rollout {name!r}")
            if row.status != "running":
                raise Conflict(f"rollout {name!r} has ended ({row.status})")
            if candidate is not None and candidate not in row.spec.get("candidates", []):
                raise Conflict(f"{candidate!r} is not a candidate of rollout {name!r}")
            at = now()
            row.status, row.updated_at, row.ended_at = status, at, at
            row.promoted_by_hand = candidate
            s.add(_audit(actor, f"rollout.{'abort' if status == 'aborted' else 'promote'}",
                         name, "ok", {"reason": reason, "candidate": candidate}))
        return self.rollout(name)

    def record_rollout_verdict(self, action: Mapping[str, Any]) -> bool:
        """A rollout's verdict from its action event (idempotent by event_id); the rollout's
        status follows once every candidate has a verdict (a rollout the config declares is
        recorded here first if need be). False if it was recorded already."""
        ev = action["rollout"]
        try:
            with self.session() as s:
                if s.get(RolloutVerdict, action["event_id"]) is not None:
                    return False
                row = s.get(Rollout, ev["rollout"])
                at = now()
                if row is None:
                    row = Rollout(name=ev["rollout"], model=action["model"],
                                  spec={"model": action["model"], "baseline": ev["baseline"],
                                        "candidates": [ev["candidate"]]},
                                  source="config", status="running", created_by="config",
                                  created_at=at, updated_at=at)
                    s.add(row)
                s.add(RolloutVerdict(event_id=action["event_id"], rollout=ev["rollout"],
                                     candidate=ev["candidate"], verdict=ev["verdict"],
                                     signal=ev["signal"], reason=str(action.get("reason", "")),
                                     evidence=dict(ev), ts=_ts(action.get("ts")),
                                     recorded_at=at))
                s.flush()
                decided = {v.candidate: v.verdict for v in s.scalars(
                    select(RolloutVerdict).where(RolloutVerdict.rollout == row.name))}
                if row.status == "running" and set(row.spec.get("candidates", [])) <= set(
                        decided):
                    final = set(decided.values())
                    row.status = ("promoted" if "promote" in final else "rolled_back"
                                  if final == {"rollback"} else "inconclusive")
                    row.ended_at = at
                row.updated_at = at
            return True
        except IntegrityError:
            return False

    def rollout(self, name: str) -> dict[str, Any]:
        with self.session() as s:
            row = s.get(Rollout, name)
            if row is None:
                raise NotFound(f"no rollout {name!r}")
            return self._rollout_dict(s, row)

    def rollouts(self, *, model: str | None = None) -> list[dict[str, Any]]:
        """Every rollout, newest first, with its verdicts."""
        with self.session() as s:
            q = select(Rollout).order_by(Rollout.created_at.desc(), Rollout.name)
            if model:
                q = q.where(Rollout.model == model)
            return [self._rollout_dict(s, r) for r in s.scalars(q)]

    @staticmethod
    def _rollout_dict(s: Session, r: Rollout) -> dict[str, Any]:
        verdicts = [{"event_id": v.event_id, "candidate": v.candidate, "verdict": v.verdict,
                     "signal": v.signal, "reason": v.reason, "evidence": v.evidence,
                     "ts": _utc(v.ts), "recorded_at": _utc(v.recorded_at)}
                    for v in s.scalars(select(RolloutVerdict)
                                       .where(RolloutVerdict.rollout == r.name)
                                       .order_by(RolloutVerdict.recorded_at,
                                                 RolloutVerdict.event_id))]
        return {"name": r.name, "model": r.model, "spec": r.spec, "source": r.source,
                "status": r.status, "promoted_by_hand": r.promoted_by_hand,
                "created_by": r.created_by, "created_at": _utc(r.created_at),
                "updated_at": _utc(r.updated_at), "ended_at": _utc(r.ended_at),
                "verdicts": verdicts}

    def audit(self, actor: str, operation: str, target: str = "", outcome: str = "ok",
              detail: Mapping[str, Any] | None = None) -> None:
        """Append one audit row on its own (e.g. a refused request)."""
        with self.session() as s:
            s.add(_audit(actor, operation, target, outcome, dict(detail or {})))

    def audit_log(self, *, limit: int = 100) -> list[dict[str, Any]]:
        """Newest first."""
        with self.session() as s:
            q = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
            return [{"id": a.id, "at": _utc(a.at), "actor": a.actor, "operation": a.operation,
                     "target": a.target, "outcome": a.outcome, "detail": a.detail}
                    for a in s.scalars(q)]

    def _version(self, s: Session, model: str, version: str) -> tuple[Model, ModelVersion]:
        m = s.scalar(select(Model).where(Model.name == model))
        v = None if m is None else s.scalar(select(ModelVersion).where(
            ModelVersion.model_id == m.id, ModelVersion.version == version))
        if m is None or v is None:
            raise NotFound(f"no version {version!r} of model {model!r}")
        return m, v


def _sqlite_pragmas(dbapi_conn: Any, record: Any) -> None:  # noqa: ARG001
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _check_status(status: str) -> None:
    if status not in VERSION_STATUSES:
        raise Conflict(f"status must be one of {', '.join(VERSION_STATUSES)}, got {status!r}")


def _audit(actor: str, operation: str, target: str, outcome: str,
           detail: dict[str, Any]) -> AuditEntry:
    return AuditEntry(at=now(), actor=actor, operation=operation, target=target,
                      outcome=outcome, detail=detail)


def _model_dict(m: Model, versions: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": m.name, "description": m.description, "owner": m.owner,
            "created_at": _utc(m.created_at), "versions": versions, "registered": True}


def _seen_version(version: str, at: datetime) -> dict[str, Any]:
    """A version the stream saw (baseline, incident) that nobody registered."""
    return {"version": version, "status": "seen", "training_data_hash": "", "code_ref": "",
            "hyperparameters": {}, "evaluation": {}, "approved_by": None, "approved_at": None,
            "deployed_at": None, "created_at": _utc(at)}


def _version_dict(v: ModelVersion) -> dict[str, Any]:
    return {"version": v.version, "status": v.status,
            "training_data_hash": v.training_data_hash, "code_ref": v.code_ref,
            "hyperparameters": v.hyperparameters, "evaluation": v.evaluation,
            "approved_by": v.approved_by, "approved_at": _utc(v.approved_at),
            "deployed_at": _utc(v.deployed_at), "created_at": _utc(v.created_at)}


def _baseline_dict(b: Baseline, summary: bool) -> dict[str, Any]:
    out = {"model": b.model, "version": b.version, "revision": b.revision, "rows": b.rows,
           "source": b.source, "fitted_by": b.fitted_by, "created_at": _utc(b.created_at)}
    if summary:
        out["summary"] = b.summary
    return out


def _incident_dict(i: Incident) -> dict[str, Any]:
    return {"id": i.id, "model": i.model, "version": i.version, "kind": i.kind,
            "status": i.status, "severity": i.severity, "features": i.features,
            "evidence": i.evidence, "opened_at": _utc(i.opened_at),
            "escalated_at": _utc(i.escalated_at), "acknowledged_at": _utc(i.acknowledged_at),
            "acknowledged_by": i.acknowledged_by, "resolved_at": _utc(i.resolved_at)}
