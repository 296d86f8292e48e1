"""docker-compose.yml (no Docker engine here): its structure, every file it mounts exists,
every service and port it references is consistent with the configs it mounts."""

from __future__ import annotations

import os
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
            if v.split(":")[0] in COMPOSE.get("volumes", {}):
                continue  # a named volume, not a file of the repository
            assert _host_path(v).exists(), f"{name} mounts missing {v}"
        for p in svc.get("ports", []):
            assert p.startswith("127.0.0.1:"), f"{name} publishes {p} beyond loopback"
    assert (ROOT / "Dockerfile").exists()


def test_names_and_ports_agree_across_the_configs():
    worker_cmd = SERVICES["worker"]["command"]
    port = worker_cmd[worker_cmd.index("--web-port") + 1]
    assert _dockerfile()["env"]["DRIFTWARDEN_WEB_HOST"] == "0.0.0.0"  # reachable by Prometheus
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


def _dockerfile() -> dict:
    """USER (and its uid), ENV, WORKDIR, VOLUME, ENTRYPOINT and CMD of the Dockerfile."""
    import json
    import shlex

    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out: dict = {"env": {}}
    for line in text.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "ENV":
            out["env"].update(dict(kv.split("=", 1) for kv in shlex.split(rest)))
        elif word in ("ENTRYPOINT", "CMD", "VOLUME"):
            out[word.lower()] = json.loads(rest)
        elif word in ("USER", "WORKDIR"):
            out[word.lower()] = rest.strip()
        elif word == "RUN" and "useradd" in rest:
            m = re.search(r"--uid (\d+).* (\S+)$", rest)
            out["uid"], out["useradd"] = int(m.group(1)), m.group(2)
    return out


def test_the_worker_restarts_keeps_its_data_on_a_volume_and_traffic_drifts():
    worker, traffic = SERVICES["worker"], SERVICES["traffic"]
    assert worker["restart"] == "unless-stopped"
    image = _dockerfile()
    data = image["env"]["DRIFTWARDEN_DATA_DIR"]
    volume = next(v for v in worker["volumes"] if v.split(":")[1] == data)
    assert volume.split(":")[0] in COMPOSE["volumes"] and data in image["volume"]
    assert image["user"] == image["useradd"] and image["uid"] != 0  # the user it creates
    # the traffic service's command is valid for the CLI, and it drifts before it ends
    from driftwarden.cli import cli

    assert image["entrypoint"] == ["driftwarden"]
    ctx = cli.make_context("driftwarden", list(traffic["command"]), resilient_parsing=False)
    sub = cli.get_command(ctx, traffic["command"][0])
    params = sub.make_context("traffic", list(traffic["command"][1:])).params
    assert 0 < params["drift_after"] * 1.5 < params["duration"]  # both drifts happen
    sub = cli.get_command(ctx, worker["command"][0])
    sub.make_context("worker", list(worker["command"][1:]))  # valid flags


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="docker-compose (Debian package docker-compose; .ci/run installs it)")
def test_docker_compose_validates_the_file():
    r = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config",
                        "-q"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def _as_image_user(uid: int) -> list[str]:
    """setpriv to the image's uid with no capability but reading any file (this machine's
    Python lives under /root, which only root may enter); writes are checked as for uid."""
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
            "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search",
            "--bounding-set=-all,+dac_read_search", "--"]


@pytest.mark.skipif(shutil.which("setpriv") is None or os.geteuid() != 0,
                    reason="needs root and setpriv (util-linux) to switch to the image's user")
def test_the_image_user_runs_the_worker_in_an_empty_working_directory(tmp_path, broker):
    """The image's user, entrypoint, environment and the compose worker's command, run here:
    a working directory that user cannot write (the image's WORKDIR), a data directory it
    owns (the volume). The worker becomes ready and writes only there; without a writable data
    directory it says so in one line."""
    import sys
    import time

    from conftest import get_json

    from driftwarden.embedded import free_port

    image = _dockerfile()
    uid = image["uid"]
    cwd = tmp_path / "app"
    cwd.mkdir()
    cwd.chmod(0o755)  # root's, as WORKDIR /app is
    volume = tmp_path / "data"
    volume.mkdir()
    os.chown(volume, uid, uid)
    tmp_path.chmod(0o755)
    port = free_port()
    cmd = list(SERVICES["worker"]["command"])
    cmd[cmd.index("--web-port") + 1] = str(port)
    exe = [str(Path(sys.executable).parent / image["entrypoint"][0])]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTWARDEN_")}
    env |= image["env"] | {"DRIFTWARDEN_DATA_DIR": str(volume),
                           "DRIFTWARDEN_WEB_HOST": "127.0.0.1",  # 0.0.0.0 in the container
                           "DRIFTWARDEN_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
                           "DRIFTWARDEN_KAFKA__GROUP_ID": f"image-{port}", "HOME": str(volume)}
    log = tmp_path / "worker.log"
    proc = subprocess.Popen(_as_image_user(uid) + exe + cmd, cwd=cwd, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while not (get_json(port, "/ready", 1) or {}).get("ready"):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(30)
    assert list(cwd.iterdir()) == []  # nothing written to the working directory
    assert (volume / "faust").is_dir() and (volume / "driftwarden.db").is_file()
    assert "Traceback" not in log.read_text()

    env["DRIFTWARDEN_DATA_DIR"] = ".driftwarden"  # the default: in the unwritable cwd
    r = subprocess.run(_as_image_user(uid) + exe + cmd, cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "data directory" in r.stderr, r.stderr
