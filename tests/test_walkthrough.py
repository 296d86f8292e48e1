"""The README's "try it on your own data" walkthrough, run as written: the five commands of its
code block (broker, worker, two `produce` without timestamps or rates, watch), each in its own
process, in an empty working directory holding only the example files. The broker and the
worker's web port are moved to free ports through the environment (DRIFTWARDEN_KAFKA__
BOOTSTRAP_SERVERS, DRIFTWARDEN_WEB_PORT), which every command honours; the text of the commands
is the README's."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from driftwarden.embedded import free_port

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- walkthrough:start -->", "<!-- walkthrough:end -->"


def walkthrough() -> list[list[str]]:
    """The commands of the README's walkthrough block, comments dropped."""
    text = ROOT.joinpath("README.md").read_text(encoding="utf-8")
    block = text[text.index(START) + len(START):text.index(END)]
    (code,) = re.findall(r"```bash\n(.*?)```", block, flags=re.S)
    return [shlex.split(line, comments=True) for line in code.splitlines() if line.strip()]


def _argv(cmd: list[str]) -> list[str]:
    """The installed `driftwarden` command (not `python -m`, which would put the working
    directory, holding a `driftwarden/examples` folder, first on the import path)."""
    assert cmd[0] == "driftwarden", cmd
    exe = Path(sys.executable).parent / "driftwarden"
    return [str(exe if exe.exists() else shutil.which("driftwarden")), *cmd[1:]]


def test_the_walkthrough_has_the_five_commands_the_readme_promises():
    assert [c[1] for c in walkthrough()] == ["broker", "worker", "produce", "produce", "watch"]


def test_the_readme_walkthrough_ends_with_the_drifted_feature_flagged(tmp_path):
    broker_cmd, worker_cmd, reference, current, watch_cmd = walkthrough()
    for cmd in (reference, current):  # the example files, where the README says they are
        src = ROOT / cmd[2]
        (tmp_path / cmd[2]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, tmp_path / cmd[2])
    kafka, web = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTWARDEN_")}
    env |= {"DRIFTWARDEN_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{kafka}",
            "DRIFTWARDEN_WEB_PORT": str(web)}
    logs = {name: (tmp_path / f"{name}.log") for name in ("broker", "worker")}
    procs = []
    try:
        for name, cmd in (("broker", broker_cmd), ("worker", worker_cmd)):
            procs.append(subprocess.Popen(_argv(cmd), cwd=tmp_path, env=env,
                                          stdout=logs[name].open("w"),
                                          stderr=subprocess.STDOUT))
            if name == "broker":
                deadline = time.monotonic() + 30
                while f"127.0.0.1:{kafka}" not in logs["broker"].read_text():
                    assert time.monotonic() < deadline, logs["broker"].read_text()
                    time.sleep(0.2)
        for cmd in (reference, current):  # right away, as a user would: no waiting
            done = subprocess.run(_argv(cmd), cwd=tmp_path, env=env, capture_output=True,
                                  text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            assert re.match(r"sent \d+ records", done.stdout)
        watched = subprocess.run(_argv(watch_cmd) + ["--until-drift", "--timeout", "180"],
                                 cwd=tmp_path, env=env, capture_output=True, text=True,
                                 timeout=240)
        worker_log = logs["worker"].read_text()
        assert watched.returncode == 0, watched.stdout + worker_log[-3000:]
        assert re.search(r"fraud v1 data: drifting \(\w+\) features .*amount", watched.stdout)
        # the worker's log says so in one line, after a start-up summary of five lines
        onset = [ln for ln in worker_log.splitlines() if "drift onset: fraud v1 data" in ln]
        assert onset and "amount" in onset[0], worker_log[-3000:]
        lines = worker_log.splitlines()
        assert [ln.split(": ", 1)[1].split(" ")[0] for ln in lines[:5]] == [
            "worker", "models:", "windows:", "outputs:", "web:"], lines[:6]
        assert any("baseline fitted: fraud v1" in ln for ln in lines)
        assert any("no records for" in ln and "closing its open slices" in ln for ln in lines)
        for noise in ("alembic", "Starting...", "Topic Partition Set", "Subscribed to topic",
                      "Missing sensor state", "settings: {"):
            assert noise not in worker_log, noise
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert "broker stopped" in logs["broker"].read_text()
    assert procs[0].returncode == 0  # Ctrl-C stops the broker cleanly


@pytest.mark.parametrize("fmt", ["json"])
def test_worker_log_format_json_is_one_object_per_line(tmp_path, broker, fmt):
    """`driftwarden worker --log-format json`: every line a JSON object (for log shippers),
    the start-up summary included."""
    import json

    web = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTWARDEN_")}
    env |= {"DRIFTWARDEN_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "DRIFTWARDEN_KAFKA__GROUP_ID": f"json-{web}"}
    log = tmp_path / "worker.log"
    proc = subprocess.Popen([sys.executable, "-m", "driftwarden.cli", "worker", "--web-port",
                             str(web), "--log-format", fmt], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))
    answers = []

    def ready():
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{web}/ready", timeout=2) as r:
                answers.append((r.status, json.loads(r.read())))
        except urllib.error.HTTPError as exc:
            answers.append((exc.code, json.loads(exc.read())))
        except OSError:
            return False
        return answers[-1][0] == 200

    try:
        from conftest import wait_for

        wait_for("the worker to be ready", ready, 90)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    # /ready's body agrees with its status: 503 while starting or rebalancing, never "ok"
    assert answers[-1][1]["ready"] and answers[-1][1]["status"] == "ok", answers[-1]
    for code, body in answers:
        assert body["ready"] == (code == 200)
        assert (body["status"] == "ok") == (code == 200), (code, body)
    lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
    for ln in lines:  # every line an object, whatever logged it
        assert ln.startswith("{") and isinstance(json.loads(ln), dict), (ln, lines)
    parsed = [json.loads(ln) for ln in lines]
    assert {"ts", "level", "logger", "message"} <= set(parsed[0])
    assert parsed[4]["message"].startswith("web: http://127.0.0.1:")
