"""Prometheus alerting rules, generated from the metric definitions of :mod:`driftwarden.metrics`.

Every alert has a ``severity`` label (``critical`` pages, ``warning`` goes to the team's
channel, ``info`` is a record) and ``summary``, ``description`` and ``runbook_url``
annotations; the runbook of each alert is a section of ``docs/runbooks.md``. PromQL lives in
:mod:`driftwarden.promql` (shared with the dashboards); thresholds and the scrape job are set
once, in an :class:`AlertConfig`.
``driftwarden alerts render`` prints the rule file; ``deploy/prometheus/driftwarden-rules.yml``
is a committed copy that a test keeps equal to it.

>>> rules = render_rules()
>>> rules.splitlines()[0]
'groups:'
>>> [a.name for a in alerts()][:2]
['DriftwardenModelDriftWarning', 'DriftwardenModelDriftCritical']
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml  # type: ignore[import-untyped]

from driftwarden.config import RUNBOOK_BASE  # re-exported
from driftwarden.promql import (
    actions_increase,
    consumer_lag,
    dlq_ratio,
    drift_detected,
    drift_severity,
    event_rate,
    rollout_verdict,
    unsilenced,
)


@dataclass(frozen=True)
class AlertConfig:
    """What a deployment tunes: the scrape job, thresholds and how long each must hold."""

    job: str = "driftwarden"
    runbook_base: str = RUNBOOK_BASE
    drift_for: str = "5m"              # a drift verdict already needs `hysteresis` windows
    critical_for: str = "2m"
    silence_for: str = "10m"           # no prediction from a model that was sending
    dlq_ratio: float = 0.01            # dead letters over all messages
    dlq_for: str = "10m"
    lag_messages: int = 100_000
    lag_for: str = "10m"
    down_for: str = "2m"


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    labels: dict[str, str] = field(default_factory=dict)

    def rule(self, config: AlertConfig) -> dict[str, object]:
        anchor = self.name.lower()
        rule: dict[str, object] = {"alert": self.name, "expr": self.expr}
        if self.for_ != "0m":
            rule["for"] = self.for_
        rule["labels"] = {"severity": self.severity, **self.labels}
        rule["annotations"] = {"summary": self.summary, "description": self.description,
                               "runbook_url": f"{config.runbook_base}#{anchor}"}
        return rule


def alerts(config: AlertConfig | None = None) -> list[Alert]:
    """Every alert, in the order of the rule file."""
    c = config or AlertConfig()
    mv = "{{ $labels.model }} v{{ $labels.version }}"
    return [
        Alert("DriftwardenModelDriftWarning", unsilenced(f"{drift_severity()} == 1"), c.drift_for,
              "warning", f"{{{{ $labels.kind }}}} drift on {mv}",
              f"The {{{{ $labels.kind }}}} distribution of {mv} differs from its baseline "
              "beyond the calibrated thresholds (warning: below the critical PSI)."),
        Alert("DriftwardenModelDriftCritical", unsilenced(f"{drift_severity()} >= 2"),
              c.critical_for,
              "critical", f"critical {{{{ $labels.kind }}}} drift on {mv}",
              f"The {{{{ $labels.kind }}}} distribution of {mv} moved far from its baseline "
              "(PSI above the critical level): predictions are made on data the model has not "
              "seen."),
        Alert("DriftwardenConceptDrift", unsilenced(f"{drift_detected('concept')} == 1"),
              c.drift_for,
              "critical", f"concept drift on {mv}",
              f"The error rate of {mv} on joined labels rose above its reference."),
        Alert("DriftwardenDataQuality", unsilenced(f"{drift_detected('quality')} == 1"),
              c.drift_for,
              "warning", f"data quality problem on {mv}",
              f"Missing, unseen or invalid values or a schema change on {mv}."),
        Alert("DriftwardenNoEvents",
              f"{event_rate()} == 0 and {event_rate('1h')} > 0", c.silence_for, "warning",
              f"no predictions from {mv}",
              f"{mv} sent predictions in the last hour but none for {c.silence_for}: the "
              "serving pipeline or its logging may be stalled."),
        Alert("DriftwardenDeadLetterRate", f"{dlq_ratio()} > {c.dlq_ratio}", c.dlq_for,
              "warning", "malformed messages are going to the dead-letter topic",
              "{{ $value | humanizePercentage }} of messages are rejected to the DLQ "
              "(see driftwarden_invalid_events_total by reason)."),
        Alert("DriftwardenConsumerLag", f"{consumer_lag()} > {c.lag_messages}", c.lag_for,
              "warning", "driftwarden is behind on {{ $labels.topic }}",
              "{{ $value }} messages are waiting on {{ $labels.topic }}: verdicts are late."),
        Alert("DriftwardenWorkerDown", f'up{{job="{c.job}"}} == 0', c.down_for, "critical",
              "driftwarden worker {{ $labels.instance }} is down",
              "Prometheus cannot scrape {{ $labels.instance }}: its partitions are not "
              "monitored until the group rebalances."),
        Alert("DriftwardenRolloutRolledBack",
              unsilenced(f"{rollout_verdict('rollback')} == 1"), "0m", "warning",
              "rollout {{ $labels.rollout }}: {{ $labels.model }} v{{ $labels.candidate }} "
              "rolled back",
              "The candidate v{{ $labels.candidate }} of {{ $labels.model }} was worse than "
              "its baseline version on the same traffic, beyond the rollout's margin: "
              "driftwarden asked for a rollback (see the action event's rollout evidence)."),
        Alert("DriftwardenActionEmitted", f"{actions_increase()} > 0", "0m", "info",
              "{{ $labels.action }} requested for {{ $labels.model }}",
              "driftwarden published a {{ $labels.action }} action event for "
              "{{ $labels.model }} in the last 10 minutes."),
    ]


def render_rules(config: AlertConfig | None = None) -> str:
    """The Prometheus rule file (YAML) of :func:`alerts`."""
    c = config or AlertConfig()
    doc = {"groups": [{"name": "driftwarden", "rules": [a.rule(c) for a in alerts(c)]}]}
    return yaml.safe_dump(doc, sort_keys=False, width=100)
