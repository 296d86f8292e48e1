"""The ``driftwarden`` command.

Every user error (a missing file, a bad flag, an invalid setting) ends with one readable line
on stderr and exit code 2 — never a traceback.
"""

from __future__ import annotations

import math
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import click

from driftwarden import __version__
from driftwarden.errors import DriftwardenError, InputError
from driftwarden.logs import FORMATS as LOG_FORMATS
from driftwarden.statuses import INCIDENT_STATUSES

EXIT_USAGE = 2


def _fmt(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if x != 0 and (abs(x) < 10 ** -digits or abs(x) >= 1e6):
        return f"{x:.2e}"
    return f"{x:.{digits}f}"


def render_report(report: dict[str, Any], title: str = "driftwarden batch") -> None:
    """Print a batch report as a rich table."""
    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=160)
    verdict = "[bold red]DRIFT[/]" if report["drift"] else "[bold green]no drift[/]"
    n_drift = sum(f["drift"] for f in report["features"].values())
    console.print(f"{title}: {verdict} — {n_drift} of {len(report['features'])} features drifted "
                  f"(reference {report['n_reference']:,} rows, "
                  f"current {report['n_current']:,} rows)")
    table = Table(show_lines=False)
    for col, justify in (("feature", "left"), ("type", "left"), ("drift", "center"),
                         ("PSI", "right"), ("KS / χ²", "right"), ("p-value", "right"),
                         ("JS", "right"), ("Hellinger", "right"), ("W₁ (σ)", "right"),
                         ("missing", "right"), ("unseen / out of range", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for name, f in report["features"].items():
        t = f["tests"]
        test = t.get("ks") or t.get("chi2") or {}
        q = f["quality"]
        other = q["unseen_ratio"] if f["type"] == "categorical" else q["out_of_range_ratio"]
        table.add_row(
            name, f["type"], "[red]yes[/]" if f["drift"] else "no",
            _fmt(t["psi"]["score"]), _fmt(test.get("statistic")), _fmt(test.get("pvalue")),
            _fmt(t["jensenshannon"]["score"]), _fmt(t["hellinger"]["score"]),
            _fmt(t.get("wasserstein", {}).get("normalized")),
            f"{q['missing_ratio']:.1%}", f"{other:.1%}")
    console.print(table)


def _load_types(path: str | None) -> dict[str, str] | None:
    if path is None:
        return None
    import orjson

    from driftwarden.batch import check_types

    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"types file not found: {p}") from None
    except OSError as exc:
        raise InputError(f"cannot read types file {p}: {exc.strerror}") from None
    try:
        return check_types(orjson.loads(raw))
    except orjson.JSONDecodeError as exc:
        raise InputError(f"types file {p} is not valid JSON: {exc}") from None


def _batch(reference: str, current: str, types: str | None, as_json: bool, config: str | None,
           budget: float | None, sims: int | None, title: str = "driftwarden batch") -> None:
    from driftwarden.batch import run_batch
    from driftwarden.config import load_settings
    from driftwarden.tables import read_table

    settings = load_settings(config)
    det = settings.detection
    policy = det.policy()
    if budget is not None:
        from dataclasses import replace

        from driftwarden.errors import ValidationError

        try:
            policy = replace(policy, budget=budget)
        except ValidationError as exc:
            raise click.BadParameter(str(exc), param_hint="--budget") from None
    type_map = _load_types(types)
    report = run_batch(read_table(reference), read_table(current), types=type_map,
                       policy=policy, bins=det.bins, n_sim=sims or det.calibration_sims,
                       seed=det.seed)
    if as_json:
        import orjson

        sys.stdout.write(orjson.dumps(report).decode() + "\n")
    else:
        render_report(report, title)


def _row_columns(label_help: str, no_time: str) -> Any:
    """The options naming a table's columns, shared by the commands that read rows as
    records (produce, publish)."""
    options = [
        click.option("--model", default=None,
                     help="Model name for rows without a `model` column."),
        click.option("--version", "model_version", default="1", show_default=True,
                     help="Version for rows without a `version` column."),
        click.option("--prediction-column", default="prediction", show_default=True,
                     help="The model's output (not a feature)."),
        click.option("--label-column", default="label", show_default=True, help=label_help),
        click.option("--ts-column", default="ts", show_default=True,
                     help="Event time of each row (epoch seconds or ISO 8601); rows without "
                          f"one get {no_time}."),
    ]

    def apply(f: Any) -> Any:
        for option in reversed(options):
            f = option(f)
        return f

    return apply


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="driftwarden")
def cli() -> None:
    """driftwarden — drift monitoring and observability for ML models in production."""


@cli.command()
@click.option("--reference", required=True, metavar="FILE",
              help="Reference table (CSV, or Parquet by its .parquet suffix).")
@click.option("--current", required=True, metavar="FILE", help="Current table to test.")
@click.option("--types", metavar="TYPES.json",
              help='Column types: {"column": "numeric" | "categorical"}; others are inferred.')
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--config", metavar="FILE", help="driftwarden TOML config (detection settings).")
@click.option("--budget", type=float, default=None,
              help="False-alarm budget: chance that a no-drift table is flagged (default 1e-4).")
@click.option("--sims", type=click.IntRange(10, 100_000), default=None,
              help="Simulated no-drift windows used to calibrate PSI (default 200, or the "
                   "config's detection.calibration_sims).")
def batch(reference: str, current: str, types: str | None, as_json: bool, config: str | None,
          budget: float | None, sims: int | None) -> None:
    """Test a current table against a reference table for drift.

    Exit code 0 whether or not drift was found; 2 on bad input.
    """
    _batch(reference, current, types, as_json, config, budget, sims)


@cli.command()
@click.option("--duration", type=click.FloatRange(10, 86_400), default=75.0, show_default=True,
              help="Seconds of traffic before the demo ends.")
@click.option("--rate", type=click.IntRange(10, 100_000), default=1000, show_default=True,
              help="Prediction records per second and model.")
@click.option("--batch", "batch_mode", is_flag=True,
              help="Run the batch mode on a bundled example instead (no broker, a few seconds).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object at the end.")
def demo(duration: float, rate: int, batch_mode: bool, as_json: bool) -> None:
    """Run driftwarden end to end on this machine, with no service and no configuration.

    Starts an embedded Kafka-compatible broker, a worker and a traffic generator for two
    models; a data drift and, later, a concept drift begin at known times, and the verdicts
    and action events are shown as they are published. Ctrl-C ends it cleanly.
    """
    if batch_mode:
        folder = resources.files("driftwarden") / "examples"
        with resources.as_file(folder / "reference.csv") as ref, \
                resources.as_file(folder / "current.csv") as cur:
            _batch(str(ref), str(cur), None, as_json, None, None, None,
                   title="driftwarden demo --batch (bundled example)")
        return
    from rich.console import Console

    from driftwarden.demo import run_demo

    console = Console()

    def echo(line: str) -> None:
        style = ("bold red" if "ACTION" in line else "yellow" if "ONSET" in line or
                 "ESCALATION" in line else "green" if "RECOVERY" in line else None)
        console.print(line, style=style, highlight=False, markup=False)

    try:
        result = run_demo(duration, rate, as_json=as_json, echo=echo)
    except RuntimeError as exc:
        raise DriftwardenError(str(exc)) from None
    from driftwarden.demo import missing_drifts

    missing = missing_drifts(result)
    if as_json:
        import orjson

        sys.stdout.write(orjson.dumps(result).decode() + "\n")
    else:
        kinds = sorted({(e["model"], e["kind"]) for e in result["drift_events"]
                        if e["state"] == "onset"})
        actions = [f"{a['action']} {a['model']}" for a in result["actions"]]
        click.echo(f"done: produced {result['produced']}; drift onsets {kinds}; "
                   f"actions {actions}; logs in {result['logs']}")
    if missing:
        raise DriftwardenError(f"the demo's injected drift was not reported: "
                               f"{', '.join(missing)}; see {result['logs']}")


@cli.command()
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Loopback port to listen on (default: the port of the configured "
                   "bootstrap servers, 9092; 0: a free one).")
@click.option("--config", metavar="FILE", help="driftwarden TOML config (its broker address).")
def broker(port: int | None, config: str | None) -> None:
    """Run the embedded Kafka-compatible broker (Tansu, memory only) in the foreground.

    It listens where the worker and `driftwarden produce` look by default (127.0.0.1:9092, or
    the port of DRIFTWARDEN_KAFKA__BOOTSTRAP_SERVERS), and prints that address; Ctrl-C stops
    it (and everything it held: it keeps nothing on disk).
    """
    import signal
    import socket
    import threading

    from driftwarden.config import load_settings
    from driftwarden.embedded import BrokerError, EmbeddedBroker

    if port is None:
        first = load_settings(config).kafka.bootstrap_servers.split(",")[0]
        try:
            port = int(first.rpartition(":")[2])
        except ValueError:
            raise InputError(f"no port in the bootstrap servers {first!r}: give --port") from None
    if port:
        with socket.socket() as probe:
            probe.settimeout(0.5)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                raise InputError(f"127.0.0.1:{port} is in use (a broker already running?): "
                                 "give --port N, and --bootstrap-servers 127.0.0.1:N to the "
                                 "worker and produce")

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        b = EmbeddedBroker(port=port or None).start()
    except BrokerError as exc:
        raise InputError(str(exc)) from None
    try:
        click.echo(f"broker listening on {b.bootstrap_servers} (memory only; Ctrl-C stops it)")
        click.echo(f"use: --bootstrap-servers {b.bootstrap_servers}  or  "
                   f"DRIFTWARDEN_KAFKA__BOOTSTRAP_SERVERS={b.bootstrap_servers}")
        while not stop.wait(0.5):
            if not b.running:
                raise InputError("the broker exited")
    finally:
        b.stop()
        click.echo("broker stopped")


@cli.command()
@click.option("--config", metavar="FILE", help="driftwarden TOML config.")
@click.option("--bootstrap-servers", metavar="HOST:PORT", help="Kafka bootstrap servers.")
@click.option("--warmup", type=click.IntRange(100, 10_000_000), default=None,
              help="Records of a new (model, version) that become its baseline (default 5000).")
@click.option("--web-port", type=click.IntRange(1, 65535), default=None,
              help="Port of the health / verdicts / metrics endpoints (default: the web_port "
                   "setting, 6066).")
@click.option("--web-host", default=None,
              help="Address the endpoints bind to (default: the web_host setting, 127.0.0.1; "
                   "0.0.0.0 inside a container).")
@click.option("--session-timeout", type=click.FloatRange(1, 300), default=10.0,
              show_default=True, help="Kafka consumer-group session timeout, seconds.")
@click.option("--log-format", type=click.Choice(LOG_FORMATS), default="text",
              show_default=True, help="json: one JSON object per line, for log shippers.")
def worker(config: str | None, bootstrap_servers: str | None, warmup: int | None,
           web_port: int | None, web_host: str | None, session_timeout: float,
           log_format: str) -> None:
    """Run a stream worker: consume predictions and labels, publish drift and action events."""
    import logging

    import msgspec

    from driftwarden.config import load_settings
    from driftwarden.kafka import ensure_topics
    from driftwarden.stream.app import create_app

    settings = load_settings(config)
    if bootstrap_servers or warmup:
        data = msgspec.to_builtins(settings)
        if bootstrap_servers:
            data["kafka"]["bootstrap_servers"] = bootstrap_servers
        if warmup:
            data["detection"]["warmup"] = warmup
        from driftwarden.config import Settings

        settings = msgspec.convert(data, Settings)
    from driftwarden import logs

    web_port = web_port or settings.web_port
    web_host = web_host or settings.web_host
    log_config = logs.configure(settings.log_level, log_format)
    log = logging.getLogger("driftwarden")
    log.debug("settings: %s", settings.redacted())
    # the config first (a bad baseline file is reported before any connection), then the broker
    app = create_app(settings, web_port=web_port, web_host=web_host,
                     session_timeout=session_timeout)
    try:
        ensure_topics(settings)
    except Exception as exc:  # noqa: BLE001 - report the broker problem in one line
        raise InputError(f"cannot reach the broker at {settings.kafka.bootstrap_servers}: "
                         f"{exc}") from None
    for line in logs.startup_summary(settings, web_host, web_port):
        log.info("%s", line)
    from faust.worker import Worker

    from driftwarden.stream.app import tune_gc

    tune_gc()
    Worker(app, loglevel=settings.log_level.lower(), quiet=True,
           logging_config=log_config).execute_from_commandline()


@cli.command()
@click.argument("file", metavar="FILE")
@click.option("--topic", default=None, help="Topic to send to (default: the predictions topic).")
@_row_columns("Sent to the label topic too, when present.", "their send time")
@click.option("--rate", type=click.FloatRange(0, None), default=0.0, show_default=True,
              help="Records per second (0: as fast as the broker takes them).")
@click.option("--batch", type=click.IntRange(1, 10_000), default=1, show_default=True,
              help="Records per message (> 1: native batch messages).")
@click.option("--speedup", type=click.FloatRange(0, None, min_open=True), default=None,
              help="Replay the file's own timeline (--ts-column) this many times faster.")
@click.option("--config", metavar="FILE", help="driftwarden TOML config (broker, topics).")
@click.option("--bootstrap-servers", metavar="HOST:PORT", help="Kafka bootstrap servers.")
def produce(file: str, topic: str | None, model: str | None, model_version: str, rate: float,
            batch: int, prediction_column: str, label_column: str, ts_column: str,
            speedup: float | None, config: str | None, bootstrap_servers: str | None) -> None:
    """Replay FILE (CSV, Parquet or JSON Lines) as prediction logs, to try the worker on
    your own data: one record per row, every column a feature except model, version, id,
    ts and the prediction and label columns."""
    import logging

    from confluent_kafka import KafkaException, Producer

    from driftwarden.config import load_settings
    from driftwarden.kafka import client_config, ensure_topics, produce
    from driftwarden.produce import produce_rows
    from driftwarden.tables import read_rows

    settings = load_settings(config)
    if speedup and rate:
        raise click.UsageError("give either --rate or --speedup, not both")
    rows = read_rows(file)
    if not rows:
        raise InputError(f"{file}: no rows")
    from driftwarden.produce import timestamp

    for i, row in enumerate(rows):  # a bad time is reported before anything is sent
        timestamp(row.get(ts_column), i, ts_column)
    if model is None:
        unnamed = next((i for i, r in enumerate(rows) if not r.get("model")), None)
        if unnamed is not None:
            raise InputError(f"{file}, row {unnamed}: no model (give --model or a `model` "
                             "column)")
    servers = bootstrap_servers or settings.kafka.bootstrap_servers
    producer = Producer(client_config(settings, {"enable.idempotence": True,
                                                   "linger.ms": 20}, servers),
                        logger=logging.getLogger("driftwarden.kafka"))  # not on stderr
    try:
        producer.list_topics(timeout=5)
        ensure_topics(settings, 10.0, servers)  # sent before any worker made them, too
    except KafkaException as exc:
        raise InputError(f"cannot reach the broker at {servers}: {exc}") from None

    def send(t: str, key: bytes, value: bytes) -> None:
        produce(producer, t, value, key)
        producer.poll(0)

    sent = produce_rows(rows, send, topic=topic or settings.topics.predictions,
                        labels_topic=settings.topics.labels, model=model,
                        version=model_version, rate=rate, batch=batch,
                        prediction=prediction_column, label=label_column, ts_column=ts_column,
                        speedup=speedup or 0.0)
    left = producer.flush(60)
    if left:
        raise InputError(f"{left} messages not delivered to {servers}")
    click.echo(f"sent {sent['records']} records in {sent['messages']} messages"
               + (f" and {sent['labels']} labels" if sent["labels"] else "")
               + f" to {topic or settings.topics.predictions}")


@cli.command()
@click.argument("file", metavar="FILE")
@_row_columns("Ground truth, when present: outcome partials too.", "the time of the publish")
@click.option("--name", default=None,
              help="The batch job's name: its partials come from source batch:NAME "
                   "(default: FILE's name without its suffix).")
@click.option("--config", metavar="FILE",
              help="driftwarden TOML config: the worker's (broker, topics, models, slices).")
@click.option("--bootstrap-servers", metavar="HOST:PORT", help="Kafka bootstrap servers.")
def publish(file: str, model: str | None, model_version: str, name: str | None,
            prediction_column: str, label_column: str, ts_column: str, config: str | None,
            bootstrap_servers: str | None) -> None:
    """Publish FILE (CSV, Parquet or JSON Lines) as partial summaries: a batch job's records
    in the stream's windows, dashboards and incidents. Publishing the same file again is
    recognised (its partials are duplicates). Columns as for `driftwarden produce`."""
    import logging
    import time

    from confluent_kafka import KafkaException, Producer

    from driftwarden.config import load_settings
    from driftwarden.kafka import client_config, ensure_topics
    from driftwarden.partials import encode
    from driftwarden.publish import (
        checked_rows,
        file_messages,
        known_baselines,
        source_name,
        summary_counts,
    )
    from driftwarden.stream.baselines import configured_models, read_published
    from driftwarden.stream.sources import summary_partition
    from driftwarden.tables import read_rows

    settings = load_settings(config)
    source = source_name(name if name is not None else Path(file).stem)
    rows = read_rows(file)
    if not rows:
        raise InputError(f"{file}: no rows")
    groups = checked_rows(rows, limits=settings.limits, now=time.time(), model=model,
                          version=model_version, prediction=prediction_column,
                          label=label_column, ts_column=ts_column)  # before anything is sent
    del rows
    servers = bootstrap_servers or settings.kafka.bootstrap_servers
    producer = Producer(client_config(settings, {"enable.idempotence": True, "acks": "all",
                                                   "linger.ms": 20}, servers),
                        logger=logging.getLogger("driftwarden.kafka"))  # not on stderr
    topic = settings.topics.summaries
    try:
        producer.list_topics(timeout=5)
        ensure_topics(settings, 10.0, servers)
    except KafkaException as exc:
        raise InputError(f"cannot reach the broker at {servers}: {exc}") from None
    find = known_baselines(configured_models(settings), read_published(settings, servers))
    det = settings.detection
    messages = file_messages(
        groups, source=source, slice_seconds=det.slice_seconds, baseline=find,
        task=lambda m: settings.models[m].task if m in settings.models else "classification",
        reservoir_size=det.reservoir_size, seed=det.seed)
    failed: list[Any] = []
    for key, msg in messages:
        producer.produce(topic, value=encode(msg, binary=True), key=key.encode(
            "utf-8", "surrogatepass"), partition=summary_partition(key, settings.kafka.partitions),
            on_delivery=lambda err, _m: failed.append(err) if err else None)
        producer.poll(0)
    left = producer.flush(60)
    if left or failed:
        raise InputError(f"{left or len(failed)} partial(s) not delivered to {servers}"
                         + (f": {failed[0]}" if failed else "") + "; publishing the file again "
                         "is safe (what arrived twice counts once)")
    n = summary_counts(messages)
    click.echo(f"published {n['records']} records"
               + (f" and {n['outcomes']} outcomes" if n["outcomes"] else "")
               + f" in {n['partials']} partials to {topic} as {source}"
               + (" (as records: no baseline yet)" if n["raw"] else ""))


@cli.command()
@click.argument("file", metavar="FILE")
@click.option("--baseline", required=True, metavar="COLUMN",
              help="The current version's predictions.")
@click.option("--candidate", required=True, metavar="COLUMN",
              help="The new version's predictions on the same rows.")
@click.option("--label", default=None, metavar="COLUMN",
              help="Ground truth where known: performance decides (else disagreement).")
@click.option("--task", type=click.Choice(["classification", "regression"]), default=None,
              help="Default: inferred from the values.")
@click.option("--margin", type=click.FloatRange(0, None), default=None,
              help="How much worse the candidate may be, in loss units (default: 0.01 = one "
                   "point of accuracy; 1 % of the baseline's mean absolute error).")
@click.option("--max-disagreement", type=click.FloatRange(0, 1), default=0.05,
              show_default=True, help="Without labels: the share of examples the versions "
                                      "may decide differently.")
@click.option("--tolerance", type=click.FloatRange(0, None), default=None,
              help="Regression without labels: predictions further apart disagree (default: "
                   "a tenth of the baseline predictions' standard deviation).")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=0.05, show_default=True,
              help="Chance of a wrong verdict, each way together.")
@click.option("--allow-inconclusive", is_flag=True,
              help="Exit 0 when there are too few examples to tell.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def gate(file: str, baseline: str, candidate: str, label: str | None, task: str | None,
         margin: float | None, max_disagreement: float, tolerance: float | None,
         alpha: float, allow_inconclusive: bool, as_json: bool) -> int:
    """May CANDIDATE ship? FILE (CSV or Parquet) holds one row per evaluation example with
    both versions' predictions and, where known, the label. Prints the verdict — promote,
    rollback or inconclusive — with its evidence.

    Exit code 0: promote (ship it); 1: rollback, or inconclusive unless
    --allow-inconclusive; 2: bad input.
    """
    from driftwarden.gate import exit_code
    from driftwarden.gate import gate as run_gate
    from driftwarden.tables import read_table

    table = read_table(file)
    result = run_gate(table.columns, baseline=baseline, candidate=candidate, label=label,
                      task=task, margin=margin, alpha=alpha, missing=table.missing,
                      max_disagreement=max_disagreement, tolerance=tolerance)
    if as_json:
        import orjson

        sys.stdout.write(orjson.dumps(result).decode() + "\n")
    else:
        _render_gate(result, baseline, candidate)
    return exit_code(result["verdict"], allow_inconclusive)


def _render_gate(r: dict[str, Any], baseline: str, candidate: str) -> None:
    """The gate's verdict and evidence as a few readable lines."""
    def bounds(c: dict[str, Any]) -> str:
        return (f"{_fmt(c['estimate'])} [{_fmt(c['lower'])}, {_fmt(c['upper'])}] "
                f"vs margin {_fmt(c['margin'])}, n={c['n']:,}")

    click.echo(f"driftwarden gate: {candidate} against {baseline} ({r['task']}, "
               f"{r['compared']:,} of {r['rows']:,} rows compared)")
    if "performance" in r:
        p = r["performance"]
        click.echo(f"  {p['loss']}: baseline {_fmt(p['baseline_loss'])}, candidate "
                   f"{_fmt(p['candidate_loss'])} on {r['labelled']:,} labelled rows")
        click.echo(f"  candidate - baseline: {bounds(p)} ({1 - r['alpha']:.0%} confidence "
                   "sequence)")
    d = r["disagreement"]
    click.echo(f"  disagreement: {bounds(d)}")
    if "prediction_shift" in r:
        ks = r["prediction_shift"]
        click.echo(f"  prediction distributions: KS {_fmt(ks['ks'])}, p {_fmt(ks['p_value'])}")
    click.echo(f"verdict: {r['verdict']} (decided by {r['signal']})")


@cli.command()
@click.option("--rate", type=click.IntRange(1, 100_000), default=200, show_default=True,
              help="Records per second of each model.")
@click.option("--drift-after", type=click.FloatRange(0, None), default=180.0,
              show_default=True, help="Seconds of reference traffic before the drifts.")
@click.option("--duration", type=click.FloatRange(1, None), default=3600.0, show_default=True,
              help="Seconds until it ends.")
@click.option("--config", metavar="FILE", help="driftwarden TOML config (broker, topics).")
@click.option("--bootstrap-servers", metavar="HOST:PORT", help="Kafka bootstrap servers.")
def traffic(rate: int, drift_after: float, duration: float, config: str | None,
            bootstrap_servers: str | None) -> None:
    """Send the demo's synthetic traffic to a broker: reference traffic, then data drift in
    `fraud` and concept drift (with labels) in `churn` v2 (the compose stack's traffic)."""
    import signal
    import threading

    from confluent_kafka import KafkaException

    from driftwarden.config import load_settings
    from driftwarden.demo import run_traffic
    from driftwarden.kafka import ensure_topics

    settings = load_settings(config)
    servers = bootstrap_servers or settings.kafka.bootstrap_servers
    try:
        ensure_topics(settings, 10.0, servers)
    except KafkaException as exc:
        raise InputError(f"cannot reach the broker at {servers}: {exc}") from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    run_traffic(servers, rate=rate, drift_after=drift_after, duration=duration, stop=stop,
                echo=click.echo)


@cli.command()
@click.option("--url", default=None,
              help="The worker's web address (default: http://127.0.0.1 on the web_port "
                   "setting, 6066).")
@click.option("--config", metavar="FILE", help="driftwarden TOML config (its web_port).")
@click.option("--interval", type=click.FloatRange(0.1, 3600), default=2.0, show_default=True,
              help="Seconds between polls.")
@click.option("--until-drift", is_flag=True,
              help="Exit 0 at the first open incident (1 if --timeout passes first).")
@click.option("--timeout", type=click.FloatRange(0, None), default=None,
              help="Stop after this many seconds.")
@click.option("--token", envvar="DRIFTWARDEN_TOKEN", default=None,
              help="A read token, when the worker has API tokens (env DRIFTWARDEN_TOKEN).")
def watch(url: str | None, config: str | None, interval: float, until_drift: bool,
          timeout: float | None, token: str | None) -> int:
    """Follow a worker's verdicts: one line per change (model, kind, state, features)."""
    from driftwarden.config import load_settings
    from driftwarden.watch import watch as run

    url = url or f"http://127.0.0.1:{load_settings(config).web_port}"
    return run(url, echo=click.echo, interval=interval, until_drift=until_drift,
               timeout=timeout, token=token)


@cli.group()
def alerts() -> None:
    """Prometheus alerting rules."""


@alerts.command("render")
@click.option("--runbook-base", metavar="URL", default=None,
              help="Where runbook links point (default: the runbook_base setting, the "
                   "project's docs/runbooks.md); each alert appends #its-name.")
@click.option("--config", metavar="FILE", help="driftwarden TOML config (its runbook_base).")
def alerts_render(runbook_base: str | None, config: str | None) -> None:
    """Print the Prometheus rule file (YAML) to stdout."""
    from driftwarden.alerts import AlertConfig, render_rules
    from driftwarden.config import load_settings

    base = runbook_base or load_settings(config).runbook_base
    if not base.startswith(("http://", "https://")):
        raise click.BadParameter("a runbook base is an http(s) URL", param_hint="--runbook-base")
    click.echo(render_rules(AlertConfig(runbook_base=base.rstrip("#"))), nl=False)


@cli.group()
def dashboards() -> None:
    """Grafana dashboards."""


@dashboards.command("export")
@click.argument("directory", type=click.Path(file_okay=False))
def dashboards_export(directory: str) -> None:
    """Write the dashboards as JSON files into DIRECTORY (Grafana file provisioning)."""
    from driftwarden.dashboards import export

    try:
        paths = export(directory)
    except OSError as exc:
        raise click.ClickException(f"cannot write to {directory}: {exc.strerror}") from None
    for p in paths:
        click.echo(str(p))


@dashboards.command("push")
@click.option("--grafana-url", required=True, metavar="URL", help="e.g. http://127.0.0.1:3000")
@click.option("--folder", default="driftwarden", show_default=True, help="Folder title.")
@click.option("--no-overwrite", is_flag=True, help="Fail instead of replacing a changed one.")
@click.option("--timeout", type=click.FloatRange(0.1, 300), default=10.0, show_default=True)
def dashboards_push(grafana_url: str, folder: str, no_overwrite: bool, timeout: float) -> None:
    """Upload the dashboards to Grafana (token from GRAFANA_TOKEN); pushing twice changes
    nothing."""
    import os

    from driftwarden.dashboards.push import push_all

    for uid, what in push_all(grafana_url, token=os.environ.get("GRAFANA_TOKEN") or None,
                              folder=folder, overwrite=not no_overwrite, timeout=timeout):
        click.echo(f"{uid}: {what}")


# -- the store: baselines, models, incidents, audit -----------------------------------------------
def _open_store(config: str | None) -> Any:
    """The store of ``DRIFTWARDEN_DATABASE_URL`` (or the default SQLite file); a database that
    cannot be reached is one line."""
    from driftwarden.config import load_settings
    from driftwarden.store import database_url, open_store

    return open_store(database_url(load_settings(config)))


def _actor() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def _emit(rows: Any, as_json: bool, columns: list[tuple[str, str]], title: str) -> None:
    """Rows as a JSON array (``--json``) or a rich table of ``columns`` (key, header)."""
    if as_json:
        import orjson

        sys.stdout.write(orjson.dumps(rows).decode() + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for key, header in columns:
        if key == "id" or key.endswith("_id"):  # ids are never cut: they are typed back
            width = max([len(header), *(len(_cell(r.get(key), key)) for r in rows)])
            table.add_column(header, no_wrap=True, min_width=width)
        else:
            table.add_column(header)
    for row in rows:
        table.add_row(*[_cell(row.get(key), key) for key, _ in columns])
    # piped: as wide as the table needs (rich would squeeze it into 80 columns)
    console = Console() if sys.stdout.isatty() else Console(width=200)
    console.print(table if rows else f"{title}: none")


def _cell(v: Any, key: str = "") -> str:
    """A table cell: lists joined, times to the second in UTC."""
    if v is None:
        return "-"
    if isinstance(v, list):
        return ", ".join(map(str, v))
    if (key == "at" or key.endswith("_at")) and isinstance(v, str) and "T" in v:
        return v[:19].replace("T", " ")
    return str(v)


config_option = click.option("--config", metavar="FILE", help="driftwarden TOML config.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


@cli.group()
def baseline() -> None:
    """Versioned baselines in the store."""


@baseline.command("fit")
@click.option("--model", required=True)
@click.option("--version", "model_version", required=True)
@click.option("--data", required=True, metavar="FILE", help="Reference table (CSV / Parquet).")
@click.option("--types", metavar="TYPES.json", help="Column types ({name: numeric|categorical}).")
@config_option
@json_option
def baseline_fit(model: str, model_version: str, data: str, types: str | None,
                 config: str | None, as_json: bool) -> None:
    """Fit a baseline of MODEL VERSION from a reference file and store it as a new revision."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from driftwarden.batch import fit_baseline_file
    from driftwarden.config import load_settings

    settings = load_settings(config)
    store = _open_store(config)
    size = Path(data).stat().st_size if Path(data).exists() else 0
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  transient=True, disable=as_json or size < 5_000_000 or not sys.stderr.isatty(),
                  console=Console(stderr=True)) as bar:
        task = bar.add_task(f"fitting {Path(data).name} ({size / 1e6:.0f} MB)", total=2)
        fitted = fit_baseline_file(data, settings.detection, _load_types(types))
        bar.update(task, advance=1, description="storing")
        row = store.add_baseline(model, model_version, fitted.to_state(), rows=fitted.n_rows,
                                 source=str(Path(data).resolve()), actor=_actor())
        bar.update(task, advance=1)
    row["features"] = len(fitted.specs)
    if as_json:
        _emit(row, True, [], "")
        return
    click.echo(f"{model} v{model_version}: baseline revision {row['revision']} "
               f"({row['rows']:,} rows, {row['features']} features) from {data}")


@cli.group()
def models() -> None:
    """Registered models and their versions."""


@models.command("list")
@config_option
@json_option
def models_list(config: str | None, as_json: bool) -> None:
    """List models, their versions and statuses."""
    rows = _open_store(config).models()
    if not as_json:
        for r in rows:
            r["versions"] = [f"{v['version']} ({v['status']})" for v in r["versions"]]
    _emit(rows, as_json, [("name", "model"), ("owner", "owner"), ("versions", "versions")],
          "models")


@cli.group()
def incidents() -> None:
    """Drift incidents: list, acknowledge, resolve."""


@incidents.command("list")
@click.option("--model", default=None)
@click.option("--status", type=click.Choice(INCIDENT_STATUSES))
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@config_option
@json_option
def incidents_list(model: str | None, status: str | None, limit: int, config: str | None,
                   as_json: bool) -> None:
    """List incidents, newest first (--json: one object per incident with its evidence)."""
    rows = _open_store(config).incidents(model=model, status=status, limit=limit)
    _emit(rows, as_json, [("id", "incident"), ("model", "model"), ("version", "version"),
                          ("kind", "kind"), ("status", "status"), ("severity", "severity"),
                          ("features", "features"), ("opened_at", "opened"),
                          ("resolved_at", "resolved")], "incidents")


@incidents.command("ack")
@click.argument("incident_id")
@click.option("--note", default="", help="Why, or what happens next.")
@config_option
@json_option
def incidents_ack(incident_id: str, note: str, config: str | None, as_json: bool) -> None:
    """Acknowledge an incident: its id or a unique prefix of 4+ characters (recorded in the
    audit log with who did it; acknowledging again changes nothing)."""
    _incident_change("ack", incident_id, note, config, as_json)


@incidents.command("resolve")
@click.argument("incident_id")
@click.option("--note", default="", help="Why (a false alarm, fixed upstream, ...).")
@config_option
@json_option
def incidents_resolve(incident_id: str, note: str, config: str | None, as_json: bool) -> None:
    """Resolve an incident by hand: its id or a unique prefix of 4+ characters (the stream
    resolves one itself when its verdict recovers)."""
    _incident_change("resolve", incident_id, note, config, as_json)


def _incident_change(what: str, incident_id: str, note: str, config: str | None,
                     as_json: bool) -> None:
    from driftwarden.store import NotFound

    store = _open_store(config)
    change = store.ack_incident if what == "ack" else store.resolve_incident
    try:
        row = change(incident_id, actor=_actor(), note=note)
    except NotFound as exc:
        raise InputError(str(exc)) from None
    if as_json:
        _emit(row, True, [], "")
    elif what == "ack":
        click.echo(f"{row['id']}: acknowledged by {row['acknowledged_by']} at "
                   f"{_cell(row['acknowledged_at'], 'acknowledged_at')}")
    else:
        click.echo(f"{row['id']}: resolved at {_cell(row['resolved_at'], 'resolved_at')}")


@cli.command()
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@config_option
@json_option
def audit(limit: int, config: str | None, as_json: bool) -> None:
    """The audit log, newest first."""
    _emit(_open_store(config).audit_log(limit=limit), as_json,
          [("at", "at"), ("actor", "actor"), ("operation", "operation"), ("target", "target"),
           ("outcome", "outcome")], "audit log")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning every user error into one line and exit code 2."""
    try:
        rv = cli.main(args=argv, prog_name="driftwarden", standalone_mode=False)
    except click.UsageError as exc:
        hint = f" (see 'driftwarden {exc.ctx.command_path.partition(' ')[2]} --help')".replace(
            "  ", " ") if exc.ctx else ""
        click.echo(f"driftwarden: error: {exc.format_message()}{hint}", err=True)
        return EXIT_USAGE
    except click.ClickException as exc:
        click.echo(f"driftwarden: error: {exc.format_message()}", err=True)
        return EXIT_USAGE
    except DriftwardenError as exc:
        click.echo(f"driftwarden: error: {exc}", err=True)
        return EXIT_USAGE
    except click.Abort:
        click.echo("driftwarden: aborted", err=True)
        return 130
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
