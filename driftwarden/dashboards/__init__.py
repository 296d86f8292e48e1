"""Grafana dashboards, built with ``grafana-foundation-sdk`` from the metric definitions.

Two dashboards with stable UIDs: an **overview** of all models, with a row per rollout (a
``rollout`` variable Grafana repeats the row for), and a **per-model** dashboard with ``model``
and ``version`` variables. Panels are assembled from the PromQL building blocks
of :mod:`driftwarden.promql` (shared with the alert rules) and the panel-only queries below.
:func:`export` writes the JSON that Grafana's file provisioning loads;
``deploy/grafana/dashboards/`` holds committed copies that a test keeps equal to what this
module builds.

>>> [d["uid"] for d in build_all()]
['driftwarden-overview', 'driftwarden-model']
>>> sorted({v["name"] for v in build_all()[1]["templating"]["list"]})
['model', 'version']
>>> [a["target"]["tags"][1:] for a in build_all()[1]["annotations"]["list"]]
[['drift', 'model:$model', 'version:$version'], ['action', 'model:$model']]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.builders.dashboard import (
    AnnotationQuery,
    AnnotationTarget,
    Dashboard,
    QueryVariable,
    Row,
)
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

from driftwarden.promql import (
    actions_increase,
    consumer_lag,
    drift_severity,
    event_rate,
    m,
    rollout_verdict,
)

DATASOURCE = DataSourceRef(type_val="prometheus", uid="driftwarden-prometheus")
# Grafana's own annotation store, where the worker posts drift and action events
# (driftwarden.notify.annotation tags them "driftwarden", "drift" | "action", "model:<name>")
GRAFANA = DataSourceRef(type_val="grafana", uid="-- Grafana --")
OVERVIEW_UID = "driftwarden-overview"
MODEL_UID = "driftwarden-model"
SEL = 'model="$model", version="$version"'


RATE = "$__rate_interval"


# -- PromQL only the panels use -------------------------------------------------------------------
def q_dlq_rate() -> str:
    return f'sum by (reason) (rate({m("invalid_events_total")}[{RATE}]))'


def q_processing_lag(quantile: float) -> str:
    return (f'histogram_quantile({quantile}, sum by (le) '
            f'(rate({m("processing_lag_seconds")}_bucket[{RATE}])))')


def q_label_coverage(sel: str = "") -> str:
    return f'{m("label_join_ratio")}{{{sel}}}'


def q_drift(what: str) -> str:
    return f'{m("feature_drift_" + what)}{{{SEL}}}'


def q_quality(measure: str) -> str:
    return f'{m(measure)}{{{SEL}}}'


def q_performance() -> str:
    return f'{m("model_performance")}{{{SEL}}}'


def q_prediction_score() -> str:
    return f'{m("feature_drift_score")}{{{SEL}, feature="__prediction__"}}'


ROLLOUT = 'rollout=~"$rollout"'  # a repeated row's one value (=~: "All" works unrepeated)


def q_rollout_state() -> str:
    """Each candidate's verdict of the row's rollout as one number (0: continue)."""
    return " or ".join(f"({rollout_verdict(v, ROLLOUT)} == 1) * {k}" for k, v in (
        (1, "rollback"), (2, "promote"), (3, "inconclusive"))) + (
        f" or ({rollout_verdict('continue', ROLLOUT)} == 1) * 0")


def q_rollout_difference(bound: str) -> str:
    return (f'max by (candidate, signal) ({m("rollout_difference")}'
            f'{{{ROLLOUT}, bound="{bound}"}})')


def q_rollout_samples() -> str:
    return f'max by (candidate, version) ({m("rollout_samples")}{{{ROLLOUT}}})'


def q_window_fill() -> str:
    return f'{m("window_fill_ratio")}{{{SEL}}}'


def _events(what: str, color: str, *tags: str) -> AnnotationQuery:
    """Annotations the worker posted with every one of ``tags``."""
    return (AnnotationQuery().name(f"{what.capitalize()} events").datasource(GRAFANA)
            .enable(True).icon_color(color)
            .target(AnnotationTarget().type("tags").tags(["driftwarden", what, *tags])
                    .match_any(False).limit(500)))


def _target(expr: str, legend: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend)


def _ts(title: str, unit: str, *targets: prometheus.Dataquery, desc: str = "") -> Any:
    p = timeseries.Panel().title(title).unit(unit).datasource(DATASOURCE).height(8).span(12)
    if desc:
        p = p.description(desc)
    for t in targets:
        p = p.with_target(t)
    return p


def _stat(title: str, expr: str, legend: str, unit: str = "none") -> Any:
    return (stat.Panel().title(title).unit(unit).datasource(DATASOURCE).height(6).span(12)
            .with_target(_target(expr, legend)))


def overview() -> Dashboard:
    """All models: verdicts, event and DLQ rates, lags, actions, label coverage."""
    return (
        Dashboard("driftwarden / overview").uid(OVERVIEW_UID)
        .tags(["driftwarden", "generated"]).refresh("30s").time("now-6h", "now")
        .annotation(_events("drift", "orange")).annotation(_events("action", "red"))
        .with_row(Row("Verdicts"))
        .with_panel(_stat("Verdict severity (0 none, 1 warning, 2 critical)", drift_severity(".+"),
                          "{{model}} v{{version}} {{kind}}"))
        .with_panel(_ts("Actions emitted", "short",
                        _target(actions_increase("$__range"), "{{model}} {{action}}")))
        .with_variable(QueryVariable("rollout").label("Rollout").datasource(DATASOURCE)
                       .query(f"label_values({m('rollout_verdict')}, rollout)")
                       .multi(True).include_all(True)
                       .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED))
        # one row per rollout (Grafana repeats the row and its panels for each value)
        .with_row(Row("Rollout $rollout").repeat("rollout"))
        .with_panel(_stat("Verdict (1: rollback, 2: promote, 3: inconclusive, 0: continue)",
                          q_rollout_state(), "v{{candidate}}"))
        .with_panel(_ts("Difference candidate - baseline per signal (bounds, margin)", "short",
                        _target(q_rollout_difference("estimate"), "v{{candidate}} {{signal}}"),
                        _target(q_rollout_difference("lower"),
                                "v{{candidate}} {{signal}} lower"),
                        _target(q_rollout_difference("upper"),
                                "v{{candidate}} {{signal}} upper"),
                        _target(q_rollout_difference("margin"),
                                "v{{candidate}} {{signal}} margin"),
                        desc="Anytime-valid bounds of each signal (performance: loss; "
                             "disagreement; latency and quality when enabled): rollback once "
                             "a lower bound is above its margin, promote once the decisive "
                             "signal's upper bound is below it."))
        .with_panel(_ts("Samples compared per version", "short",
                        _target(q_rollout_samples(), "v{{candidate}}: v{{version}}"),
                        desc="Labelled outcomes (shadow without labels: paired requests)."))
        .with_row(Row("Traffic"))
        .with_panel(_ts("Predictions per second", "reqps",
                        _target(event_rate(RATE), "{{model}} v{{version}}")))
        .with_panel(_ts("Dead letters per second", "reqps",
                        _target(q_dlq_rate(), "{{reason}}")))
        .with_panel(_ts("Processing lag", "s", _target(q_processing_lag(0.5), "p50"),
                        _target(q_processing_lag(0.99), "p99")))
        .with_panel(_ts("Consumer lag", "short", _target(consumer_lag(), "{{topic}}")))
        .with_panel(_ts("Label coverage", "percentunit",
                        _target(q_label_coverage(), "{{model}} v{{version}}")))
    )


def model() -> Dashboard:
    """One model version: drift vs threshold per feature and test, p-values, quality,
    predictions, realized vs estimated performance, window fill."""
    var = m("events_total")
    return (
        Dashboard("driftwarden / model").uid(MODEL_UID)
        .tags(["driftwarden", "generated"]).refresh("30s").time("now-6h", "now")
        .annotation(_events("drift", "orange", "model:$model", "version:$version"))
        .annotation(_events("action", "red", "model:$model"))
        .with_variable(QueryVariable("model").label("Model").datasource(DATASOURCE)
                       .query(f"label_values({var}, model)")
                       .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED))
        .with_variable(QueryVariable("version").label("Version").datasource(DATASOURCE)
                       .query(f'label_values({var}{{model="$model"}}, version)')
                       .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED))
        .with_row(Row("Drift"))
        .with_panel(_ts("Drift score vs threshold", "short",
                        _target(q_drift("score"), "{{feature}} {{test}}"),
                        _target(q_drift("threshold"), "{{feature}} {{test}} threshold"),
                        desc="A score above its threshold flags the test."))
        .with_panel(_ts("Adjusted p-values", "short",
                        _target(q_drift("pvalue"), "{{feature}} {{test}}")))
        .with_row(Row("Data quality and predictions"))
        .with_panel(_ts("Missing ratio", "percentunit",
                        _target(q_quality("missing_ratio"), "{{feature}}")))
        .with_panel(_ts("Unseen categories", "percentunit",
                        _target(q_quality("unseen_ratio"), "{{feature}}")))
        .with_panel(_ts("Prediction distribution drift", "short",
                        _target(q_prediction_score(), "{{test}}")))
        .with_panel(_ts("Window fill", "percentunit", _target(q_window_fill(), "fill")))
        .with_row(Row("Performance"))
        .with_panel(_ts("Realized vs estimated performance", "percentunit",
                        _target(q_performance(), "{{metric}}")))
        .with_panel(_ts("Predictions per second", "reqps",
                        _target(event_rate(RATE, SEL), "v{{version}}")))
    )


def _json(builder: Dashboard) -> dict[str, Any]:
    return json.loads(JSONEncoder(sort_keys=True).encode(builder.build()))


def build_all() -> list[dict[str, Any]]:
    """Both dashboards as Grafana JSON models."""
    return [_json(overview()), _json(model())]


def expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard's panels."""
    return [t["expr"] for p in dashboard.get("panels", []) for t in p.get("targets", [])
            if "expr" in t]


def export(directory: str | Path) -> list[Path]:
    """Write each dashboard as ``<uid>.json`` (for Grafana's file provisioning)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for d in build_all():
        path = out / f"{d['uid']}.json"
        path.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")
        paths.append(path)
    return paths
