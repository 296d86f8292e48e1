"""What every confluent-kafka client of driftwarden shares: its configuration (the broker
address and the ``[kafka.client]`` settings — SASL, TLS — always together) and producing
through a full local queue.

>>> from driftwarden.config import load_settings
>>> s = load_settings(env={"DRIFTWARDEN_KAFKA__CLIENT": '{"security.protocol": "SSL"}'})
>>> client_config(s, {"group.id": "g"})["security.protocol"]
'SSL'
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from driftwarden.config import Settings

log = logging.getLogger("driftwarden.kafka")


def client_config(settings: Settings, extra: Mapping[str, Any] | None = None,
                  bootstrap_servers: str | None = None) -> dict[str, Any]:
    """librdkafka settings: the broker, no log line per closed idle connection, ``extra``,
    then the configured client settings (which win)."""
    return {"bootstrap.servers": bootstrap_servers or settings.kafka.bootstrap_servers,
            "log.connection.close": False, **(extra or {}), **settings.kafka.client}


def produce(producer: Any, topic: str, value: bytes | None, key: bytes | None = None,
            **kwargs: Any) -> None:
    """``producer.produce`` that waits while librdkafka's local queue is full."""
    while True:
        try:
            producer.produce(topic, key=key, value=value, **kwargs)
            return
        except BufferError:  # the local queue is full: let librdkafka drain it
            producer.poll(0.1)


def ensure_topics(settings: Settings, timeout: float = 15.0,
                  bootstrap_servers: str | None = None) -> None:
    """Create every topic of the settings that does not exist yet (idempotent), with the
    configured partition count; the state and baselines topics compacted."""
    from confluent_kafka.admin import AdminClient, NewTopic

    # librdkafka's noise: to logging
    admin = AdminClient(client_config(settings, None, bootstrap_servers), logger=log)
    existing = set(admin.list_topics(timeout=timeout).topics)
    names = [getattr(settings.topics, f) for f in settings.topics.__struct_fields__]
    new = [NewTopic(n, num_partitions=settings.kafka.partitions, replication_factor=1,
                    config={"cleanup.policy": "compact"}
                    if n in (settings.topics.state, settings.topics.baselines) else {})
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
