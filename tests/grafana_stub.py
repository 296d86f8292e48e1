"""A local stand-in for Grafana's HTTP API, for tests: it answers the endpoints driftwarden
uses from an in-memory store and checks every request against Grafana's own OpenAPI (Swagger
2.0) spec, tests/contracts/grafana-api-merged.json (a pinned copy) — the path and method must
exist, the body must validate against the operation's schema, and (stricter than the spec) carry no
property the schema does not name. It can answer slowly or with errors."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema

SPEC_PATH = Path(__file__).resolve().parent / "contracts" / "grafana-api-merged.json"
SPEC_SHA256 = "7cf02dea0a980cbaadb03c4d088cebc78e8fc74b1d6aecbf8fbf4f149fec1e62"


class Spec:
    def __init__(self, path: Path = SPEC_PATH) -> None:
        raw = path.read_bytes()
        assert hashlib.sha256(raw).hexdigest() == SPEC_SHA256, f"{path} is not the pinned spec"
        self.doc = json.loads(raw)
        self.base = self.doc.get("basePath", "/api")
        self.routes = []
        for template, ops in self.doc["paths"].items():
            rx = re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$")
            self.routes.append((rx, template, ops))

    def check(self, method: str, path: str, body) -> list[str]:
        """Problems of one request (empty: it conforms)."""
        if not path.startswith(self.base + "/"):
            return [f"{path}: outside {self.base}"]
        rel = path[len(self.base):].split("?")[0]
        for rx, template, ops in self.routes:
            if rx.match(rel):
                op = ops.get(method.lower())
                if op is None:
                    return [f"{method} {template}: no such operation in the spec"]
                return self._body(template, op, body)
        return [f"{method} {rel}: no such path in the spec"]

    def _body(self, template, op, body) -> list[str]:
        params = [p for p in op.get("parameters", []) if p.get("in") == "body"]
        if not params:
            return [] if body is None else [f"{template}: takes no body"]
        if body is None:
            return [f"{template}: body required"] if params[0].get("required") else []
        schema = {**params[0]["schema"], "definitions": self.doc["definitions"]}
        v = jsonschema.Draft4Validator(schema)
        errors = [f"{template}: {e.message} at {list(e.path)}" for e in v.iter_errors(body)]
        resolved = params[0]["schema"]
        if "$ref" in resolved:
            resolved = self.doc["definitions"][resolved["$ref"].split("/")[-1]]
        known = set(resolved.get("properties", {}))
        if isinstance(body, dict) and known:
            errors += [f"{template}: unknown property {k!r}" for k in body if k not in known]
        return errors


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that timed out
            super().handle_error(request, client_address)


class GrafanaStub:
    """``with GrafanaStub() as g: g.url`` — requests in ``g.requests``, spec problems in
    ``g.problems``; set ``g.delay`` (seconds) or ``g.fail`` (an HTTP status) to misbehave."""

    def __init__(self) -> None:
        self.spec = Spec()
        self.requests: list[tuple[str, str, object]] = []
        self.problems: list[str] = []
        self.folders: dict[str, dict] = {}
        self.dashboards: dict[str, dict] = {}
        self.annotations: list[dict] = []
        self.delay = 0.0
        self.fail: int | None = None
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _handle(self, method):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                stub.requests.append((method, self.path, body))
                stub.problems += stub.spec.check(method, self.path, body)
                if stub.delay:
                    time.sleep(stub.delay)
                if stub.fail:
                    return self._send(stub.fail, {"message": "injected failure"})
                status, answer = stub.answer(method, self.path.split("?")[0], body)
                self._send(status, answer)

            def _send(self, status, obj):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, method, path, body):
        if m := re.fullmatch(r"/api/folders/([^/]+)", path):
            f = self.folders.get(m.group(1))
            return (200, f) if f else (404, {"message": "folder not found"})
        if path == "/api/folders" and method == "POST":
            f = {"uid": body["uid"], "title": body["title"], "id": len(self.folders) + 1}
            self.folders[f["uid"]] = f
            return 200, f
        if m := re.fullmatch(r"/api/dashboards/uid/([^/]+)", path):
            d = self.dashboards.get(m.group(1))
            return (200, d) if d else (404, {"message": "Dashboard not found"})
        if path == "/api/dashboards/db" and method == "POST":
            dash = dict(body["dashboard"])
            old = self.dashboards.get(dash["uid"])
            version = (old["dashboard"]["version"] + 1) if old else 1
            dash.update(id=len(self.dashboards) + 1, version=version)
            self.dashboards[dash["uid"]] = {
                "dashboard": dash, "meta": {"folderUid": body.get("folderUid")}}
            return 200, {"status": "success", "uid": dash["uid"], "version": version}
        if path == "/api/annotations" and method == "POST":
            self.annotations.append({**body, "id": len(self.annotations) + 1})
            return 200, {"message": "Annotation added", "id": len(self.annotations)}
        return 404, {"message": "not found"}

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
