"""docker-compose.yml (no Docker engine here): its structure, every file it mounts exists,
every service and port it references is consistent with the configs it mounts."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def _host_path(volume: str) -> Path:
    return ROOT / volume.split(":")[0]


def test_the_stack_has_every_part():
    assert {"kafka", "worker", "traffic", "prometheus", "alertmanager", "grafana",
            "postgres"} <= set(SERVICES)
    kafka = SERVICES["kafka"]["environment"]
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    assert "zookeeper" not in SERVICES
    # workers scale: no fixed container name, no host port
    assert "container_name" not in SERVICES["worker"] and "ports" not in SERVICES["worker"]


def test_every_mounted_file_exists_and_host_ports_bind_loopback():
    for name, svc in SERVICES.items():
        for v in svc.get("volumes", []):
            assert _host_path(v).exists(), f"{name} mounts missing {v}"
        for p in svc.get("ports", []):
            assert p.startswith("127.0.0.1:"), f"{name} publishes {p} beyond loopback"
    assert (ROOT / "Dockerfile").exists()
    traffic_file = SERVICES["traffic"]["command"][2].removeprefix("/app/")
    assert (ROOT / traffic_file).exists()


def test_names_and_ports_agree_across_the_configs():
    worker_cmd = SERVICES["worker"]["command"]
    port = worker_cmd[worker_cmd.index("--web-port") + 1]
    assert worker_cmd[worker_cmd.index("--web-host") + 1] == "0.0.0.0"
    assert SERVICES["worker"]["expose"] == [port]
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    sd = prom["scrape_configs"][0]["dns_sd_configs"][0]
    assert sd["names"] == ["worker"] and str(sd["port"]) == port
    assert prom["scrape_configs"][0]["job_name"] == "driftwarden"  # AlertConfig.job
    am_target = prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"][0]
    host, am_port = am_target.split(":")
    assert host in SERVICES and any(p.endswith(f":{am_port}")
                                    for p in SERVICES[host]["ports"])
    # the workers annotate the Grafana of the stack
    from urllib.parse import urlsplit

    g = urlsplit(SERVICES["worker"]["environment"]["DRIFTWARDEN_GRAFANA__URL"])
    assert g.hostname in SERVICES and any(p.endswith(f":{g.port}")
                                          for p in SERVICES[g.hostname]["ports"])
    # the rule file Prometheus loads is the one mounted
    mounts = {v.split(":")[1]: v.split(":")[0] for v in SERVICES["prometheus"]["volumes"]}
    for rf in prom["rule_files"]:
        assert rf in mounts and (ROOT / mounts[rf]).exists()
    # Grafana's datasource points at the prometheus service, with the uid the panels use
    ds = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml")
                        .read_text())["datasources"][0]
    assert re.match(r"http://prometheus:9090$", ds["url"]) and ds["uid"] == (
        "driftwarden-prometheus")
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/driftwarden.yml")
                              .read_text())["providers"][0]
    g_mounts = {v.split(":")[1]: v.split(":")[0] for v in SERVICES["grafana"]["volumes"]}
    assert g_mounts[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    # the bootstrap servers every driftwarden container gets name the kafka service
    env = COMPOSE["x-driftwarden"]["environment"]
    assert env["DRIFTWARDEN_KAFKA__BOOTSTRAP_SERVERS"].split(":")[0] in SERVICES
    assert "@postgres:" in env["DRIFTWARDEN_DATABASE_URL"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool")
def test_prometheus_config_of_the_stack_is_valid():
    r = subprocess.run(["promtool", "check", "config", "--syntax-only",
                        str(ROOT / "deploy/prometheus/prometheus.yml")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
