"""The public contracts of the two topics other teams consume: drift events
(``driftwarden.drift``) and action events (``driftwarden.actions``), as typed, versioned structs.

Every event carries ``schema_version`` (:data:`SCHEMA_VERSION`). Within a version, fields are
only ever added (consumers must ignore unknown fields); removing or changing one makes a new
version. The JSON Schemas (draft 2020-12) are generated from these structs
(:func:`json_schemas`) and committed under ``docs/schemas/``; a test keeps them equal and
validates the events the tests produce against them.

>>> ev = decode_drift(b'{"schema_version": 1, "event_id": "e", "incident_id": "i", '
...                   b'"model": "fraud", "version": "7", "kind": "data", "state": "onset", '
...                   b'"severity": "warning", "features": ["amount"], "evidence": [], '
...                   b'"ts": 1764300000.0, "added_later": true}')
>>> ev.kind, ev.features
('data', ['amount'])
>>> sorted(json_schemas())
['action-event.v1.json', 'drift-event.v1.json']
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

SCHEMA_VERSION = 1

Kind = Literal["data", "prediction", "quality", "concept"]
State = Literal["onset", "escalation", "recovery"]
Severity = Literal["none", "warning", "critical"]
Action = Literal["rollback", "retrain", "review", "promote"]


class Evidence(msgspec.Struct, frozen=True, kw_only=True):
    """One test on one feature as it entered the decision. Non-finite numbers are null."""

    feature: str  # a feature name, "__prediction__" or "__error__" (concept drift)
    test: str     # ks, psi, chi2, jensenshannon, hellinger, wasserstein, missing_ratio, adwin…
    statistic: float | None
    pvalue: float | None           # analytic or calibrated; null for threshold-only tests
    adjusted_pvalue: float | None  # after the multiple-testing correction
    threshold: float | None        # the statistic's critical value at the budget
    n_reference: int
    n_current: int
    decision: bool  # whether this test counts in the decision
    rejected: bool  # whether it flagged (before the feature's min_psi check)


class DriftEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One change of a verdict of one (model, version, kind)."""

    schema_version: int = SCHEMA_VERSION
    event_id: str     # uuid5 of (incident, state, evaluation): the same on every replay
    incident_id: str  # uuid5 of (model, version, kind, onset evaluation)
    model: str
    version: str
    kind: Kind
    state: State
    severity: Severity  # "none" on a recovery
    features: list[str]
    evidence: list[Evidence]
    ts: float  # event time (seconds since the epoch) of the evaluation


class ActionEvidence(msgspec.Struct, frozen=True, kw_only=True):
    """The drift event an action answers, in short."""

    drift_event_id: str
    kind: Kind
    severity: Severity
    features: list[str]
    tests: list[Evidence]  # at most 20


class RolloutEvidence(msgspec.Struct, frozen=True, kw_only=True):
    """A rollout's verdict behind a ``promote`` / ``rollback`` / ``review`` action (added in
    schema version 1: absent from actions that answer drift). The bounds are anytime-valid
    bounds of the decisive signal's difference, candidate − baseline (losses: lower is
    better), judged against ``margin``."""

    rollout: str
    strategy: Literal["canary", "shadow", "blue_green", "champion_challenger"]
    baseline: str
    candidate: str
    verdict: Literal["promote", "rollback", "inconclusive"]
    signal: str  # performance | disagreement | latency | quality | routing | guard-rail | …
    estimate: float | None
    lower: float | None
    upper: float | None
    margin: float | None
    alpha: float
    samples: dict[str, int]  # per version: labelled outcomes (shadow: paired requests)
    slice: int | None        # the last slice of event time folded in


class ActionEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A request to an automated responder; ``event_id`` depends only on (incident, action)
    — for a rollout's verdict on (rollout, candidate, verdict) — so a consumer drops
    duplicates by it. ``rollout`` is set on the actions of a rollout's verdict (then
    ``incident_id`` is the rollout's id and ``evidence`` summarises the decisive signal)."""

    schema_version: int = SCHEMA_VERSION
    event_id: str
    action: Action
    model: str
    version: str
    target_version: str | None  # rollback: the version to go back to
    incident_id: str
    reason: str
    evidence: ActionEvidence
    runbook_url: str
    ts: float
    rollout: RolloutEvidence | None = None


_drift = msgspec.json.Decoder(DriftEvent)
_action = msgspec.json.Decoder(ActionEvent)


def decode_drift(raw: bytes) -> DriftEvent:
    """A drift event from its JSON (unknown fields ignored; a wrong one raises)."""
    return _drift.decode(raw)


def decode_action(raw: bytes) -> ActionEvent:
    """An action event from its JSON (unknown fields ignored; a wrong one raises)."""
    return _action.decode(raw)


def json_schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema (2020-12) of each event, as committed in docs/schemas/."""
    out = {}
    for name, cls in (("drift-event", DriftEvent), ("action-event", ActionEvent)):
        schema = msgspec.json.schema(cls)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://driftwarden.dev/schemas/{name}.v{SCHEMA_VERSION}.json"
        out[f"{name}.v{SCHEMA_VERSION}.json"] = schema
    return out


def write_schemas(directory: str) -> list[str]:
    """Write :func:`json_schemas` into ``directory`` (``python -m driftwarden.events DIR``)."""
    import json
    from pathlib import Path

    out = []
    for name, schema in json_schemas().items():
        path = Path(directory) / name
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        out.append(str(path))
    return out


if __name__ == "__main__":  # pragma: no cover
    import sys

    print("\n".join(write_schemas(sys.argv[1] if len(sys.argv) > 1 else "docs/schemas")))
