"""`driftwarden watch`: one line per verdict change, --until-drift as a check for scripts."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from driftwarden.cli import main
from driftwarden.embedded import free_port


def _worker_stub(answers):
    """A /verdicts endpoint answering the given bodies in turn (the last one repeats)."""
    calls = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            calls.append(self.headers.get("Authorization"))
            body = answers[min(len(calls), len(answers)) - 1]
            status, payload = body if isinstance(body, tuple) else (200, body)
            raw = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, calls


def verdict(state, drift, features=()):
    return {"model": "fraud", "version": "1", "kind": "data", "drift": drift, "state": state,
            "severity": "critical" if drift else "none", "features": list(features), "ts": 1.0}


def test_watch_prints_each_change_once_and_stops_at_the_first_open_incident(capsys):
    server, calls = _worker_stub([[], [verdict("ok", False)], [verdict("ok", False)],
                                  [verdict("pending", False, ["amount"])],
                                  [verdict("drifting", True, ["amount"])]])
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        assert main(["watch", "--url", url, "--interval", "0.1", "--until-drift",
                     "--timeout", "30", "--token", "s3cret"]) == 0
    finally:
        server.shutdown()
    out = capsys.readouterr().out
    lines = [ln.split("  ", 1)[1] for ln in out.splitlines() if "  fraud" in ln]
    assert lines == ["fraud v1 data: ok", "fraud v1 data: pending features amount",
                     "fraud v1 data: drifting (critical) features amount"]
    assert "no verdict yet" in out and calls[0] == "Bearer s3cret"
    assert "s3cret" not in out


def test_watch_until_drift_fails_after_the_timeout_and_says_why(capsys):
    server, _ = _worker_stub([[verdict("ok", False)]])
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        assert main(["watch", "--url", url, "--interval", "0.1", "--until-drift",
                     "--timeout", "0.5"]) == 1
    finally:
        server.shutdown()
    assert "no drift within 0.5 s" in capsys.readouterr().out
    # no worker at all: it waits (one line), then the same verdict
    assert main(["watch", "--url", f"http://127.0.0.1:{free_port()}", "--interval", "0.1",
                 "--until-drift", "--timeout", "0.3"]) == 1
    out = capsys.readouterr().out
    assert out.count("waiting for the worker") == 1


def test_watch_names_a_missing_token_in_one_line(capsys):
    server, _ = _worker_stub([(401, {"error": "a valid bearer token is required"})])
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        assert main(["watch", "--url", url, "--timeout", "1"]) == 2
    finally:
        server.shutdown()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "read token" in err[0]
