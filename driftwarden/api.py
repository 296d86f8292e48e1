"""The admin API (aiohttp; mounted at ``/api/v1`` on the worker's web server, 127.0.0.1 by
default): register models and versions with lineage, upload or fit a baseline, promote a
version, list and acknowledge incidents, silence a model, list action events, read the audit
log and the current verdicts. Its OpenAPI 3 document is served at ``/api/v1/openapi.json``.

Bearer tokens with two roles — ``read`` (every GET) and ``admin`` (everything) — compared in
constant time (``hmac.compare_digest`` against every configured token); the audit log names a
token by the first 8 hex digits of its SHA-256, never by itself. Errors are JSON
``{"error": "..."}``: 401 without a valid token, 403 for a read token on an admin operation, 400
for a malformed body or path (the message names the field; strings are bounded by their
column's length and may not hold NUL, so SQLite and PostgreSQL answer alike), 413 beyond
``max_body`` bytes, 404, 409, and 503 while the database is away — never a 500 or a 503 for
bad input. Every mutating request by a valid token writes one audit row, refused ones
included; requests without a valid token are counted (``on_refused``, a metric) and logged at
most once per ``REFUSED_LOG_SECONDS``, never written one row each (anyone could grow the log).
Database calls and baseline fitting run on a thread, never on the event loop.

>>> api = create_api(lambda: None, ApiTokens(read=("r",), admin=("a",)), lambda: [])
>>> sorted(r for r in openapi()["paths"])[:3]
['/actions', '/audit', '/incidents']
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from driftwarden.config import RolloutSpec
from driftwarden.statuses import INCIDENT_STATUSES
from driftwarden.store import Conflict, NotFound, Store

MAX_BODY = 1 << 20  # 1 MiB: a fitted baseline of a few hundred features fits easily
log = logging.getLogger("driftwarden.api")


@dataclass(frozen=True)
class ApiTokens:
    read: tuple[str, ...] = ()
    admin: tuple[str, ...] = ()

    def role(self, token: str) -> str | None:
        """``admin``, ``read`` or None; every token is compared, in constant time."""
        got = None
        given = token.encode()
        for role, tokens in (("read", self.read), ("admin", self.admin)):
            for t in tokens:
                if hmac.compare_digest(given, t.encode()) and (got is None or role == "admin"):
                    got = role
        return got

    def bearer(self, header: str) -> tuple[str | None, str]:
        """The role an ``Authorization`` header grants (None: refused) and its bearer token
        (what the audit log names by a digest).

        >>> t = ApiTokens(read=("r",))
        >>> t.bearer("Bearer r"), t.bearer("Basic r"), t.bearer("")
        (('read', 'r'), (None, 'r'), (None, ''))
        """
        scheme, _, token = header.partition(" ")
        token = token.strip()
        return (self.role(token) if scheme.lower() == "bearer" else None), token

    @staticmethod
    def refusal(header: str) -> str:
        """Why a request was refused for want of a token: ``no_token`` or ``bad_token``."""
        return "no_token" if not header else "bad_token"


# -- request bodies (their JSON schemas go into the OpenAPI document) ----------------------------
NAME_PATTERN = r"^[^/\x00]+$"
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=NAME_PATTERN)]
Status = Literal["registered", "shadow", "canary", "live", "retired"]
REFUSED_LOG_SECONDS = 60.0


def _text(n: int) -> Any:
    """A string of at most ``n`` characters without NUL (PostgreSQL refuses NUL in text)."""
    return Annotated[str, msgspec.Meta(max_length=n, pattern=r"^[^\x00]*$")]


class NewModel(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    description: _text(10_000) = ""  # type: ignore[valid-type]
    owner: _text(200) = ""  # type: ignore[valid-type]


class NewVersion(msgspec.Struct, forbid_unknown_fields=True):
    version: Name
    status: Status = "registered"
    training_data_hash: _text(200) = ""  # type: ignore[valid-type]
    code_ref: _text(500) = ""  # type: ignore[valid-type]
    hyperparameters: dict[str, Any] = msgspec.field(default_factory=dict)
    evaluation: dict[str, Any] = msgspec.field(default_factory=dict)
    approved_by: _text(200) | None = None  # type: ignore[valid-type]


class Promotion(msgspec.Struct, forbid_unknown_fields=True):
    status: Status


class BaselineBody(msgspec.Struct, forbid_unknown_fields=True):
    """Either ``summary`` (a fitted baseline's state, uploaded) or ``records`` (reference rows
    to fit here: objects of feature values)."""

    summary: dict[str, Any] | None = None
    records: list[dict[str, Any]] | None = None
    source: _text(500) = "api"  # type: ignore[valid-type]


class SilenceBody(msgspec.Struct, forbid_unknown_fields=True):
    minutes: Annotated[float, msgspec.Meta(gt=0, le=60 * 24 * 90)]  # at most 90 days
    reason: _text(2000) = ""  # type: ignore[valid-type]


class Ack(msgspec.Struct, forbid_unknown_fields=True):
    note: _text(2000) = ""  # type: ignore[valid-type]


class NewRollout(msgspec.Struct, forbid_unknown_fields=True):
    """A rollout to start (the fields of ``[rollouts.NAME]`` in the config, and its name)."""

    name: Name
    model: Name
    baseline: Name
    candidates: Annotated[list[Name], msgspec.Meta(min_length=1, max_length=20)]
    strategy: Literal["canary", "shadow", "blue_green", "champion_challenger"] = "canary"
    margin: Annotated[float, msgspec.Meta(ge=0, le=1e12)] | None = None
    alpha: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.05
    min_samples: Annotated[int, msgspec.Meta(ge=1, le=10**12)] = 500
    min_seconds: Annotated[float, msgspec.Meta(ge=0, le=1e10)] = 0.0
    max_seconds: Annotated[float, msgspec.Meta(gt=0, le=1e10)] = 86_400.0
    max_disagreement: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.05
    input_tolerance: Annotated[float, msgspec.Meta(gt=0, le=1e6)] = 0.25
    share_tolerance: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.05


class EndRollout(msgspec.Struct, forbid_unknown_fields=True):
    reason: _text(2000) = ""  # type: ignore[valid-type]


class HandPromotion(msgspec.Struct, forbid_unknown_fields=True):
    candidate: Name
    reason: _text(2000) = ""  # type: ignore[valid-type]


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


Handler = Callable[[web.Request, str], Awaitable[Any]]


def _path_params(request: web.Request) -> None:
    """Path parameters pass the body's rules: a name of 1 to 100 characters without ``/``
    (aiohttp decodes ``%2F``) or NUL."""
    import re

    for key, value in request.match_info.items():
        if not 1 <= len(value) <= 100 or not re.fullmatch(NAME_PATTERN, value):
            raise _Refused(400, f"invalid path: {key} must be 1 to 100 characters without "
                                "'/' or NUL")


class _RefusalLog:
    """Requests without a valid token: counted, and logged at most once a while."""

    def __init__(self, on_refused: Callable[[str], None] | None) -> None:
        self.on_refused = on_refused
        self.since = 0
        self.logged = 0.0

    def add(self, reason: str, path: str) -> None:
        import time

        if self.on_refused is not None:
            self.on_refused(reason)
        self.since += 1
        now = time.monotonic()
        if now - self.logged >= REFUSED_LOG_SECONDS:
            log.warning("admin API: %d request(s) without a valid token refused (last: %s)",
                        self.since, path[:100])
            self.since, self.logged = 0, now


class _QuietBadRequests(logging.Filter):
    """aiohttp logs a request it cannot parse (a header over 8,190 bytes, say) with a
    traceback quoting the offending bytes — a bearer token among them. One line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import BadHttpMessage

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BadHttpMessage):
            record.msg, record.args = "refused a malformed HTTP request (%s)", (
                type(exc).__name__,)
            record.exc_info = record.exc_text = None
        return True


def quiet_bad_requests() -> None:
    """Install :class:`_QuietBadRequests` on aiohttp's server logger (once)."""
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _QuietBadRequests) for f in logger.filters):
        logger.addFilter(_QuietBadRequests())


def create_api(store: Callable[[], Store | None], tokens: ApiTokens,
               verdicts: Callable[[], list[dict[str, Any]]], *, max_body: int = MAX_BODY,
               detection: Any = None, on_refused: Callable[[str], None] | None = None,
               rollouts: Callable[[], list[dict[str, Any]]] | None = None
               ) -> web.Application:
    """The API application; ``store()`` returns the store (None while the database is
    unreachable), ``verdicts()`` the worker's current verdicts, ``rollouts()`` the rollouts
    it judges, ``on_refused(reason)`` is
    called for each request refused for want of a valid token."""
    quiet_bad_requests()
    app = web.Application(client_max_size=max_body + 1)
    refusals = _RefusalLog(on_refused)
    routes: list[tuple[str, str, str, str, Handler]] = []

    def route(method: str, path: str, role: str, operation: str) -> Callable[[Handler], Handler]:
        def deco(fn: Handler) -> Handler:
            routes.append((method, path, role, operation, fn))
            return fn
        return deco

    async def db(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        def call() -> Any:
            s = store()
            if s is None:
                raise _Refused(503, "the database is unavailable; try again later")
            return fn(s, *args, **kwargs)
        try:
            return await asyncio.to_thread(call)
        except NotFound as exc:
            raise _Refused(404, str(exc)) from None
        except Conflict as exc:
            raise _Refused(409, str(exc)) from None
        except SQLAlchemyError:  # the database went away
            raise _Refused(503, "the database is unavailable; try again later") from None

    async def body(request: web.Request, kind: type[Any]) -> Any:
        if request.content_length is not None and request.content_length > max_body:
            raise _Refused(413, f"body larger than {max_body} bytes")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _Refused(413, f"body larger than {max_body} bytes") from None
        if len(raw) > max_body:
            raise _Refused(413, f"body larger than {max_body} bytes")
        try:
            got = msgspec.json.decode(raw or b"{}", type=kind)
        except msgspec.ValidationError as exc:  # names the field: "... - at `$.name`"
            raise _Refused(400, f"invalid body: {exc}") from None
        except msgspec.DecodeError as exc:
            raise _Refused(400, f"invalid body: malformed JSON ({exc})") from None
        except RecursionError:
            raise _Refused(400, "invalid body: malformed JSON (nested too deeply)") from None
        except UnicodeDecodeError:
            raise _Refused(400, "invalid body: malformed JSON (not UTF-8)") from None
        return got

    def wrap(method: str, role: str, operation: str, fn: Handler) -> Any:
        async def handler(request: web.Request) -> web.Response:
            actor, target = "anonymous", request.path
            try:
                header = request.headers.get("Authorization", "")
                granted, token = tokens.bearer(header)
                if granted is not None:
                    digest = hashlib.sha256(token.encode()).hexdigest()[:8]
                    actor = f"{granted}-token:{digest}"
                if granted is None:
                    refusals.add(tokens.refusal(header), target)
                    return web.json_response({"error": "a valid bearer token is required"},
                                             status=401)
                if role == "admin" and granted != "admin":
                    raise _Refused(403, f"{operation} needs an admin token")
                _path_params(request)
                result = await fn(request, actor)
                status = 201 if method == "POST" and operation.endswith(".register") else 200
                return web.json_response(result, status=status, dumps=_dumps)
            except _Refused as exc:
                if method != "GET" and exc.status != 503:
                    with contextlib.suppress(_Refused):  # the database may be away itself
                        await db(Store.audit, actor, operation, target[:500], "refused",
                                 {"status": exc.status, "reason": str(exc)[:500]})
                return web.json_response({"error": str(exc)}, status=exc.status)
            except Exception:  # noqa: BLE001 - a bug: one log line, a JSON 500, no request data
                log.exception("admin API: %s %s failed", method, operation)
                return web.json_response({"error": "internal error"}, status=500)
        return handler

    # -- read --------------------------------------------------------------------------------
    @route("GET", "/verdicts", "read", "verdicts.list")
    async def get_verdicts(request: web.Request, actor: str) -> Any:
        return verdicts()

    @route("GET", "/rollouts", "read", "rollouts.list")
    async def get_rollouts(request: web.Request, actor: str) -> Any:
        """The rollouts in the store with their verdicts, each with ``live``: this worker's
        current evidence when it judges that rollout (else null)."""
        rows = await db(Store.rollouts, model=_query_name(request.query.get("model")))
        live = {r["name"]: r for r in (rollouts() if rollouts is not None else [])}
        return [{**r, "live": live.get(r["name"])} for r in rows]

    @route("GET", "/models", "read", "models.list")
    async def list_models(request: web.Request, actor: str) -> Any:
        return await db(Store.models)

    @route("GET", "/incidents", "read", "incidents.list")
    async def list_incidents(request: web.Request, actor: str) -> Any:
        q = request.query
        status = q.get("status") or None
        if status is not None and status not in INCIDENT_STATUSES:
            raise _Refused(400, f"status must be one of {', '.join(INCIDENT_STATUSES)}")
        return await db(Store.incidents, model=_query_name(q.get("model")), status=status,
                        limit=_limit(q.get("limit")))

    @route("GET", "/incidents/{incident_id}", "read", "incidents.get")
    async def get_incident(request: web.Request, actor: str) -> Any:
        return await db(Store.incident, request.match_info["incident_id"])

    @route("GET", "/actions", "read", "actions.list")
    async def list_actions(request: web.Request, actor: str) -> Any:
        return await db(Store.actions, model=_query_name(request.query.get("model")),
                        limit=_limit(request.query.get("limit")))

    @route("GET", "/audit", "read", "audit.list")
    async def list_audit(request: web.Request, actor: str) -> Any:
        return await db(Store.audit_log, limit=_limit(request.query.get("limit")))

    @route("GET", "/models/{model}/versions/{version}/baseline", "read", "baseline.get")
    async def get_baseline(request: web.Request, actor: str) -> Any:
        return await db(Store.baseline, request.match_info["model"],
                        request.match_info["version"])

    # -- admin -------------------------------------------------------------------------------
    @route("POST", "/rollouts", "admin", "rollout.register")
    async def start_rollout(request: web.Request, actor: str) -> Any:
        b = await body(request, NewRollout)
        spec = {k: v for k, v in msgspec.to_builtins(b).items() if k != "name"}
        try:
            msgspec.convert(spec, RolloutSpec).check()
        except ValueError as exc:
            raise _Refused(400, f"invalid rollout: {exc}") from None
        return await db(Store.start_rollout, b.name, spec, actor=actor)

    @route("POST", "/rollouts/{name}/abort", "admin", "rollout.abort")
    async def abort_rollout(request: web.Request, actor: str) -> Any:
        b = await body(request, EndRollout)
        return await db(Store.end_rollout, request.match_info["name"], actor=actor,
                        status="aborted", reason=b.reason)

    @route("POST", "/rollouts/{name}/promote", "admin", "rollout.promote")
    async def promote_rollout(request: web.Request, actor: str) -> Any:
        b = await body(request, HandPromotion)
        return await db(Store.end_rollout, request.match_info["name"], actor=actor,
                        status="promoted", reason=b.reason, candidate=b.candidate)

    @route("POST", "/models", "admin", "model.register")
    async def register_model(request: web.Request, actor: str) -> Any:
        b = await body(request, NewModel)
        return await db(Store.register_model, b.name, actor=actor, description=b.description,
                        owner=b.owner)

    @route("POST", "/models/{model}/versions", "admin", "version.register")
    async def register_version(request: web.Request, actor: str) -> Any:
        b = await body(request, NewVersion)
        lineage = {k: getattr(b, k) for k in ("training_data_hash", "code_ref",
                                              "hyperparameters", "evaluation", "approved_by")}
        return await db(Store.register_version, request.match_info["model"], b.version,
                        actor=actor, lineage=lineage, status=b.status)

    @route("POST", "/models/{model}/versions/{version}/promote", "admin", "version.promote")
    async def promote(request: web.Request, actor: str) -> Any:
        b = await body(request, Promotion)
        return await db(Store.promote, request.match_info["model"],
                        request.match_info["version"], b.status, actor=actor)

    @route("POST", "/models/{model}/versions/{version}/baselines", "admin", "baseline.add")
    async def add_baseline(request: web.Request, actor: str) -> Any:
        b = await body(request, BaselineBody)
        # fitting a reference of a few MB takes seconds: on a thread, like the database
        summary, rows = await asyncio.to_thread(_baseline, b, detection)
        return await db(Store.add_baseline, request.match_info["model"],
                        request.match_info["version"], summary, rows=rows, source=b.source,
                        actor=actor)

    @route("POST", "/models/{model}/silence", "admin", "model.silence")
    async def silence(request: web.Request, actor: str) -> Any:
        b = await body(request, SilenceBody)
        until = datetime.now(UTC) + timedelta(minutes=b.minutes)
        return await db(Store.silence, request.match_info["model"], until, actor=actor,
                        reason=b.reason)

    @route("POST", "/incidents/{incident_id}/ack", "admin", "incident.ack")
    async def ack(request: web.Request, actor: str) -> Any:
        b = await body(request, Ack)
        return await db(Store.ack_incident, request.match_info["incident_id"], actor=actor,
                        note=b.note)

    async def spec(request: web.Request) -> web.Response:
        return web.json_response(openapi())

    for method, path, role, operation, fn in routes:
        app.router.add_route(method, path, wrap(method, role, operation, fn))
    app.router.add_get("/openapi.json", spec)
    return app


def _dumps(obj: Any) -> str:
    import orjson

    try:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    except TypeError:  # e.g. an integer beyond 64 bits in user-given lineage: the slow way
        import json

        return json.dumps(obj, default=str)


def _query_name(raw: str | None) -> str | None:
    if not raw:
        return None
    if len(raw) > 200 or "\x00" in raw:
        raise _Refused(400, "model must be at most 200 characters without NUL")
    return raw


def _limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return 100
    try:
        n = int(raw)
    except ValueError:
        raise _Refused(400, "limit must be an integer from 1 to 10000") from None
    if not 1 <= n <= 10_000:
        raise _Refused(400, "limit must be an integer from 1 to 10000")
    return n


def _baseline(b: BaselineBody, detection: Any) -> tuple[dict[str, Any], int]:
    from driftwarden.detectors.baseline import Baseline

    if (b.summary is None) == (b.records is None):
        raise _Refused(400, "give either summary (an uploaded baseline) or records (to fit)")
    try:
        if b.summary is not None:
            fitted = Baseline.from_state(b.summary)
        else:
            assert b.records is not None
            if not b.records or not any(b.records):
                raise _Refused(400, "records: at least one row with at least one feature")
            from driftwarden.config import Detection

            d = detection or Detection()
            fitted = Baseline.fit(b.records, bins=d.bins, max_categories=d.max_categories,
                                  categorical_max_distinct=d.categorical_max_distinct,
                                  sample_rows=d.sample_rows,
                                  reference_sample=d.reference_sample, seed=d.seed)
    except _Refused:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed summary or unusable rows
        raise _Refused(400, f"invalid baseline: {type(exc).__name__}: {exc}"[:300]) from None
    return fitted.to_state(), int(fitted.n_rows)


# -- the OpenAPI document ------------------------------------------------------------------------
_ERRORS = {"400": "malformed request", "401": "no valid bearer token",
           "403": "the token's role may not do this", "404": "not found",
           "409": "conflicts with what is stored", "413": "body too large",
           "503": "the database is unavailable"}


def openapi() -> dict[str, Any]:
    """The API's OpenAPI 3.1 document (request bodies from the msgspec structs above)."""
    bodies = [NewModel, NewVersion, Promotion, BaselineBody, SilenceBody, Ack, NewRollout,
              EndRollout, HandPromotion]
    (_, components) = msgspec.json.schema_components(bodies, ref_template=(
        "#/components/schemas/{name}"))
    error = {"type": "object", "properties": {"error": {"type": "string"}},
             "required": ["error"]}
    components["Error"] = error

    def op(summary: str, ok: str, admin: bool, body: str | None = None,
           params: list[dict[str, Any]] | None = None, ok_type: str = "object",
           missing: bool = False) -> dict[str, Any]:
        codes = ["400", "401", "503"] + (["403", "413"] if admin else [])
        if missing or body is not None:
            codes += ["404", "409"] if body is not None else ["404"]
        responses: dict[str, Any] = {ok: {"description": "OK", "content": {
            "application/json": {"schema": {"type": ok_type}}}}}
        for c in sorted(set(codes)):
            responses[c] = {"description": _ERRORS[c], "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Error"}}}}
        out: dict[str, Any] = {"summary": summary, "security": [{"bearer": []}],
                               "responses": responses, "parameters": params or []}
        if body is not None:
            out["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{body}"}}}}
        return out

    def p(name: str) -> dict[str, Any]:
        return {"name": name, "in": "path", "required": True,
                "schema": {"type": "string", "minLength": 1, "maxLength": 100,
                           "pattern": NAME_PATTERN}}

    def q(name: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "schema": schema}

    limit = q("limit", {"type": "integer", "minimum": 1, "maximum": 10_000})
    model = q("model", {"type": "string", "maxLength": 200, "pattern": r"^[^\x00]*$"})
    return {
        "openapi": "3.1.0",  # JSON Schema 2020-12, as msgspec writes it
        "info": {"title": "driftwarden admin API", "version": "1"},
        "servers": [{"url": "/api/v1"}],
        "components": {"schemas": components, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/verdicts": {"get": op("Current verdicts", "200", False, ok_type="array")},
            "/rollouts": {
                "get": op("Rollouts with their verdicts (and this worker's live evidence)",
                          "200", False, params=[model], ok_type="array"),
                "post": op("Start a rollout", "201", True, "NewRollout")},
            "/rollouts/{name}/abort": {
                "post": op("Abort a running rollout", "200", True, "EndRollout",
                           [p("name")])},
            "/rollouts/{name}/promote": {
                "post": op("Promote a running rollout's candidate by hand", "200", True,
                           "HandPromotion", [p("name")])},
            "/models": {
                "get": op("Models and versions", "200", False, ok_type="array"),
                "post": op("Register a model", "201", True, "NewModel")},
            "/models/{model}/versions": {
                "post": op("Register a version with lineage", "201", True, "NewVersion",
                           [p("model")])},
            "/models/{model}/versions/{version}/promote": {
                "post": op("Set a version's status", "200", True, "Promotion",
                           [p("model"), p("version")])},
            "/models/{model}/versions/{version}/baselines": {
                "post": op("Upload or fit a baseline (a new revision)", "200", True,
                           "BaselineBody", [p("model"), p("version")])},
            "/models/{model}/versions/{version}/baseline": {
                "get": op("The newest baseline", "200", False, None,
                          [p("model"), p("version")], missing=True)},
            "/models/{model}/silence": {
                "post": op("Silence a model for a while", "200", True, "SilenceBody",
                           [p("model")])},
            "/incidents": {
                "get": op("Incidents, newest first", "200", False,
                          params=[model, q("status", {"type": "string",
                                               "enum": list(INCIDENT_STATUSES)}), limit],
                          ok_type="array")},
            "/incidents/{incident_id}": {
                "get": op("One incident with its events", "200", False, None,
                          [p("incident_id")], missing=True)},
            "/incidents/{incident_id}/ack": {
                "post": op("Acknowledge an incident", "200", True, "Ack",
                           [p("incident_id")])},
            "/actions": {"get": op("Action events and their delivery", "200", False,
                                   params=[model, limit], ok_type="array")},
            "/audit": {"get": op("The audit log, newest first", "200", False,
                                 params=[limit], ok_type="array")},
        },
    }
