"""The Faust application: thin agents that hand raw batches to :class:`StreamService`.

Agents consume **raw bytes** and decode them in the service, so a bad message never makes Faust
drop or stop anything (Faust acknowledges a message whose agent raised, and crashes an agent on
a decode error in a typed channel). Output messages go through an idempotent confluent-kafka
producer (``enable.idempotence``, ``acks=all``, retried until delivered).

Topics are created explicitly (:func:`ensure_topics`) with the configured partition count
before a worker or producer touches them: a broker's auto-created topics may have another
count, and Faust tables crash on mismatched partitions.

Still to come (issue 3): state in Faust tables with per-partition offsets so a restarted worker
recovers exactly; until then a restarted worker starts its monitors afresh.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from driftwarden.config import Settings
from driftwarden.stream.service import Output, RawMessage, StreamService

log = logging.getLogger("driftwarden.stream")


def ensure_topics(settings: Settings, timeout: float = 15.0) -> None:
    """Create every topic of the settings that does not exist yet (idempotent)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    conf: dict[str, Any] = {"bootstrap.servers": settings.kafka.bootstrap_servers,
                            **settings.kafka.client}
    admin = AdminClient(conf)
    existing = set(admin.list_topics(timeout=timeout).topics)
    names = [getattr(settings.topics, f) for f in settings.topics.__struct_fields__]
    new = [NewTopic(n, num_partitions=settings.kafka.partitions, replication_factor=1)
           for n in dict.fromkeys(names) if n not in existing]
    if not new:
        return
    for name, fut in admin.create_topics(new, operation_timeout=timeout).items():
        try:
            fut.result(timeout)
        except Exception as exc:  # noqa: BLE001 - a concurrent creator is fine
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
            log.debug("topic %s already exists", name)


class OutputProducer:
    """Produces service outputs; delivery is retried by librdkafka until acknowledged."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import Producer

        self._producer = Producer({
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "enable.idempotence": True, "acks": "all", "linger.ms": 5,
            "message.timeout.ms": 0,  # never give up on an action: retry until delivered
            "log.connection.close": False, **settings.kafka.client})
        self.failed = 0

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failed += 1
            log.error("delivery to %s failed: %s", msg.topic(), err)

    def send(self, outputs: list[Output]) -> None:
        for o in outputs:
            while True:
                try:
                    self._producer.produce(o.topic, key=o.key, value=o.value,
                                           headers=list(o.headers),  # type: ignore[arg-type]
                                           on_delivery=self._delivered)
                    break
                except BufferError:  # local queue full: let librdkafka drain it
                    self._producer.poll(0.1)
        self._producer.poll(0)

    def flush(self, timeout: float = 30.0) -> int:
        return int(self._producer.flush(timeout))


def create_app(settings: Settings, *, web_port: int = 6066, service: StreamService | None = None,
               session_timeout: float = 10.0, batch: int = 2000, within: float = 0.2) -> Any:
    """Build the Faust app of one worker (``app.dw_service`` is its :class:`StreamService`)."""
    import faust

    # calibrations (seconds, at the end of each model's warm-up) run on a thread, so the event
    # loop keeps heartbeating and fetching; see ModelMonitor
    service = service or StreamService(
        settings, discovery=settings.discovery, max_models=settings.max_models,
        models={name: {"feature_names": m.feature_names, "task": m.task}
                for name, m in settings.models.items()},
        executor=ThreadPoolExecutor(max_workers=1, thread_name_prefix="driftwarden-calibration"))
    Path(settings.data_dir, "faust").mkdir(parents=True, exist_ok=True)
    app = faust.App(
        "driftwarden",
        broker=f"kafka://{settings.kafka.bootstrap_servers}",
        web_host="127.0.0.1", web_bind="127.0.0.1", web_port=web_port,
        topic_partitions=settings.kafka.partitions, topic_allow_declare=False,
        broker_session_timeout=session_timeout,
        broker_heartbeat_interval=max(0.5, session_timeout / 10),
        value_serializer="raw", key_serializer="raw",
        datadir=f"{settings.data_dir}/faust", store="memory://",
    )
    producer = OutputProducer(settings)
    # not `app.service`: that is Faust's own decorator
    app.dw_service = service  # type: ignore[attr-defined]
    app.dw_producer = producer  # type: ignore[attr-defined]
    state = {"last_progress": time.monotonic(), "batches": 0}

    def _raw(events: Any) -> list[RawMessage]:
        return [RawMessage(e.message.value or b"", list(_pairs(e.message.headers)),
                           e.message.topic, e.message.partition, e.message.offset,
                           float(e.message.timestamp or time.time())) for e in events]

    predictions = app.topic(settings.topics.predictions, settings.topics.features,
                            value_serializer="raw", key_serializer="raw")
    labels = app.topic(settings.topics.labels, value_serializer="raw", key_serializer="raw")

    @app.agent(predictions)
    async def ingest(stream: Any) -> None:
        async for events in stream.take_events(batch, within=within):
            producer.send(service.handle_predictions(_raw(events)))
            state["last_progress"] = time.monotonic()
            state["batches"] += 1

    @app.agent(labels)
    async def join_labels(stream: Any) -> None:
        async for events in stream.take_events(batch, within=within):
            producer.send(service.handle_labels(_raw(events)))
            state["last_progress"] = time.monotonic()

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        return web.json({"status": "ok", "batches": state["batches"],
                         "models": len(service.monitors)})

    @app.page("/models")
    async def models(web: Any, request: Any) -> Any:
        return web.json([m.status() for m in service.monitors.values()])

    @app.page("/verdicts")
    async def verdicts(web: Any, request: Any) -> Any:
        return web.json(service.verdicts())

    async def _flush(sender: Any, **kwargs: Any) -> None:  # noqa: ARG001
        producer.flush()

    app.on_before_shutdown.connect(_flush)  # type: ignore[arg-type]

    return app


def _pairs(headers: Any) -> list[tuple[str, bytes | None]]:
    if not headers:
        return []
    if isinstance(headers, dict):
        return list(headers.items())
    return [(k, v) for k, v in headers]
