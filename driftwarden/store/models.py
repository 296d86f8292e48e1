"""The SQL schema of driftwarden's memory: models, versions with lineage, versioned baselines,
incidents and the verdict events behind them, action events with their delivery state, silences
and an append-only audit log. SQLAlchemy 2 typed declarative models; the schema itself is made
by Alembic migrations (``driftwarden/store/migrations``), which a test keeps equal to these
models on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from driftwarden.statuses import INCIDENT_STATUSES, VERSION_STATUSES  # noqa: F401 - re-exported


class Base(DeclarativeBase):
    # times are UTC; SQLite keeps them naive, PostgreSQL as timestamptz
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON,
                           datetime: DateTime(timezone=True)}


class Model(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    owner: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime]


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    version: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20), default="registered")
    training_data_hash: Mapped[str] = mapped_column(String(200), default="")
    code_ref: Mapped[str] = mapped_column(String(500), default="")
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    evaluation: Mapped[dict[str, Any]] = mapped_column(default=dict)
    approved_by: Mapped[str | None] = mapped_column(String(200))
    approved_at: Mapped[datetime | None]
    deployed_at: Mapped[datetime | None]
    created_at: Mapped[datetime]


class Baseline(Base):
    __tablename__ = "baselines"
    __table_args__ = (UniqueConstraint("model", "version", "revision"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(100))
    revision: Mapped[int]                      # 1, 2, ... per (model, version)
    summary: Mapped[dict[str, Any]]            # detectors.baseline.Baseline.to_state()
    rows: Mapped[int] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(String(500))   # file, "warm-up", "upload"
    fitted_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]


class Incident(Base):
    __tablename__ = "incidents"
    __table_args__ = (Index("ix_incidents_model_status", "model", "status"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the stream's incident_id
    model: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20))
    severity: Mapped[str] = mapped_column(String(20))
    features: Mapped[list[Any]] = mapped_column(default=list)
    evidence: Mapped[list[Any]] = mapped_column(default=list)
    opened_at: Mapped[datetime]
    escalated_at: Mapped[datetime | None]
    acknowledged_at: Mapped[datetime | None]
    acknowledged_by: Mapped[str | None] = mapped_column(String(200))
    resolved_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]


class IncidentEvent(Base):
    """One drift event (a change of verdict) of an incident: onset, escalation, recovery."""

    __tablename__ = "incident_events"

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    incident_id: Mapped[str] = mapped_column(ForeignKey("incidents.id", ondelete="CASCADE"),
                                             index=True)
    state: Mapped[str] = mapped_column(String(20))
    severity: Mapped[str] = mapped_column(String(20))
    features: Mapped[list[Any]] = mapped_column(default=list)
    evidence: Mapped[list[Any]] = mapped_column(default=list)
    ts: Mapped[datetime]


class Action(Base):
    """An action event and its delivery state (pending until the broker acknowledged it)."""

    __tablename__ = "actions"

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    incident_id: Mapped[str] = mapped_column(String(64), index=True)
    model: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(20))
    target_version: Mapped[str | None] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(Text, default="")
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]


class Rollout(Base):
    """A rollout (declared in the config, or started through the admin API) and where it
    stands; its verdicts are in :class:`RolloutVerdict`."""

    __tablename__ = "rollouts"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), index=True)
    spec: Mapped[dict[str, Any]]      # the RolloutSpec, as JSON
    source: Mapped[str] = mapped_column(String(20))  # config | api
    # running | promoted | rolled_back | inconclusive | aborted
    status: Mapped[str] = mapped_column(String(20))
    promoted_by_hand: Mapped[str | None] = mapped_column(String(100))  # the candidate
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]


class RolloutVerdict(Base):
    """A rollout candidate's final verdict, as its action event published it."""

    __tablename__ = "rollout_verdicts"

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    rollout: Mapped[str] = mapped_column(String(100), index=True)
    candidate: Mapped[str] = mapped_column(String(100))
    verdict: Mapped[str] = mapped_column(String(20))
    signal: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(Text, default="")
    evidence: Mapped[dict[str, Any]]
    ts: Mapped[datetime | None]  # event time of the slice that decided
    recorded_at: Mapped[datetime]


class Silence(Base):
    __tablename__ = "silences"

    id: Mapped[int] = mapped_column(primary_key=True)
    model: Mapped[str] = mapped_column(String(200), index=True)
    until: Mapped[datetime]
    reason: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]


class AuditEntry(Base):
    """Append-only: the store only ever inserts here."""

    __tablename__ = "audit_log"

    # BIGINT on PostgreSQL; INTEGER on SQLite, where only that is the rowid
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"),
                                    primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(200))      # "admin-token:ab12…", "cli:user", "worker"
    operation: Mapped[str] = mapped_column(String(100))  # e.g. "incident.ack"
    target: Mapped[str] = mapped_column(String(500), default="")
    outcome: Mapped[str] = mapped_column(String(20))     # ok | refused | error
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
