"""The Faust application: thin agents that hand raw batches to :class:`StreamService`.

Agents consume **raw bytes** and decode them in the service, so a bad message never makes Faust
drop or stop anything (Faust acknowledges a message whose agent raised, and crashes an agent on
a decode error in a typed channel). Output messages go through an idempotent confluent-kafka
producer (``enable.idempotence``, ``acks=all``, retried until delivered; a fatal error renews
the client and re-sends what was not confirmed: :mod:`driftwarden.stream.producer`).

Topics are created explicitly (:func:`ensure_topics`) with the configured partition count
before a worker or producer touches them: a broker's auto-created topics may have another
count, and Faust tables crash on mismatched partitions.

State is kept per source partition and checkpointed to the compacted state topic; see
:func:`create_app` and :mod:`driftwarden.stream.checkpoint`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import orjson

from driftwarden.config import Settings, private_dir
from driftwarden.errors import InputError
from driftwarden.kafka import client_config, ensure_topics
from driftwarden.metrics import Metrics
from driftwarden.store import Store
from driftwarden.stream.baselines import BaselineFeed, configured_models
from driftwarden.stream.checkpoint import StateStore
from driftwarden.stream.delivery import Delivery
from driftwarden.stream.producer import OutputProducer
from driftwarden.stream.service import Output, StreamService
from driftwarden.stream.shards import Shards
from driftwarden.stream.side import SideChannels
from driftwarden.stream.watchdog import WorkerHealth

log = logging.getLogger("driftwarden.stream")
SILENCE_REFRESH = 10.0  # seconds between reads of the silences in the store


def _missing_topics(settings: Settings, topics: set[str], timeout: float = 5.0) -> set[str]:
    """Which of ``topics`` the broker does not have (asked on a new connection)."""
    from confluent_kafka.admin import AdminClient

    existing = set(AdminClient(client_config(settings), logger=log).list_topics(
        timeout=timeout).topics)
    return topics - existing


class BatchLimit:
    """How many consumed messages make one batch for an agent: at most ``events`` messages,
    and fewer once they hold ``max_bytes`` of values.

    Faust's ``take_events`` only counts messages, but a batch message carries a hundred
    records: a limit that suits single records (thousands per batch, so per-batch costs are
    spread) makes batches of hundreds of thousands of records, and while one is processed the
    consumer thread gets little of the GIL, so the next batch is not fetched yet (measured,
    bench/bench_stream.py-like runs: batch messages ~114k records/s at 2,000 messages per
    batch, ~150k at 20 messages or at 1 MB; single records 8 % slower at 50 messages than at
    2,000, so a message count alone cannot suit both). Install :meth:`count` as a stream
    processor before ``take_events(limit, ...)`` and :meth:`reset` when a batch arrives: the
    take compares ``len(buffer) >= limit``, which Python answers with :meth:`__le__`.

    >>> limit = BatchLimit(events=3, max_bytes=10)
    >>> _ = limit.count(b"12345")
    >>> 2 >= limit, 3 >= limit
    (False, True)
    >>> _ = limit.count(b"12345")
    >>> 2 >= limit
    True
    >>> limit.reset(); 2 >= limit
    False
    """

    def __init__(self, events: int, max_bytes: int) -> None:
        self.events = events
        self.max_bytes = max_bytes
        self.bytes = 0

    def count(self, value: Any) -> Any:
        self.bytes += len(value) if isinstance(value, bytes | bytearray) else 0
        return value

    def reset(self) -> None:
        self.bytes = 0

    def __le__(self, buffered: int) -> bool:
        return buffered >= self.events or self.bytes >= self.max_bytes


def tune_gc() -> None:
    """Fewer garbage collections in a worker: every consumed message makes a few dozen
    short-lived objects (Faust's message, event, futures), so CPython's default (a young
    collection every 700 net allocations) collects every message or two, and each full
    collection walks the messages held until a checkpoint. Objects alive at start-up are
    frozen out of collection; young collections every 20,000 allocations. Measured with
    single-record messages: +45 % records/s (bench/bench_stream.py)."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def faust_credentials(client: dict[str, str]) -> Any:
    """Faust's broker credentials from the librdkafka client settings of ``[kafka.client]``
    (``security.protocol``, ``sasl.*``, ``ssl.*``), so one config serves the confluent-kafka
    producers and Faust's consumer; None for plaintext.

    >>> faust_credentials({}) is None
    True
    >>> c = faust_credentials({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
    ...                        "sasl.username": "u", "sasl.password": "p"})
    >>> type(c).__name__, c.username, c.mechanism.value, c.ssl_context is None
    ('SASLCredentials', 'u', 'PLAIN', True)
    """
    import ssl

    import faust

    from driftwarden.errors import ConfigError

    protocol = client.get("security.protocol", "PLAINTEXT").upper()
    if protocol == "PLAINTEXT":
        return None
    if protocol not in ("SSL", "SASL_SSL", "SASL_PLAINTEXT"):
        raise ConfigError(f"kafka.client: security.protocol {protocol!r} is not one of "
                          "PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL")
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=client.get("ssl.ca.location"))
        if client.get("ssl.certificate.location"):
            context.load_cert_chain(client["ssl.certificate.location"],
                                    client.get("ssl.key.location"),
                                    client.get("ssl.key.password"))
        if client.get("enable.ssl.certificate.verification", "true").lower() == "false":
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    mechanism = client.get("sasl.mechanism") or client.get("sasl.mechanisms") or "PLAIN"
    return faust.SASLCredentials(username=client.get("sasl.username"),
                                 password=client.get("sasl.password"),
                                 mechanism=mechanism.upper(), ssl_context=context)


def _limit_fetch_wait(ms: int) -> None:
    """Make Faust's consumer wait at most ``ms`` for data on a quiet partition.

    Faust builds its aiokafka consumer with ``fetch_max_wait_ms=1500``, and aiokafka keeps one
    fetch in flight per broker: while the prediction partition's records are being processed
    the next fetch asks only for the quiet ones (labels, features), the broker holds it up to
    1.5 s, and the busy partition waits behind it. Measured (bench/bench_stream.py, batch
    messages): ~35k records/s at 1,500 ms, all the worker's CPU at 50 ms. Patched once per
    process, on aiokafka's consumer class, only where Faust passes its constant.
    """
    import aiokafka

    base = aiokafka.AIOKafkaConsumer
    if getattr(base, "_driftwarden_fetch_wait", None) is not None:
        base._driftwarden_fetch_wait = ms  # type: ignore[attr-defined]
        return

    class Consumer(base):  # type: ignore[misc,valid-type]
        _driftwarden_fetch_wait = ms

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if kwargs.get("fetch_max_wait_ms") == 1500:
                kwargs["fetch_max_wait_ms"] = type(self)._driftwarden_fetch_wait
            super().__init__(*args, **kwargs)

    aiokafka.AIOKafkaConsumer = Consumer  # type: ignore[misc]


def create_app(settings: Settings, *, web_port: int = 6066, web_host: str = "127.0.0.1",
               factory: Callable[[int], StreamService] | None = None,
               session_timeout: float = 10.0, batch: int = 2000, batch_bytes: int = 1 << 20,
               within: float = 0.2) -> Any:
    """Build the Faust app of one worker (``app.dw_shards``: its :class:`Shards`).

    Delivery: every consumed message is held (an extra reference, so Faust does not commit
    its offset) until a checkpoint that includes it has been written and flushed, with the
    events it caused, to the state topic; then it is released and Faust commits. A restarted
    worker restores the checkpoint and skips what it already holds (see
    :mod:`driftwarden.stream.checkpoint`).
    """
    import faust

    _limit_fetch_wait(settings.kafka.fetch_wait_ms)
    # calibrations (seconds, at the end of each model's warm-up) run on a thread, so the event
    # loop keeps heartbeating and fetching; see ModelMonitor
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="driftwarden-calibration")
    # baselines from files or the store: a bad file or a missing revision stops the start
    models = configured_models(settings)
    factory = factory or (lambda partition: StreamService(
        settings, discovery=settings.discovery, max_models=settings.max_models,
        models=models, executor=executor, loopback=False, partition=partition))
    writable_data_dir(settings.data_dir)
    app = faust.App(
        settings.kafka.group_id,
        broker=f"kafka://{settings.kafka.bootstrap_servers}",
        web_host=web_host, web_bind=web_host, web_port=web_port,
        topic_partitions=settings.kafka.partitions, topic_allow_declare=False,
        broker_session_timeout=session_timeout,
        broker_heartbeat_interval=max(0.5, session_timeout / 10),
        value_serializer="raw", key_serializer="raw",
        broker_credentials=faust_credentials(settings.kafka.client),
        datadir=f"{settings.data_dir}/faust", store="memory://",
        # held messages are released by checkpoints, not by the end of their batch: a
        # rebalance must not wait for them (the partition's next owner replays them)
        stream_wait_empty=False,
        broker_commit_interval=settings.kafka.commit_seconds,
        broker_commit_every=settings.kafka.commit_every,
        # fetch big: a batch message is ~60 kB, and while an agent works no fetch goes out
        consumer_max_fetch_size=16 * 1024 * 1024,
        # Faust's own pages answer with tracebacks or expose tables: only ours are served
        web_router_enabled=False, web_tables_enabled=False, web_graph_enabled=False,
        web_stats_enabled=False, web_metrics_enabled=False,
    )
    producer = OutputProducer(settings)
    state_store = StateStore(settings, producer)
    # checkpoint blobs queued in a client renewed after a fatal error may never arrive: the
    # next checkpoint of every partition is then a whole new base
    producer.on_renewed = state_store.forget_delivery
    shards = Shards(factory, state_store)
    app.dw_shards = shards  # type: ignore[attr-defined]
    app.dw_producer = producer  # type: ignore[attr-defined]
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()  # this worker's, never the global one
    side = SideChannels(settings, shards, producer)
    store_sink = side.store
    metrics = Metrics.create(registry, lambda: list(shards.services.values()), side.sinks,
                             lambda: producer.failed)
    app.dw_metrics = metrics  # type: ignore[attr-defined]
    delivery = Delivery(settings, shards, producer, metrics, lambda: app.consumer,
                        publish=side.send)
    worker_health = WorkerHealth(settings, metrics)
    state: dict[str, Any] = {"batches": 0, "started": False}
    topics = settings.topics
    # every topic a shard consumes: partition p of each is shard p's (see stream.shards)
    sources = {topics.predictions, topics.features, topics.labels, topics.joins,
               topics.summaries}

    predictions = app.topic(topics.predictions, topics.features, value_serializer="raw",
                            key_serializer="raw")
    labels = app.topic(topics.labels, value_serializer="raw", key_serializer="raw")
    joins = app.topic(topics.joins, value_serializer="raw", key_serializer="raw")
    summaries = app.topic(topics.summaries, value_serializer="raw", key_serializer="raw")
    baselines = BaselineFeed(settings, shards)

    @app.agent(predictions)
    async def ingest(stream: Any) -> None:
        limit = BatchLimit(batch, batch_bytes)
        stream.add_processor(limit.count)
        async for events in stream.take_events(limit, within=within):
            limit.reset()
            side.send(shards.handle("predictions", await delivery.take(events)))
            state["batches"] += 1
            await delivery.checkpoint()

    @app.agent(labels)
    async def route_labels(stream: Any) -> None:
        """Stage 1 of labels: to the join, by request id."""
        async for events in stream.take_events(batch, within=within):
            side.send(shards.handle("labels", await delivery.take(events)))
            await delivery.checkpoint()

    @app.agent(joins)
    async def join(stream: Any) -> None:
        """The label join: outcome partials for the merge stage."""
        async for events in stream.take_events(batch, within=within):
            side.send(shards.handle("joins", await delivery.take(events)))
            await delivery.checkpoint()

    @app.agent(summaries)
    async def merge(stream: Any) -> None:
        """Stage 2: partials merged per model; verdicts, actions, store, metrics."""
        async for events in stream.take_events(batch, within=within):
            baselines.apply()
            side.send(shards.handle("summaries", await delivery.take(events)))
            await delivery.checkpoint()

    if side.alerting is not None:
        @app.timer(settings.alertmanager.resend_seconds)
        async def resend_alerts() -> None:
            side.page()

    async def _from_store(what: str, read: Callable[[Store], Any], default: Any) -> Any:
        """``read(store)`` off the event loop; ``default`` while the database is away."""
        def run() -> Any:
            store = store_sink.connect()
            if store is None:
                return default
            try:
                return read(store)
            except Exception as exc:  # noqa: BLE001 - the database is away: next round
                log.debug("%s unavailable: %s", what, exc)
                return default
        return await asyncio.to_thread(run)

    @app.timer(settings.outbox_seconds)
    async def resend_pending_actions() -> None:
        """The outbox: actions of this worker's models recorded in the store but still not
        acknowledged by the broker after two rounds are produced again, with the same
        event_id (consumers drop duplicates by it) — unless this worker's producer still has
        them queued (it retries them itself until the broker takes them)."""
        held = {m.model for m in shards.monitors}
        if not held:
            return
        cutoff = datetime.now(UTC) - timedelta(seconds=2 * settings.outbox_seconds)
        pending = await _from_store("outbox", lambda s: s.pending_actions(cutoff, held), [])
        if pending:
            log.warning("re-sending %d action(s) still pending in the outbox", len(pending))
            producer.send([Output(settings.topics.actions, a["model"].encode(),
                                  orjson.dumps(a), [("dw.event_id", a["event_id"].encode())])
                           for a in pending])

    @app.timer(SILENCE_REFRESH)
    async def refresh_silences() -> None:
        """Silences set through the admin API, read from the store (the last ones kept while
        the database is away)."""
        models = await _from_store("silences", lambda s: frozenset(s.active_silences()), None)
        if models is not None and models != shards.silenced:
            log.info("silenced models: %s", sorted(models) or "none")
            shards.set_silenced(models)
            metrics.set_silenced(models)

    @app.timer(SILENCE_REFRESH)
    async def refresh_rollouts() -> None:
        """Rollouts and the store: the config's recorded there; those started through the
        admin API judged from now on; a person's abort or promote by hand applied."""
        config = {name: msgspec.to_builtins(r) for name, r in settings.rollouts.items()}

        def read(store: Store) -> list[dict[str, Any]]:
            store.sync_config_rollouts(config)
            return store.rollouts()
        rows = await _from_store("rollouts", read, None)
        if rows is not None:
            side.send(shards.control_rollouts(settings.rollouts, rows))

    @app.timer(max(0.5, settings.kafka.checkpoint_seconds))
    async def checkpoint_when_idle() -> None:
        await delivery.checkpoint()

    @app.timer(1.0)
    async def close_idle_slices() -> None:
        """Models whose records stopped ``idle_close_seconds`` ago have their open slices
        closed and evaluated (see StreamService.handle_idle) — only in partitions the worker
        has read to the end (at the watchdog's last look), so a backlog or a broker away is
        never taken for a producer that has finished."""
        baselines.apply()
        if settings.detection.idle_close_seconds > 0:
            inputs = (topics.predictions, topics.features, topics.labels)
            side.send(shards.handle_idle(
                tp for tp in worker_health.caught_up - _behind_fetched() if tp[0] in inputs))
        side.send(shards.tick())  # silent sources stop holding slices back

    def _behind_fetched() -> set[tuple[str, int]]:
        """Partitions whose last fetch response says more is there: the watchdog's end
        offsets come from another request, which a broker may answer with a stale offset
        (the embedded one does), and a partition taken for idle while it is not would
        close slices its next records belong to."""
        consumer: Any = app.consumer
        behind = set()
        for tp in consumer.assignment():
            if tp.topic not in sources:
                continue
            try:
                high = consumer._thread.highwater(tp)  # Faust's consumer thread (aiokafka)
            except Exception:  # noqa: BLE001 - not fetched yet, or no such internals
                high = None
            key = (tp.topic, tp.partition)
            done = delivery.handled.get(key, worker_health.positions.get(key, -1))
            if high is None or done < high - 1:
                behind.add(key)
        return behind

    @app.timer(max(1.0, min(10.0, settings.kafka.stall_seconds / 4)))
    async def stall_watch() -> None:
        tps = [(tp.topic, tp.partition) for tp in app.consumer.assignment()
               if tp.topic in sources]
        error = await worker_health.check(tps, delivery.handled)
        if error is not None and ("UNKNOWN_PARTITION" in error or "UNKNOWN_TOPIC" in error):
            await _topics_lost()

    async def _topics_lost() -> None:
        """The broker answers but our topics are gone: a broker that lost its data (this
        embedded build keeps everything in memory). The offsets this worker remembers name
        a log that no longer exists, so they are forgotten (the new log starts at 0 and must
        not be skipped as a replay), and the topics are created again; Faust's consumer then
        rejoins and reads the new log from its start."""
        try:
            gone = await asyncio.to_thread(_missing_topics, settings, sources)
        except Exception as exc:  # noqa: BLE001 - the broker is away: not a lost log (yet)
            log.debug("listing topics failed: %s", exc)
            return
        if not gone:  # a stale view of a topic that exists: nothing was lost
            return
        log.error("source topics %s are gone from the broker (it lost its data?): forgetting "
                  "the offsets of the old log and creating the topics again", sorted(gone))
        delivery.handled.clear()
        shards.forget_offsets()
        _forget_faust_offsets(app.consumer.assignment())
        try:
            await asyncio.to_thread(ensure_topics, settings)
        except Exception as exc:  # noqa: BLE001 - next round
            log.warning("creating the topics again failed: %s", exc)

    def _forget_faust_offsets(tps: Any) -> None:
        """Faust drops a message below the offset it last read of its partition (and its
        committed offset stands in for that after a seek): after the broker lost its log the
        new one starts at 0, so those are forgotten too (Faust's consumer internals)."""
        consumer: Any = app.consumer
        for tp in tps:
            if tp.topic in sources:
                consumer._read_offset.pop(tp, None)
                consumer._committed_offset.pop(tp, None)

    def _status() -> dict[str, Any]:
        return {"status": worker_health.status,
                "stalled": [f"{t}/{p}" for t, p in worker_health.stalled],
                "batches": state["batches"], "models": len(shards.monitors),
                "partitions": sorted(shards.services), "replayed": shards.replayed(),
                "restored": shards.restored, "checkpoints": delivery.checkpoints,
                "checkpoint_bytes": delivery.checkpoint_bytes}

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        """Liveness: 503 while a partition is stalled (restart me)."""
        body = _status()
        return web.json(body, status=503 if worker_health.unhealthy else 200)

    @app.page("/ready")
    async def ready(web: Any, request: Any) -> Any:
        """Readiness: 200 once the worker has joined its group and nothing is stalled."""
        ok = not worker_health.unhealthy and not app.rebalancing and state["started"]
        body = {**_status(), "rebalancing": bool(app.rebalancing), "ready": ok}
        if not ok and body["status"] == "ok":
            body["status"] = "starting" if not state["started"] else "rebalancing"
        return web.json(body, status=200 if ok else 503)

    @app.task
    async def _started() -> None:
        state["started"] = True
        side.start()
        baselines.start()

    @app.page("/models")
    async def models_page(web: Any, request: Any) -> Any:
        if not _may_read(request):
            return web.json({"error": "a valid bearer token is required"}, status=401)
        return web.json([m.status() for m in shards.monitors])

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        """Prometheus exposition of this worker (see :mod:`driftwarden.metrics`)."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        # on the event loop, between batches: the collector reads state the agents change
        body = generate_latest(registry)
        # aiohttp refuses a charset inside content_type: the header goes in as is
        return web.bytes(body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    # the admin API, on this web server (one Store shared with the writer; None while the
    # database is unreachable)
    from driftwarden.api import ApiTokens, create_api

    tokens = ApiTokens(tuple(settings.api.read_tokens), tuple(settings.api.admin_tokens))
    app.web.web_app.add_subapp("/api/v1", create_api(  # type: ignore[attr-defined]
        store_sink.connect, tokens, shards.verdicts, rollouts=shards.rollouts,
        max_body=settings.api.max_body,
        detection=settings.detection,
        on_refused=lambda reason: metrics.api_refused.labels(reason).inc()))

    def _may_read(request: Any) -> bool:
        """With tokens configured, /models and /verdicts need a read (or admin) token, as
        their /api/v1 twins do; /health, /ready and /metrics stay open."""
        if not (tokens.read or tokens.admin):
            return True
        header = request.headers.get("Authorization", "")
        if tokens.bearer(header)[0] is not None:
            return True
        metrics.api_refused.labels(tokens.refusal(header)).inc()
        return False

    @app.page("/rollouts")
    async def rollouts_page(web: Any, request: Any) -> Any:
        """The rollouts this worker judges, each candidate's verdict and evidence."""
        if not _may_read(request):
            return web.json({"error": "a valid bearer token is required"}, status=401)
        return web.json(shards.rollouts())

    @app.page("/verdicts")
    async def verdicts(web: Any, request: Any) -> Any:
        if not _may_read(request):
            return web.json({"error": "a valid bearer token is required"}, status=401)
        return web.json(shards.verdicts())

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def _assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:  # noqa: ARG001
        """Restore the new partitions' state at once, so a worker restarted with nothing new
        to read still shows its models, verdicts and metrics."""
        if time.monotonic() < shards.forget_until:  # the broker lost its log a moment ago
            _forget_faust_offsets(assigned)
        mine = {tp.partition for tp in assigned if tp.topic in sources}
        shards.assign(mine)
        for p in sorted(mine - set(shards.services)):
            try:
                await delivery.restore(p)
            except Exception:  # noqa: BLE001 - the first message of it tries again
                log.exception("restoring partition %d on assignment failed", p)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def _revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:  # noqa: ARG001
        gone = {tp.partition for tp in revoked if tp.topic in sources}
        gone -= {tp.partition for tp in app.consumer.assignment() - set(revoked)
                 if tp.topic in sources}
        if gone:
            await delivery.checkpoint(force=True, partitions=gone)  # the next owner starts here
            shards.drop(gone)
            delivery.forget(gone)

    async def _flush(sender: Any, **kwargs: Any) -> None:  # noqa: ARG001
        baselines.stop()
        await delivery.checkpoint(force=True)  # which flushes the events with it
        await side.close(2.0)  # a last try for what is queued, never a long wait

    app.on_before_shutdown.connect(_flush)  # type: ignore[arg-type]

    return app


def writable_data_dir(data_dir: str) -> Path:
    """Make the worker's data directory (and its ``faust`` directory), private to this user;
    one readable line when that is impossible (a container user without write access to its
    working directory, a read-only volume).

    >>> import tempfile
    >>> writable_data_dir(tempfile.mkdtemp() + "/dw").name
    'dw'
    >>> writable_data_dir("/proc/driftwarden")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    driftwarden.errors.InputError: cannot create the data directory /proc/driftwarden: ...
    """
    path = Path(data_dir)
    try:
        private_dir(path / "faust")
        probe = path / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        shown = path if path.is_absolute() else f"{path} (in {Path.cwd()})"
        raise InputError(f"cannot create the data directory {shown}: {exc.strerror} (set "
                         "data_dir / DRIFTWARDEN_DATA_DIR to a directory this user can "
                         "write)") from None
    return path
