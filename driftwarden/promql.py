"""The PromQL building blocks that alert rules and dashboard panels are assembled from, one
small function per question, every metric name taken from :mod:`driftwarden.metrics` (a
renamed metric fails here, at build time). Windows are parameters: rules use fixed ones
(``5m``), panels Grafana's ``$__rate_interval`` / ``$__range``.

>>> event_rate("1m")
'sum by (model, version) (rate(driftwarden_events_total{kind="prediction"}[1m]))'
"""

from __future__ import annotations

from driftwarden.metrics import DEFINITIONS


def m(name: str) -> str:
    """The full name of a declared metric."""
    return DEFINITIONS[name].full_name


def drift_severity(kinds: str = "data|prediction") -> str:
    return f'max by (model, version, kind) ({m("drift_severity")}{{kind=~"{kinds}"}})'


def drift_detected(kind: str) -> str:
    return f'max by (model, version) ({m("drift_detected")}{{kind="{kind}"}})'


def unsilenced(condition: str) -> str:
    """``condition`` without the models silenced through the admin API."""
    return f'{condition} unless on (model) {m("model_silenced")} == 1'


def event_rate(window: str = "5m", selector: str = "") -> str:
    """Predictions per second per model version (``selector``: more label matchers)."""
    extra = f", {selector}" if selector else ""
    return (f'sum by (model, version) (rate({m("events_total")}'
            f'{{kind="prediction"{extra}}}[{window}]))')


def dlq_ratio(window: str = "5m") -> str:
    invalid = f'sum(rate({m("invalid_events_total")}[{window}]))'
    return f"{invalid} / ({invalid} + sum(rate({m('events_total')}[{window}])))"


def consumer_lag() -> str:
    return f'sum by (topic) ({m("consumer_lag_messages")})'


def rollout_verdict(verdict: str, selector: str = "") -> str:
    """1 per rollout candidate whose current verdict is ``verdict`` (``selector``: more label
    matchers, e.g. ``rollout="churn-v2"``).

    >>> rollout_verdict("rollback")
    'max by (rollout, model, candidate) (driftwarden_rollout_verdict{verdict="rollback"})'
    """
    extra = f", {selector}" if selector else ""
    return (f'max by (rollout, model, candidate) '
            f'({m("rollout_verdict")}{{verdict="{verdict}"{extra}}})')


def rollout_state(selector: str) -> str:
    """One number for one rollout candidate (``selector``: its label matchers): 1 rollback,
    2 promote, 3 inconclusive, 0 continue or not judged yet — what an Argo Rollouts
    AnalysisTemplate or a Flagger MetricTemplate compares (deploy/rollouts/).

    >>> rollout_state('rollout="r"').startswith('(max(driftwarden_rollout_verdict{')
    True
    """
    v = m("rollout_verdict")
    return " or ".join(f'(max({v}{{{selector}, verdict="{verdict}"}}) == 1) * {k}'
                       for k, verdict in ((1, "rollback"), (2, "promote"),
                                          (3, "inconclusive"))) + " or vector(0)"


def actions_increase(window: str = "10m") -> str:
    return f'sum by (model, action) (increase({m("actions_total")}[{window}]))'
