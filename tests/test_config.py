"""Settings: TOML file, environment overrides, errors raised when loading, secrets redacted."""

from __future__ import annotations

import pytest

from driftwarden.config import load_settings
from driftwarden.errors import ConfigError


def test_file_then_environment(tmp_path):
    p = tmp_path / "dw.toml"
    p.write_text('[detection]\nbudget = 0.001\nslices = 6\n[topics]\ndlq = "my.dlq"\n'
                 '[kafka]\nclient = { "sasl.password" = "hunter2" }\n')
    s = load_settings(p, env={"DRIFTWARDEN_DETECTION__SLICES": "24",
                              "DRIFTWARDEN_DATABASE_URL": "postgresql://u:pw@db:5432/x",
                              "DRIFTWARDEN_GRAFANA__URL": "http://admin:gpass@grafana:3000",
                              "DRIFTWARDEN_GRAFANA__TOKEN": "glsa_tok",
                              "DRIFTWARDEN_DETECTION__NUMERIC_TESTS": '["ks"]'})
    assert s.detection.budget == 0.001 and s.detection.slices == 24
    assert s.detection.numeric_tests == ["ks"] and s.topics.dlq == "my.dlq"
    red = s.redacted()
    assert red["kafka"]["client"]["sasl.password"] == "***"
    assert red["database_url"] == "postgresql://***@db:5432/x"
    assert red["grafana"]["url"] == "http://***@grafana:3000"
    for secret in ("hunter2", "pw@", "gpass", "glsa_tok"):
        assert secret not in repr(red)
    assert s.detection.policy().budget == 0.001


@pytest.mark.parametrize("text, match", [
    ("[detection]\nbudget = 2.0\n", "budget"),
    ("[detection]\nnope = 1\n", "nope"),
    ("[detection\n", "not valid TOML"),
    ('[detection]\ncorrection = "bonferroni"\n', "correction"),
])
def test_bad_files_raise_config_errors(tmp_path, text, match):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_settings(p, env={})


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_settings("/nonexistent/dw.toml", env={})


def test_detection_defaults_are_the_decision_policy_defaults():
    from driftwarden.config import Detection
    from driftwarden.detectors.decide import DecisionPolicy

    assert Detection().policy() == DecisionPolicy()


def test_models_section(tmp_path):
    p = tmp_path / "dw.toml"
    p.write_text('discovery = false\n[models.iris]\nfeature_names = ["sl", "sw"]\n'
                 '[models.price]\ntask = "regression"\n')
    s = load_settings(p, env={})
    assert s.models["iris"].feature_names == ["sl", "sw"] and not s.discovery
    assert s.models["price"].task == "regression"
    p.write_text('[models.x]\ntask = "ranking"\n')
    with pytest.raises(ConfigError, match="models.x.task"):
        load_settings(p, env={})


def test_the_readme_config_example_loads(tmp_path):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, re.S)
    loaded = []
    for i, block in enumerate(blocks):  # every TOML example of the README loads
        p = tmp_path / f"readme-{i}.toml"
        p.write_text(block)
        loaded.append(load_settings(p, env={}))
    (s,) = [x for x in loaded if "iris" in x.models]  # the configuration reference
    assert s.models["iris"].feature_names[0] == "sepal_length"
    assert s.detection.policy() is not None
    assert any("churn-v2" in x.rollouts for x in loaded)  # the rollouts example
