"""What the stream service takes and gives: raw consumed messages, messages to produce."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple


class RawMessage(NamedTuple):
    """One consumed Kafka message (value, headers, where it came from, its timestamp in s)."""

    value: bytes
    headers: Sequence[tuple[str, bytes | None]]
    topic: str
    partition: int
    offset: int
    timestamp: float


@dataclass(frozen=True)
class Output:
    """One message to produce."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    partition: int | None = None  # None: the producer's partitioner, by key
