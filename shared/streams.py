"""Names shared by the gateway (producer) and the ingester (consumer): sinks, Redis stream keys,
the consumer group and the field that carries an encoded record.

Every Redis key Floopy's log pipeline writes starts with ``floopy:`` so one ``SCAN`` shows them.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "CONSUMER_GROUP",
    "RECORD_FIELD",
    "Sink",
    "reply_text",
    "retention_key",
    "stream_key",
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


def stream_key(sink: Sink, prefix: str = "floopy") -> str:
    return f"{prefix}:stream:{sink.value}"


def retention_key(prefix: str = "floopy") -> str:
    """Hash org id → days of raw logs its plan keeps: written by the gateway whenever an org is
    stored, read by the ingester's retention job (which owns the raw tables)."""
    return f"{prefix}:org-retention"


def reply_text(value: bytes | str) -> str:
    """A Redis reply value as text, whether the client decodes responses or not."""
    return value.decode() if isinstance(value, bytes) else value
