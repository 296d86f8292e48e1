"""Argo Rollouts and Flagger templates that read a driftwarden rollout's verdict from
Prometheus, so the deployment tool stops a canary that driftwarden rolls back (and, with
Argo, can gate promotion on driftwarden's ``promote``). Generated from the metric names in
:mod:`driftwarden.metrics`; the committed copies live in ``deploy/rollouts/``
(``python -m driftwarden.rollout_templates deploy/rollouts``; a test keeps them equal).

The queries return one number per rollout candidate (:func:`driftwarden.promql.rollout_state`):
1 rollback, 2 promote, 3 inconclusive, 0 continue (or not judged yet).

>>> docs = argo_templates()
>>> [d["metadata"]["name"] for d in docs]
['driftwarden-guard', 'driftwarden-promote-gate']
>>> flagger_templates()[0]["kind"]
'MetricTemplate'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from driftwarden.metrics import DEFINITIONS
from driftwarden.promql import rollout_state

PROMETHEUS = "http://prometheus.monitoring.svc:9090"  # replace with your Prometheus
ARGO_SELECTOR = 'rollout="{{args.rollout}}", candidate="{{args.candidate}}"'
FLAGGER_SELECTOR = 'rollout="{{ variables.rollout }}", candidate="{{ variables.candidate }}"'


def argo_templates() -> list[dict[str, Any]]:
    """Two AnalysisTemplates: ``driftwarden-guard`` (background analysis: fails — and Argo
    aborts the rollout — once driftwarden says rollback or inconclusive) and
    ``driftwarden-promote-gate`` (an analysis step: succeeds on promote, fails on rollback or
    inconclusive; not decided yet is an inconclusive measurement, which pauses the rollout)."""
    args = [{"name": "rollout"}, {"name": "candidate"},
            {"name": "prometheus-address", "value": PROMETHEUS}]
    provider = {"prometheus": {"address": "{{args.prometheus-address}}",
                               "query": rollout_state(ARGO_SELECTOR)}}
    guard = {"name": "driftwarden-verdict", "interval": "1m", "failureLimit": 0,
             "successCondition": "result[0] == 0 || result[0] == 2",
             "failureCondition": "result[0] == 1 || result[0] == 3", "provider": provider}
    gate = {"name": "driftwarden-promote", "count": 1, "failureLimit": 0,
            "successCondition": "result[0] == 2",
            "failureCondition": "result[0] == 1 || result[0] == 3", "provider": provider}
    return [_argo("driftwarden-guard", args, guard),
            _argo("driftwarden-promote-gate", args, gate)]


def _argo(name: str, args: list[dict[str, Any]], metric: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisTemplate",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "driftwarden"}},
            "spec": {"args": args, "metrics": [metric]}}


def flagger_templates() -> list[dict[str, Any]]:
    """A MetricTemplate whose value is 1 while driftwarden's verdict on the candidate is
    rollback or inconclusive (else 0): a Canary's ``thresholdRange: {max: 0}`` on it makes
    Flagger roll back, with ``templateVariables`` naming the rollout and the candidate."""
    v = DEFINITIONS["rollout_verdict"].full_name
    query = (f'(max({v}{{{FLAGGER_SELECTOR}, verdict=~"rollback|inconclusive"}}) == 1) '
             "or vector(0)")
    return [{"apiVersion": "flagger.app/v1beta1", "kind": "MetricTemplate",
             "metadata": {"name": "driftwarden-rollout",
                          "labels": {"app.kubernetes.io/part-of": "driftwarden"}},
             "spec": {"provider": {"type": "prometheus", "address": PROMETHEUS},
                      "query": query}}]


ARGO_USAGE = """\
# Argo Rollouts: driftwarden's verdict on a rollout, read from Prometheus.
# In a Rollout's canary strategy (the driftwarden rollout declared as [rollouts.churn-v2]):
#   analysis:                       # background: abort when driftwarden says rollback
#     templates: [{templateName: driftwarden-guard}]
#     args: [{name: rollout, value: churn-v2}, {name: candidate, value: "2"}]
#   steps:
#   - setWeight: 10
#   - pause: {duration: 30m}
#   - analysis:                     # promote only on driftwarden's promote
#       templates: [{templateName: driftwarden-promote-gate}]
#       args: [{name: rollout, value: churn-v2}, {name: candidate, value: "2"}]
#   - setWeight: 100
"""
FLAGGER_USAGE = """\
# Flagger: driftwarden's verdict on a rollout, read from Prometheus. In a Canary's analysis:
#   metrics:
#   - name: driftwarden
#     templateRef: {name: driftwarden-rollout}
#     templateVariables: {rollout: churn-v2, candidate: "2"}
#     thresholdRange: {max: 0}      # 1 = driftwarden says rollback (or inconclusive)
#     interval: 1m
"""


def render() -> dict[str, str]:
    """File name -> YAML text of the templates, as committed in deploy/rollouts/."""
    def dump(usage: str, docs: list[dict[str, Any]]) -> str:
        return usage + "".join("---\n" + yaml.safe_dump(d, sort_keys=False, width=10_000)
                               for d in docs)
    return {"argo-analysis-templates.yaml": dump(ARGO_USAGE, argo_templates()),
            "flagger-metric-template.yaml": dump(FLAGGER_USAGE, flagger_templates())}


def write(directory: str | Path) -> list[Path]:
    out = []
    for name, text in render().items():
        path = Path(directory) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        out.append(path)
    return out


if __name__ == "__main__":  # pragma: no cover
    import sys

    print("\n".join(str(p) for p in write(sys.argv[1] if len(sys.argv) > 1
                                           else "deploy/rollouts")))
