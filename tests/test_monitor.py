"""The per-model monitor: warm-up baseline, verdict events of every kind, state round trip."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from driftwarden.config import Detection
from driftwarden.schema import PredictionRecord
from driftwarden.stream.monitor import ModelMonitor

DET = Detection(warmup=3000, slices=3, slice_seconds=1.0, allowed_lateness=0.5,
                calibration_sims=60)


def batch(rng, t0, n=500, shift=0.0, missing=False, pred_shift=0.0):
    out = []
    for i in range(n):
        feats = {"amount": float(rng.normal(shift, 1)), "age": float(rng.normal(40, 10)),
                 "country": str(rng.choice(["DE", "FR", "IT"]))}
        if missing:
            del feats["age"]
        out.append(PredictionRecord("fraud", "1", f"r{t0}-{i}", t0 + i / n, feats,
                                    float(np.clip(rng.beta(2, 5) + pred_shift, 0, 1))))
    return out


def run(monitor, rng, seconds, **kw):
    events = []
    for t in seconds:
        events += monitor.add(batch(rng, t, **kw))
    return events


def test_data_drift_onset_then_recovery_with_deterministic_ids():
    def scenario():
        rng = np.random.default_rng(1)
        m = ModelMonitor("fraud", "1", DET)
        ev = run(m, rng, range(0, 10))                 # 6 s warm-up, then no drift
        assert ev == [] and m.ready
        ev = run(m, rng, range(10, 16), shift=0.8)     # drift
        ev += run(m, rng, range(16, 26))                # and back
        return ev
    events = scenario()
    # the window fills with shifted data: PSI crosses 0.25 and the incident escalates
    assert [(e["kind"], e["state"]) for e in events] == [
        ("data", "onset"), ("data", "escalation"), ("data", "recovery")]
    onset, escalation, recovery = events
    assert onset["features"] == ["amount"] and onset["severity"] == "warning"
    assert escalation["severity"] == "critical" and recovery["severity"] == "none"
    assert onset["incident_id"] == escalation["incident_id"] == recovery["incident_id"]
    assert len({e["event_id"] for e in events}) == 3
    ks = [e for e in onset["evidence"] if e["feature"] == "amount" and e["test"] == "ks"][0]
    assert ks["statistic"] >= ks["threshold"] and ks["adjusted_pvalue"] <= 1e-4
    assert scenario() == events  # a replay gives the same events, ids included



@pytest.mark.parametrize("size", [10_000, 1_337, 1])
def test_events_do_not_depend_on_how_the_stream_is_batched(size):
    # a consumer catching up reads many slices in one batch: each slice must still be judged
    # on the window as it was when that slice closed (regression: one batch over the whole
    # stream used to judge every slice on the final window, an "onset" before the shift)
    rng = np.random.default_rng(3)
    records = [r for t in range(20) for r in batch(rng, t, shift=0.8 if t >= 12 else 0.0)]

    def events(step):
        m = ModelMonitor("fraud", "1", DET)
        return [e for i in range(0, len(records), step) for e in m.add(records[i:i + step])]

    per_second = events(500)
    onset = per_second[0]
    assert (onset["kind"], onset["state"]) == ("data", "onset") and onset["ts"] >= 12
    assert events(size) == per_second

def test_quality_and_prediction_kinds():
    rng = np.random.default_rng(2)
    m = ModelMonitor("fraud", "1", DET)
    run(m, rng, range(0, 10))
    ev = run(m, rng, range(10, 14), missing=True)
    quality = [e for e in ev if e["kind"] == "quality"]
    assert quality and quality[0]["state"] == "onset" and quality[0]["features"] == ["age"]
    assert quality[0]["severity"] == "critical"  # a field disappeared
    m2 = ModelMonitor("fraud", "1", DET)
    run(m2, rng, range(0, 10))
    ev = run(m2, rng, range(10, 14), pred_shift=0.3)
    assert [(e["kind"], e["state"]) for e in ev] == [("prediction", "onset")]


def test_concept_drift_from_the_error_stream():
    rng = np.random.default_rng(3)
    m = ModelMonitor("fraud", "1", DET)
    events = []
    for step in range(40):
        p = rng.random(200)
        err_rate = 0.1 if step < 25 else 0.5
        flip = rng.random(200) < err_rate
        y = np.where(flip, p < 0.5, p >= 0.5).astype(int)
        events += m.add_outcomes(p.tolist(), y.tolist(), ts=float(step))
    assert [(e["kind"], e["state"]) for e in events][:1] == [("concept", "onset")]
    assert events[0]["severity"] == "critical" and m.n_outcomes == 8000
    assert events[0]["ts"] >= 25
    assert m.status()["accuracy"] == pytest.approx(1 - (25 * 0.1 + 15 * 0.5) / 40, abs=0.03)


def test_calibration_on_an_executor_gives_the_same_events():
    from concurrent.futures import ThreadPoolExecutor

    def scenario(executor):
        rng = np.random.default_rng(9)
        m = ModelMonitor("fraud", "1", DET, executor=executor)
        return run(m, rng, range(0, 16), shift=0.0) + run(m, rng, range(16, 22), shift=0.8)

    with ThreadPoolExecutor(1) as pool:
        assert scenario(pool) == scenario(None) != []


def test_state_round_trips_mid_stream():
    rng = np.random.default_rng(4)
    a = ModelMonitor("fraud", "1", DET)
    run(a, rng, range(0, 9))
    b = ModelMonitor.from_state(orjson.loads(orjson.dumps(a.to_state())), DET)
    later = [batch(rng, t, shift=0.8 if t >= 11 else 0.0) for t in range(9, 16)]
    ev_a = [e for bt in later for e in a.add(bt)]
    ev_b = [e for bt in later for e in b.add(bt)]
    assert ev_a == ev_b and ev_a
    # also while still warming up
    c = ModelMonitor("fraud", "1", DET)
    c.add(batch(rng, 0))
    d = ModelMonitor.from_state(orjson.loads(orjson.dumps(c.to_state())), DET)
    assert len(d._warm) == 500 and not d.ready


def test_late_records_are_counted_not_merged():
    rng = np.random.default_rng(5)
    m = ModelMonitor("fraud", "1", DET)
    run(m, rng, range(0, 12))
    before = m.window.summary().n_rows
    m.add(batch(rng, 2))  # ten seconds late
    assert m.n_late == 500 and m.window.summary().n_rows == before


@pytest.mark.parametrize("task, preds, labels, expected", [
    ("classification", [0.9, 0.2], [1, 1], [0.0, 1.0]),
    ("classification", ["cat", "dog"], ["cat", "cat"], [0.0, 1.0]),
    ("regression", [1.0, 3.0], [2.0, 3.0], [1.0, 0.0]),
])
def test_error_definitions(task, preds, labels, expected):
    from driftwarden.partials import outcome_errors

    assert outcome_errors(preds, labels, task) == expected


def test_estimated_accuracy_matches_the_realized_one_for_calibrated_scores():
    """Label-free performance estimation (CBPE) against the accuracy the labels then show:
    labels drawn as Bernoulli(score) make the scores calibrated by construction."""
    rng = np.random.default_rng(4)
    m = ModelMonitor("fraud", "1", DET)

    def scored(t0, confident):
        p = rng.beta(8, 1, 1000) if confident else rng.beta(2, 2, 1000)
        p = np.where(rng.random(1000) < 0.5, p, 1 - p)
        recs = [PredictionRecord("fraud", "1", f"r{t0}-{i}", t0 + i / 1000,
                                 {"x": float(rng.normal())}, float(p[i])) for i in range(1000)]
        return recs, (rng.random(1000) < p).astype(float)

    for t in range(6):
        recs, _ = scored(t, True)
        m.add(recs)
    before = m.status()["estimated_accuracy"]
    realized_before = None
    for t in range(6, 12):  # the model grows unsure: the estimate must fall without labels
        recs, labels = scored(t, False)
        m.add(recs)
        if t == 6:
            realized_before = m.status()["accuracy"]
        m.add_outcomes([r.prediction for r in recs], labels.tolist(), t + 1.0)
    after = m.status()
    assert realized_before is None  # no labels joined yet: nothing realized
    assert before > 0.85 and after["estimated_accuracy"] < 0.75
    assert abs(after["baseline_estimated_accuracy"] - before) < 0.03
    # the labels of the unsure period: realized accuracy near what the scores promised
    assert abs(after["accuracy"] - after["estimated_accuracy"]) < 0.04


def test_window_accuracy_follows_the_last_slices_while_the_total_remembers():
    m = ModelMonitor("fraud", "1", DET)  # 3 slices of 1 s
    good = ([0.9] * 100, [1] * 100)      # all right
    bad = ([0.9] * 100, [0] * 100)       # all wrong
    for t in range(5):
        m.add_outcomes(*good, ts=float(t))
    for t in range(5, 8):
        m.add_outcomes(*bad, ts=float(t))
    s = m.status()
    assert s["window_accuracy"] == 0.0 and s["window_outcomes"] == 300  # only slices 5-7
    assert s["accuracy"] == 500 / 800
    restored = ModelMonitor.from_state(orjson.loads(orjson.dumps(m.to_state())), DET)
    assert restored.status()["window_accuracy"] == 0.0
