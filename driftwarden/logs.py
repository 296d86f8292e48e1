"""The worker's log: what driftwarden found at INFO, third-party libraries only from WARNING,
as text or as one JSON object per line for log shippers (``--log-format json``).

Faust, aiokafka, mode and Alembic log their start-up, subscriptions and migrations at INFO —
tables of topics, ``Starting...`` per service, plugin set-up lines — which buried the lines a
user needs (a baseline fitted, a drift onset, an action). :func:`logging_config` is handed to
Faust's worker (which otherwise installs its own handlers on stdout) and applied before it.

>>> import io, logging
>>> stream = io.StringIO()
>>> handler = logging.StreamHandler(stream)
>>> handler.setFormatter(JsonFormatter())
>>> record = logging.LogRecord("driftwarden.stream", logging.INFO, __file__, 1,
...                            "drift onset: %s", ("fraud v1",), None)
>>> handler.emit(record)
>>> import json; line = json.loads(stream.getvalue())
>>> line["level"], line["logger"], line["message"]
('INFO', 'driftwarden.stream', 'drift onset: fraud v1')
"""

from __future__ import annotations

import logging
import logging.config
from datetime import UTC, datetime
from typing import Any

import orjson

FORMATS = ["text", "json"]  # --log-format
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# harmless warnings Faust gives on every start (no sensor state before the first rebalance)
NOISE = ("Missing sensor state for rebalance",)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (UTC, ISO 8601), level, logger, message, and the
    exception's text when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


class QuietNoise(logging.Filter):
    """Drops the third-party warnings listed in ``NOISE``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("driftwarden"):
            return True
        msg = str(record.msg)
        return not any(n in msg for n in NOISE)


def logging_config(level: str = "INFO", fmt: str = "text") -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` dict: driftwarden's loggers at ``level``, everyone
    else's at WARNING (at DEBUG when ``level`` is DEBUG), on stderr, as ``fmt``.

    >>> cfg = logging_config("INFO", "json")
    >>> cfg["root"]["level"], cfg["loggers"]["driftwarden"]["level"]
    ('WARNING', 'INFO')
    """
    level = level.upper()
    formatter = ({"()": JsonFormatter} if fmt == "json"
                 else {"format": TEXT_FORMAT, "datefmt": "%Y-%m-%dT%H:%M:%S%z"})
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"main": formatter},
        "filters": {"quiet": {"()": QuietNoise}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                                "formatter": "main", "filters": ["quiet"]}},
        "root": {"level": "DEBUG" if level == "DEBUG" else "WARNING", "handlers": ["stderr"]},
        "loggers": {"driftwarden": {"level": level, "propagate": True},
                    # Alembic sets its own loggers to INFO when it runs migrations
                    "alembic": {"level": "DEBUG" if level == "DEBUG" else "WARNING"}},
    }


def configure(level: str = "INFO", fmt: str = "text") -> dict[str, Any]:
    """Apply :func:`logging_config`; returns it (Faust's worker applies it again)."""
    cfg = logging_config(level, fmt)
    logging.config.dictConfig(cfg)
    logging.captureWarnings(True)  # Python's warnings as log records: one format on stderr
    return cfg


def startup_summary(settings: Any, web_host: str, web_port: int) -> list[str]:
    """Five lines that say what this worker will do — not the settings dump (which holds
    every default and, unmasked, would hold secrets).

    >>> from driftwarden.config import load_settings
    >>> lines = startup_summary(load_settings(env={}), "127.0.0.1", 6066)
    >>> len(lines), lines[4]
    (5, 'web: http://127.0.0.1:6066 (/health /ready /verdicts /models /metrics /api/v1)')
    """
    from driftwarden import __version__
    from driftwarden.config import safe_url
    from driftwarden.store import database_url

    k, t, d = settings.kafka, settings.topics, settings.detection
    configured = sorted(settings.models)
    if configured:
        files = sum(1 for m in settings.models.values() if m.baseline)
        models = (f"models: {len(configured)} configured ({', '.join(configured[:5])}"
                  f"{' …' if len(configured) > 5 else ''}), {files} with a baseline file"
                  + (f"; others discovered from the stream (at most {settings.max_models})"
                     if settings.discovery else "; discovery off"))
    else:
        models = (f"models: discovered from the stream (at most {settings.max_models}); each "
                  f"version's baseline is its first {d.warmup} records")
    idle = (f"slices of an idle model close after {d.idle_close_seconds:g} s"
            if d.idle_close_seconds > 0 else "no idle close")
    db = database_url(settings)
    store = db if db.startswith("sqlite") else safe_url(db)  # a file path holds no secret
    am = "Alertmanager " + (safe_url(settings.alertmanager.url) if settings.alertmanager.url
                            else "off")
    grafana = "Grafana " + (safe_url(settings.grafana.url) if settings.grafana.url else "off")
    return [
        f"worker {__version__}: broker {k.bootstrap_servers}, group {k.group_id}; reading "
        f"{t.predictions}, {t.features}, {t.labels} ({k.partitions} partitions)",
        models,
        f"windows: {d.slices} slices of {d.slice_seconds:g} s, lateness {d.allowed_lateness:g} s,"
        f" {idle}; false-alarm budget {d.budget:g}",
        f"outputs: {t.drift}, {t.actions}, {t.dlq}; store {store}; "
        f"{am}; {grafana}",
        f"web: http://{web_host}:{web_port} (/health /ready /verdicts /models /metrics "
        "/api/v1)",
    ]
