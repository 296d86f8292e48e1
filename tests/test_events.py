"""Drift and action events are public contracts: typed structs with a schema_version
(driftwarden/events.py), JSON Schemas committed in docs/schemas/ equal to the generated ones,
and every event the tests produce valid against both."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema
import numpy as np
import orjson

from driftwarden.config import load_settings
from driftwarden.events import SCHEMA_VERSION, decode_action, decode_drift, json_schemas
from driftwarden.produce import to_record
from driftwarden.stream.service import RawMessage, StreamService
from driftwarden.tables import read_rows

SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "schemas"


def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / name).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def check_events(drift: list[bytes], actions: list[bytes]) -> None:
    """Every event decodes strictly as its struct and validates against its schema."""
    vd = _validator(f"drift-event.v{SCHEMA_VERSION}.json")
    va = _validator(f"action-event.v{SCHEMA_VERSION}.json")
    for raw in drift:
        ev = decode_drift(raw)
        assert ev.schema_version == SCHEMA_VERSION
        vd.validate(orjson.loads(raw))
    for raw in actions:
        ev = decode_action(raw)
        assert ev.schema_version == SCHEMA_VERSION and ev.evidence.drift_event_id
        va.validate(orjson.loads(raw))


def test_committed_schemas_are_the_generated_ones():
    generated = json_schemas()
    assert sorted(p.name for p in SCHEMAS.glob("*.json")) == sorted(generated)
    for name, schema in generated.items():
        assert json.loads((SCHEMAS / name).read_text()) == schema, (
            f"docs/schemas/{name} differs from driftwarden.events: regenerate it (README)")


def test_every_kind_of_event_a_stream_produces_fits_the_contract():
    """Data, prediction and quality onsets (the example files), a recovery, actions, and
    concept drift on joined labels — each validated."""
    svc = StreamService(load_settings(env={"DRIFTWARDEN_DETECTION__SLICE_SECONDS": "1",
                                           "DRIFTWARDEN_DETECTION__SLICES": "3",
                                           "DRIFTWARDEN_DETECTION__ALLOWED_LATENESS": "0",
                                           "DRIFTWARDEN_DETECTION__CALIBRATION_SIMS": "50",
                                           "DRIFTWARDEN_DETECTION__WARMUP": "2000"}))
    examples = resources.files("driftwarden") / "examples"
    rows = (read_rows(str(examples / "reference.csv"))
            + read_rows(str(examples / "current.csv"))
            + read_rows(str(examples / "reference.csv")))  # drift, then back to normal
    rng = np.random.default_rng(0)
    outs = []
    for i, row in enumerate(rows):
        rec, _ = to_record(row, i, model="fraud", version="1", now=1.7e9 + i / 500)
        outs += svc.handle_predictions([RawMessage(orjson.dumps(rec), [], "p", 0, i,
                                                   rec["ts"])])
        if i >= 2000:  # labels: right at first, then wrong half of the time after row 9000
            wrong = i > 9000 and rng.random() < 0.5
            label = int((rec["prediction"] >= 0.5) != wrong)
            outs += svc.handle_labels([RawMessage(orjson.dumps(
                {"model": "fraud", "id": rec["id"], "label": label, "ts": rec["ts"]}),
                [], "l", 0, i, rec["ts"])])
    drift = [o.value for o in outs if o.topic == "driftwarden.drift"]
    actions = [o.value for o in outs if o.topic == "driftwarden.actions"]
    seen = {(e["kind"], e["state"]) for e in map(orjson.loads, drift)}
    assert {("data", "onset"), ("data", "recovery"), ("prediction", "onset"),
            ("quality", "onset"), ("concept", "onset")} <= seen, seen
    assert {orjson.loads(a)["action"] for a in actions} >= {"retrain", "review"}
    check_events(drift, actions)


def test_a_wrong_event_is_refused_by_both():
    good = {"schema_version": 1, "event_id": "e", "incident_id": "i", "model": "m",
            "version": "1", "kind": "data", "state": "onset", "severity": "warning",
            "features": ["x"], "evidence": [], "ts": 1.0}
    validator = _validator("drift-event.v1.json")
    for bad in ({**good, "kind": "vibes"}, {**good, "ts": "noon"},
                {k: v for k, v in good.items() if k != "incident_id"}):
        assert not validator.is_valid(bad)
        try:
            decode_drift(orjson.dumps(bad))
        except Exception:  # noqa: BLE001 - msgspec.ValidationError
            continue
        raise AssertionError(f"decoded {bad}")
