"""Names shared by the gateway (producer) and the ingester (consumer): sinks, Redis stream keys,
the consumer group and the field that carries an encoded record.

Every Redis key Floopy's log pipeline writes starts with ``floopy:`` so one ``SCAN`` shows them.
A sink has ``stream_shards`` streams: shard 0 is ``<p>:stream:<sink>`` (the name from before
shards existed), shard i > 0 is ``<p>:stream:<sink>:<i>``. A record's shard is a pure function
of its request id, so a record and its spans go to the same shard number.
"""

from __future__ import annotations

import zlib
from enum import StrEnum

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


def stream_key(sink: Sink, prefix: str = "floopy", shard: int = 0) -> str:
    base = f"{prefix}:stream:{sink.value}"
    return base if shard == 0 else f"{base}:{shard}"


def stream_keys(sink: Sink, prefix: str, shards: int) -> list[str]:
    """Every shard's stream of ``sink``, shard 0 first."""
    return [stream_key(sink, prefix, shard) for shard in range(shards)]


def shard_of(routing_key: str, shards: int) -> int:
    """The shard of a record routed by ``routing_key`` (its request id): CRC-32, stable across
    processes and versions (Python's ``hash`` of a str is salted per process)."""
    if shards <= 1 or not routing_key:
        return 0
    return zlib.crc32(routing_key.encode()) % shards


def retention_key(prefix: str = "floopy") -> str:
    """Hash org id → days of raw logs its plan keeps: written by the gateway whenever an org is
    stored, read by the ingester's retention job (which owns the raw tables)."""
    return f"{prefix}:org-retention"


def reply_text(value: bytes | str) -> str:
    """A Redis reply value as text, whether the client decodes responses or not."""
    return value.decode() if isinstance(value, bytes) else value
