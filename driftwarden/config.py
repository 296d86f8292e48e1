"""One settings object: defaults, then a TOML file, then ``DRIFTWARDEN_`` environment variables.

Environment variables name a top-level setting (``DRIFTWARDEN_DATA_DIR``,
``DRIFTWARDEN_DATABASE_URL``) or, with a double underscore, a setting of a section
(``DRIFTWARDEN_DETECTION__BUDGET=1e-5``, ``DRIFTWARDEN_KAFKA__BOOTSTRAP_SERVERS=…``). Values
are converted to the setting's type; anything wrong raises :class:`~driftwarden.errors.ConfigError`
with the offending key, when the settings are loaded — never mid-stream.

Read only by the application's entry points (the CLI, the worker factory) and passed down:
library code never reads the environment.

>>> s = load_settings(env={"DRIFTWARDEN_DETECTION__BUDGET": "1e-5"})
>>> s.detection.budget, s.topics.dlq
(1e-05, 'driftwarden.dlq')
>>> try:
...     load_settings(env={"DRIFTWARDEN_DETECTION__HYSTERESIS": "often"})
... except ConfigError as exc:
...     print(exc)
invalid setting: Expected `int`, got `str` - at `$.detection.hysteresis`
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from driftwarden.errors import ConfigError

ENV_PREFIX = "DRIFTWARDEN_"
SECRET_WORDS = ("password", "secret", "token", "key")


RUNBOOK_BASE = "https://github.com/driftwarden/driftwarden/blob/main/docs/runbooks.md"


class Topics(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Kafka topic names (see the README's message formats)."""

    predictions: str = "driftwarden.predictions"
    features: str = "driftwarden.features"
    labels: str = "driftwarden.labels"
    summaries: str = "driftwarden.summaries"  # partial summaries, keyed by model
    joins: str = "driftwarden.joins"  # what the label join needs, keyed by request id
    baselines: str = "driftwarden.baselines"  # compacted: baselines fitted from warm-ups
    drift: str = "driftwarden.drift"
    actions: str = "driftwarden.actions"
    dlq: str = "driftwarden.dlq"
    late: str = "driftwarden.late"
    state: str = "driftwarden.state"  # compacted: the workers' checkpoints (their changelog)


class Kafka(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Broker address and extra librdkafka / aiokafka client settings (SASL, TLS).

    ``client`` values whose key mentions a password, secret, token or key are redacted by
    :meth:`Settings.redacted`, which is what logs print.
    """

    bootstrap_servers: str = "127.0.0.1:9092"
    partitions: int = 4
    max_message_bytes: int = 1_048_576  # larger bodies go to the DLQ as "oversized"
    checkpoint_seconds: float = 5.0     # how often a worker saves its state (wall clock)
    commit_seconds: float = 2.8         # how often committed offsets catch up (Faust) ...
    commit_every: int = 10_000          # ... or after this many messages were released
    fetch_wait_ms: int = 100            # longest a fetch waits on a quiet topic (see app.py)
    stall_seconds: float = 60.0         # messages waiting, no progress: the worker is unhealthy
    group_id: str = "driftwarden"       # the workers' consumer group (and Faust app id)
    client: dict[str, str] = msgspec.field(default_factory=dict)


class Detection(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Summaries, windows and the decision policy (see ``detectors.decide``)."""

    bins: int = 10
    max_categories: int = 200
    categorical_max_distinct: int = 10
    reservoir_size: int = 1024
    reference_sample: int = 4096
    sample_rows: int = 10_000
    slices: int = 12
    slice_seconds: float = 5.0
    allowed_lateness: float = 10.0
    budget: float = 1e-4
    correction: str = "holm"
    numeric_tests: list[str] = msgspec.field(default_factory=lambda: ["ks", "psi"])
    categorical_tests: list[str] = msgspec.field(default_factory=lambda: ["chi2", "psi"])
    thresholds: dict[str, float] = msgspec.field(default_factory=dict)
    min_psi: float = 0.01
    critical_psi: float = 0.25
    hysteresis: int = 2
    recovery: int = 2
    cooldown: int = 0
    calibration_sims: int = 200
    seed: int = 0
    warmup: int = 5000               # records of a (model, version) that become its baseline
    # an idle model's warm-up ends early when it holds at least this many records
    min_warmup: Annotated[int, msgspec.Meta(ge=1)] = 500
    # wall-clock seconds without records after which a model's open slices close (0: never)
    idle_close_seconds: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    # seconds a source (input partition, device) may be silent before the merge stage stops
    # waiting for it; longer than a rebalance, so a partition changing owner is waited for
    source_idle_seconds: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    quality_tolerance: float = 0.05  # missing / unseen / invalid ratio above the baseline's
    concept_detector: str = "adwin"  # online detector on the error stream of joined labels
    # joined outcomes between two concept-drift decisions (by count: batching does not matter)
    concept_step: Annotated[int, msgspec.Meta(ge=1)] = 100
    label_ttl: float = 86_400.0      # seconds a prediction waits for its label (event time)
    max_pending_labels: int = 1_000_000
    label_grace: float = 60.0        # seconds a label waits for a prediction not yet seen

    def policy(self) -> Any:
        """The :class:`~driftwarden.detectors.decide.DecisionPolicy` these settings describe."""
        import dataclasses

        from driftwarden.detectors.decide import DecisionPolicy
        from driftwarden.errors import ValidationError

        values: dict[str, Any] = {}
        for f in dataclasses.fields(DecisionPolicy):  # every policy field has a setting here
            v = getattr(self, f.name)
            values[f.name] = tuple(v) if isinstance(v, list) else (
                dict(v) if isinstance(v, dict) else v)
        try:
            return DecisionPolicy(**values)
        except ValidationError as exc:
            raise ConfigError(f"invalid detection setting: {exc}") from None


class Limits(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Bounds on what one producer can make the service hold (``[limits]``). A record over a
    bound is dead-lettered with reason ``limit_exceeded`` (the detail names the bound); a
    timestamp outside the accepted range with ``bad_timestamp``. See the README's *failure
    modes and limits*."""

    max_features: int = 1000             # features in one record
    max_features_per_model: int = 2000   # distinct feature names one model may have
    max_name_chars: int = 200            # model, feature and segment names (store: 200)
    max_version_chars: int = 100         # a version (the store's column holds 100)
    max_value_chars: int = 1024          # a string value (category, label) or a record id
    max_segments: int = 16               # segment keys of one record
    max_future_seconds: float = 3600.0   # event time ahead of the message's clock
    dlq_max_bytes: int = 262_144         # larger bodies are dead-lettered truncated (+ SHA-256)


class Grafana(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Where the worker posts drift and action events as annotations (no ``url``: nowhere).
    The token is best given as ``DRIFTWARDEN_GRAFANA__TOKEN``."""

    url: str = ""
    token: str = ""
    timeout: float = 5.0    # seconds per request; slower counts as a failure and is retried
    queue: int = 10_000     # annotations waiting while Grafana is away (then oldest dropped)


class Alertmanager(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Alertmanager the worker posts its verdicts to directly (no ``url``: only through
    Prometheus' rules). Use one path or the other for drift alerts, not both."""

    url: str = ""
    resend_seconds: float = 60.0  # firing alerts are re-sent this often (endsAt: 4 resends)
    timeout: float = 5.0
    runbook_base: str = ""        # overrides the top-level runbook_base for direct alerts


class Api(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The admin API's bearer tokens (best set as ``DRIFTWARDEN_API__ADMIN_TOKENS='["…"]'``).
    With no token configured every request is refused (401)."""

    read_tokens: list[str] = msgspec.field(default_factory=list)
    admin_tokens: list[str] = msgspec.field(default_factory=list)
    max_body: int = 1 << 20  # bytes; larger request bodies get 413


class ModelConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What the config says of one model (``[models.NAME]``)."""

    feature_names: list[str] = msgspec.field(default_factory=list)  # for bare vectors
    task: str = "classification"  # or "regression"
    baseline: str = ""  # a reference file (CSV / Parquet) instead of a warm-up baseline
    types: dict[str, str] = msgspec.field(default_factory=dict)  # column types in that file


Strategy = Literal["canary", "shadow", "blue_green", "champion_challenger"]


class RolloutSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A rollout as declared (``[rollouts.NAME]`` in the config, or the admin API); judged by
    :class:`driftwarden.detectors.rollout.Rollout`.

    ``margin``: how much worse a candidate's loss may be than the baseline's (loss units: 0.01
    is one point of accuracy; None: 0.01 for a classifier, 1 % of the baseline's mean
    absolute error for a regressor). ``alpha``: the rollout's false-verdict budget.
    ``min_samples``: labelled outcomes (or shadow pairs) per version before any verdict;
    ``min_seconds`` / ``max_seconds``: event time from the first compared slice before a
    promote / until the rollout ends inconclusive. ``input_tolerance``: the difference of a
    numeric input's mean (in baseline standard deviations) and ``share_tolerance`` of a
    category's share beyond which the candidate is taken to get other traffic. Shadow mode:
    ``pair_seconds``, how far apart in event time the two versions' predictions of one request
    may be to pair; ``pair_tolerance``, a regressor's difference beyond which two paired
    predictions disagree (None: a tenth of the baseline's prediction standard deviation).
    Guard-rails, off when None, each rolling back only: ``latency_margin``, how much slower
    the candidate's mean request latency may be, relative to the baseline's (0.2: 20 %);
    ``quality_margin``, how much larger its share of predictions missing or not valid values.
    """

    model: str
    baseline: str
    candidates: list[str]
    strategy: Strategy = "canary"
    margin: float | None = None
    alpha: float = 0.05
    min_samples: int = 500
    min_seconds: float = 0.0
    max_seconds: float = 86_400.0
    max_disagreement: float = 0.05
    input_tolerance: float = 0.25
    share_tolerance: float = 0.05
    pair_seconds: float = 60.0
    pair_tolerance: float | None = None
    latency_margin: float | None = None
    quality_margin: float | None = None

    def check(self) -> None:
        """Raise ValueError on a spec that cannot run."""
        if not self.candidates:
            raise ValueError("a rollout needs at least one candidate version")
        if self.baseline in self.candidates:
            raise ValueError(f"version {self.baseline!r} is both baseline and candidate")
        if len(set(self.candidates)) != len(self.candidates):
            raise ValueError("a candidate version is listed twice")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.margin is not None and not self.margin >= 0.0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")
        if not 0.0 < self.max_disagreement < 1.0:
            raise ValueError(f"max_disagreement must be in (0, 1), got {self.max_disagreement}")
        if self.min_samples < 1 or self.max_seconds <= 0 or self.min_seconds < 0:
            raise ValueError("min_samples must be >= 1, max_seconds > 0, min_seconds >= 0")
        if self.input_tolerance <= 0 or self.share_tolerance <= 0:
            raise ValueError("input_tolerance and share_tolerance must be > 0")
        if not self.pair_seconds >= 0 or (self.pair_tolerance is not None
                                          and not self.pair_tolerance > 0):
            raise ValueError("pair_seconds must be >= 0 and pair_tolerance > 0")
        for name in ("latency_margin", "quality_margin"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")

    @property
    def versions(self) -> list[str]:
        return [self.baseline, *self.candidates]


class Settings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Everything configurable, in one object."""

    data_dir: str = ".driftwarden"
    database_url: str | None = None
    outbox_seconds: float = 30.0  # how often the worker re-sends actions still pending
    log_level: str = "INFO"
    # the worker's endpoints (/health, /verdicts, /metrics, /api/v1); --web-port / --web-host
    web_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 6066
    web_host: str = "127.0.0.1"
    # where runbook links point (alert rules, direct alerts, action events): your copy of
    # docs/runbooks.md, e.g. on an internal wiki; anchors are appended
    runbook_base: str = RUNBOOK_BASE
    kafka: Kafka = msgspec.field(default_factory=Kafka)
    topics: Topics = msgspec.field(default_factory=Topics)
    detection: Detection = msgspec.field(default_factory=Detection)
    models: dict[str, ModelConfig] = msgspec.field(default_factory=dict)
    # rollouts to judge (``[rollouts.NAME]``): candidate versions against a baseline version
    rollouts: dict[str, RolloutSpec] = msgspec.field(default_factory=dict)
    grafana: Grafana = msgspec.field(default_factory=Grafana)
    alertmanager: Alertmanager = msgspec.field(default_factory=Alertmanager)
    api: Api = msgspec.field(default_factory=Api)
    limits: Limits = msgspec.field(default_factory=Limits)
    discovery: bool = True   # monitor models not in `models`, discovered from the stream
    max_models: int = 100    # cap on discovered models (bounded state and metric labels)
    # for the fault suite only: handling the message at every offset N-1 mod N raises
    # (dead-lettered as internal_error); 0 never
    fault_every: int = 0

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict with secrets masked (safe to log)."""
        return _redact(msgspec.to_builtins(self))


def private_dir(path: str | Path) -> Path:
    """Create ``path`` (and its missing parents) readable by this user only (0700): the data
    directory holds the store and Faust's files. An existing directory is left as it is.

    >>> import tempfile
    >>> d = private_dir(Path(tempfile.mkdtemp()) / "a" / "b")
    >>> oct(d.stat().st_mode & 0o777), oct(d.parent.stat().st_mode & 0o777)
    ('0o700', '0o700')
    """
    p = Path(path)
    missing = [q for q in [p, *p.parents] if not q.exists()]
    for q in reversed(missing):
        q.mkdir(mode=0o700, exist_ok=True)
        q.chmod(0o700)  # the umask may have taken bits away; never added any
    return p


def safe_url(url: str) -> str:
    """``url`` without credentials or query (for an error line: secrets never reach one).

    >>> safe_url("postgresql+psycopg://u:pw@db:5432/x?sslmode=require")
    'postgresql+psycopg://db:5432/x'
    """
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _redact(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _redact(v, k) for k, v in value.items()}
    if value and any(w in key.lower() for w in SECRET_WORDS):
        return "***"
    if isinstance(value, str) and "://" in value and "@" in value.partition("://")[2]:
        scheme, _, rest = value.partition("://")  # a URL with credentials: database, Grafana
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return value


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX):].lower().split("__")
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment variable {name} conflicts with another")
        leaf = path[-1]
        if value.startswith("[") or value.startswith("{"):
            try:
                node[leaf] = msgspec.json.decode(value)
                continue
            except msgspec.DecodeError:
                pass
        node[leaf] = value
    return out


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None
                  ) -> Settings:
    """Defaults, overridden by the TOML file at ``path`` (if any), then by ``env``.

    ``env`` defaults to ``os.environ``; pass ``{}`` to ignore the environment.
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {p}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
    data = _deep_merge(data, _env_overrides(os.environ if env is None else env))
    try:
        settings = msgspec.convert(data, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid setting: {exc}") from None
    settings.detection.policy()  # validate the decision policy now, not mid-stream
    if settings.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got "
                          f"{settings.log_level!r}")
    for name, model in settings.models.items():
        if model.task not in ("classification", "regression"):
            raise ConfigError(f"models.{name}.task must be 'classification' or 'regression', "
                              f"got {model.task!r}")
    for name, rollout in settings.rollouts.items():
        try:
            rollout.check()
        except ValueError as exc:
            raise ConfigError(f"rollouts.{name}: {exc}") from None
    return settings
