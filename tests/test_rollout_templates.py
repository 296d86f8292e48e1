"""The Argo Rollouts and Flagger templates in deploy/rollouts/: what the code generates, and
valid Argo Rollouts objects by Argo's published API schema (kubernetes-models'
@kubernetes-models/argo-rollouts, generated from Argo Rollouts' OpenAPI; `.ci/run` installs it
into .ci/node). Their PromQL is run against the end-to-end Prometheus in
tests/test_alerting_e2e.py."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from driftwarden import rollout_templates

ROOT = Path(__file__).resolve().parents[1]
NODE = shutil.which("node")
MODELS = ROOT / ".ci" / "node" / "node_modules" / "@kubernetes-models" / "argo-rollouts"
VALIDATE = """
import { AnalysisTemplate }
  from "@kubernetes-models/argo-rollouts/argoproj.io/v1alpha1/AnalysisTemplate";
import { readFileSync } from "node:fs";
const docs = JSON.parse(readFileSync(0, "utf8"));
const errors = [];
for (const d of docs) {
  try { new AnalysisTemplate(d).validate(); } catch (e) { errors.push(`${d.metadata.name}: ${e}`); }
}
console.log(JSON.stringify(errors));
"""


def test_committed_templates_are_the_generated_ones():
    for name, text in rollout_templates.render().items():
        assert (ROOT / "deploy" / "rollouts" / name).read_text() == text, (
            f"deploy/rollouts/{name} is stale: python -m driftwarden.rollout_templates "
            "deploy/rollouts")


def argo_errors(docs) -> list[str]:
    script = ROOT / ".ci" / "node" / "validate-argo.mjs"
    script.write_text(VALIDATE)
    r = subprocess.run([NODE, str(script)], input=json.dumps(docs), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.skipif(NODE is None or not MODELS.is_dir(),
                    reason="node and @kubernetes-models/argo-rollouts (.ci/run installs them)")
def test_argo_templates_are_valid_by_argo_rollouts_schema():
    docs = [d for d in yaml.safe_load_all(
        (ROOT / "deploy" / "rollouts" / "argo-analysis-templates.yaml").read_text()) if d]
    assert [d["kind"] for d in docs] == ["AnalysisTemplate", "AnalysisTemplate"]
    assert argo_errors(docs) == []
    # the check can fail: a condition that is not a string, a provider without its address
    broken = json.loads(json.dumps(docs[0]))
    broken["spec"]["metrics"][0]["successCondition"] = 2
    del broken["spec"]["metrics"][0]["provider"]["prometheus"]["address"]
    broken["spec"]["metrics"][0]["provider"]["prometheus"]["address"] = {"url": "x"}
    (err,) = argo_errors([broken])
    assert "successCondition must be string" in err and "address must be string" in err


FLAGGER = ROOT / ".ci" / "node" / "node_modules" / "@kubernetes-models" / "flagger"


@pytest.mark.skipif(NODE is None or not FLAGGER.is_dir(),
                    reason="@kubernetes-models/flagger (Flagger's CRD schema) is not on the npm "
                           "registry this machine reaches; .ci/run installs it where it is")
def test_flagger_template_is_valid_by_flaggers_crd_schema():
    script = ROOT / ".ci" / "node" / "validate-flagger.mjs"
    script.write_text(
        'import { MetricTemplate } from "@kubernetes-models/flagger/flagger.app/v1beta1/'
        'MetricTemplate";\nimport { readFileSync } from "node:fs";\n'
        'const errors = [];\nfor (const d of JSON.parse(readFileSync(0, "utf8"))) {\n'
        '  try { new MetricTemplate(d).validate(); } catch (e) { errors.push(String(e)); }\n}\n'
        'console.log(JSON.stringify(errors));\n')
    docs = [d for d in yaml.safe_load_all(
        (ROOT / "deploy" / "rollouts" / "flagger-metric-template.yaml").read_text()) if d]
    broken = json.loads(json.dumps(docs[0]))
    broken["spec"]["provider"]["type"] = "nosuchprovider"
    r = subprocess.run([NODE, str(script)], input=json.dumps(docs + [broken]),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    errors = json.loads(r.stdout)
    assert len(errors) == 1 and "type" in errors[0]  # the template passes, the broken one not


def test_flagger_template_has_the_fields_flagger_reads():
    """Flagger's CRD is not published to a registry this project's CI reaches (it ships in
    Flagger's chart and repository only), so this checks the fields Flagger's MetricTemplate
    API defines (flagger.app/v1beta1: spec.provider.type / address, spec.query) — not the
    CRD's schema itself."""
    (doc,) = [d for d in yaml.safe_load_all(
        (ROOT / "deploy" / "rollouts" / "flagger-metric-template.yaml").read_text()) if d]
    assert (doc["apiVersion"], doc["kind"]) == ("flagger.app/v1beta1", "MetricTemplate")
    assert set(doc["spec"]) == {"provider", "query"}
    assert doc["spec"]["provider"]["type"] == "prometheus"
    assert doc["spec"]["provider"]["address"].startswith("http")
    assert "{{ variables.rollout }}" in doc["spec"]["query"]
