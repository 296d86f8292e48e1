"""Prometheus metrics on a fresh registry: values follow the stream's state, computed
independently here, and label values stay bounded however many unknown models arrive."""

from __future__ import annotations

import numpy as np
import orjson
from prometheus_client import CollectorRegistry

from driftwarden.config import load_settings
from driftwarden.metrics import DEFINITIONS, Metrics
from driftwarden.stream.service import RawMessage, StreamService

ENV = {"DRIFTWARDEN_DETECTION__WARMUP": "2000", "DRIFTWARDEN_DETECTION__SLICES": "3",
       "DRIFTWARDEN_DETECTION__SLICE_SECONDS": "1",
       "DRIFTWARDEN_DETECTION__ALLOWED_LATENESS": "0.2",
       "DRIFTWARDEN_DETECTION__CALIBRATION_SIMS": "60"}


def records(rng, model, t0, n, shift=0.0):
    return [{"model": model, "version": "1", "id": f"{model}-{t0}-{i}", "ts": t0 + i / n,
             "features": {"amount": float(rng.normal(shift, 1)),
                          "country": str(rng.choice(["DE", "FR"]))},
             "prediction": float(rng.random())} for i in range(n)]


def raw(recs, topic="driftwarden.predictions", offset0=0):
    return [RawMessage(orjson.dumps(r), [], topic, 0, offset0 + i, r.get("ts", 0.0))
            for i, r in enumerate(recs)]


def series_count(registry):
    return sum(len(m.samples) for m in registry.collect())


def test_metrics_follow_the_stream():
    svc = StreamService(load_settings(env=ENV))
    registry = CollectorRegistry()
    Metrics.create(registry, lambda: [svc])
    get = registry.get_sample_value
    rng = np.random.default_rng(0)
    offset = 0
    for t in range(8):
        svc.handle_predictions(raw(records(rng, "fraud", t, 500), offset0=offset))
        offset += 500
    mv = {"model": "fraud", "version": "1"}
    assert get("driftwarden_events_total", {**mv, "kind": "prediction"}) == 8 * 500
    assert get("driftwarden_drift_detected", {**mv, "kind": "data"}) == 0.0
    assert get("driftwarden_window_fill_ratio", mv) == 1.0
    assert get("driftwarden_missing_ratio", {**mv, "feature": "amount"}) == 0.0
    for t in range(8, 14):
        svc.handle_predictions(raw(records(rng, "fraud", t, 500, shift=1.5), offset0=offset))
        offset += 500
    assert get("driftwarden_drift_detected", {**mv, "kind": "data"}) == 1.0
    assert get("driftwarden_drift_severity", {**mv, "kind": "data"}) == 2.0
    ks = {**mv, "feature": "amount", "test": "ks"}
    assert get("driftwarden_feature_drift_score", ks) > get("driftwarden_feature_drift_threshold",
                                                            ks)
    assert get("driftwarden_feature_drift_pvalue", ks) < 1e-4
    # the stable feature stays below its threshold
    cs = {**mv, "feature": "country", "test": "chi2"}
    assert get("driftwarden_feature_drift_score", cs) < get("driftwarden_feature_drift_threshold",
                                                            cs)
    assert get("driftwarden_actions_total", {"model": "fraud", "action": "retrain"}) or get(
        "driftwarden_actions_total", {"model": "fraud", "action": "review"})

    # labels for the last second join with its predictions
    labels = rng.integers(0, 2, 500)
    svc.handle_labels(raw([{"model": "fraud", "id": f"fraud-13-{i}", "label": int(y)}
                           for i, y in enumerate(labels)], "driftwarden.labels"))
    svc.finish()  # outcomes reach the monitor when their slice of label time closes
    assert get("driftwarden_label_outcomes_total", mv) == 500
    assert get("driftwarden_label_join_ratio", mv) == 500 / (14 * 500)
    monitor = svc.monitors[("fraud", "1")]
    assert get("driftwarden_model_performance", {**mv, "metric": "accuracy"}) == (
        monitor.outcomes.accuracy())

    bad = raw([{"nothing": 1}], offset0=offset) + [
        RawMessage(b"{bad", [], "driftwarden.predictions", 0, offset + 1, 0.0)]
    svc.handle_predictions(bad)
    assert get("driftwarden_invalid_events_total", {"reason": "unknown_format"}) == 1
    assert get("driftwarden_invalid_events_total", {"reason": "bad_json"}) == 1


def test_realized_accuracy_matches_an_independent_computation():
    svc = StreamService(load_settings(env=ENV))
    registry = CollectorRegistry()
    Metrics.create(registry, lambda: [svc])
    rng = np.random.default_rng(5)
    recs = [r for t in range(6) for r in records(rng, "fraud", t, 400)]
    svc.handle_predictions(raw(recs))
    labels = rng.integers(0, 2, len(recs))
    svc.handle_labels(raw([{"model": "fraud", "id": r["id"], "label": int(y)}
                           for r, y in zip(recs, labels)], "driftwarden.labels"))
    svc.finish()  # outcomes reach the monitor when their slice of label time closes
    pred = np.array([r["prediction"] for r in recs]) >= 0.5
    want = float(np.mean(pred == labels.astype(bool)))
    got = registry.get_sample_value("driftwarden_model_performance",
                                    {"model": "fraud", "version": "1", "metric": "accuracy"})
    assert got == want


def test_unknown_models_never_create_series():
    env = {**ENV, "DRIFTWARDEN_MAX_MODELS": "3"}
    svc = StreamService(load_settings(env=env), max_models=3)
    registry = CollectorRegistry()
    Metrics.create(registry, lambda: [svc])
    rng = np.random.default_rng(1)
    offset = 0
    for model in ("a", "b", "c", "d"):  # "d" is over the cap: rejected, reason series exists
        for t in range(6):
            svc.handle_predictions(raw(records(rng, model, t, 400), offset0=offset))
            offset += 400
    before = series_count(registry)
    flood = [{"model": f"unknown-{i}", "version": "1", "features": {"amount": 1.0}, "ts": 7.0}
             for i in range(10_000)]
    svc.handle_predictions(raw(flood, offset0=offset))
    assert series_count(registry) == before
    assert registry.get_sample_value("driftwarden_invalid_events_total",
                                     {"reason": "unknown_model"}) == 10_000 + 6 * 400


def test_every_metric_is_declared_once_with_help():
    registry = CollectorRegistry()
    Metrics.create(registry, lambda: [])
    for d in DEFINITIONS.values():
        assert d.help and d.full_name.startswith("driftwarden_")
    names = {m.name for m in registry.collect()}
    instrumented = {d.full_name.removesuffix("_total") for d in DEFINITIONS.values()
                    if d.instrumented}
    assert len(instrumented) == 8 and instrumented <= names


def test_a_worker_with_many_shards_exposes_each_source_series_once():
    """Every shard's merge stage hears every source: their views are combined, so the text
    format holds one sample per series (Prometheus refuses a scrape with duplicates)."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    settings = load_settings(env={**ENV, "DRIFTWARDEN_KAFKA__PARTITIONS": "3"})
    shards = [StreamService(settings, loopback=False, partition=p) for p in range(3)]
    registry = CollectorRegistry()
    Metrics.create(registry, lambda: shards)
    samples = [(s.name, tuple(sorted(s.labels.items())))
               for fam in text_string_to_metric_families(generate_latest(registry).decode())
               for s in fam.samples]
    assert len(samples) == len(set(samples))
    get = registry.get_sample_value
    # the expected input partitions (predictions and features, 3 each), not 3 x 6
    assert get("driftwarden_sources", {"kind": "data", "state": "active"}) == 6
