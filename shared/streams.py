"""Names shared by the gateway (producer) and the ingester (consumer): sinks, the consumer group,
the field that carries an encoded record, and which shard a record goes to.

The Redis key names themselves (``stream_key``, ``stream_keys``, ``retention_key``) are built in
``shared.redis_keys`` with every other key, and importable from here too, where the pipeline's
other names are. A record's shard is a pure function of its request id, so a record and its
spans go to the same shard number.
"""

from __future__ import annotations

import zlib
from enum import StrEnum

from shared.redis_keys import retention_key, stream_key, stream_keys

__all__ = [
    "CONSUMER_GROUP",
    "RECORD_FIELD",
    "Sink",
    "reply_text",
    "retention_key",
    "shard_of",
    "stream_key",
    "stream_keys",
]


class Sink(StrEnum):
    """One sink per record kind: its own stream, ClickHouse table and fallback files."""

    REQUESTS = "requests"
    SPANS = "spans"
    BREAKER_EVENTS = "breaker_events"


CONSUMER_GROUP = "floopy-ingesters"
"""All ingester replicas join this group, so each stream entry goes to one replica."""

RECORD_FIELD = b"r"
"""The single field of a stream entry; its value is the codec's bytes."""


def shard_of(routing_key: str, shards: int) -> int:
    """The shard of a record routed by ``routing_key`` (its request id): CRC-32, stable across
    processes and versions (Python's ``hash`` of a str is salted per process)."""
    if shards <= 1 or not routing_key:
        return 0
    return zlib.crc32(routing_key.encode()) % shards


def reply_text(value: bytes | str) -> str:
    """A Redis reply value as text, whether the client decodes responses or not."""
    return value.decode() if isinstance(value, bytes) else value
