"""What every confluent-kafka client of driftwarden shares: its configuration (the broker
address and the ``[kafka.client]`` settings — SASL, TLS — always together) and producing
through a full local queue.

>>> from driftwarden.config import load_settings
>>> s = load_settings(env={"DRIFTWARDEN_KAFKA__CLIENT": '{"security.protocol": "SSL"}'})
>>> client_config(s, {"group.id": "g"})["security.protocol"]
'SSL'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from driftwarden.config import Settings


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
