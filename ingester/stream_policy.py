"""Pure decisions of the stream consumer, kept apart from Redis so they are tested without it:
when a batch is flushed (size or age), how long a read may block, how far a stream may be
trimmed, which consumers may be forgotten, and when a periodic chore is due.

Stream ids are ``<ms>-<seq>`` and compare as integer pairs, never as strings.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from shared.streams import reply_text

__all__ = [
    "Batch",
    "Cadence",
    "ConsumerState",
    "FlushPolicy",
    "GroupPosition",
    "StreamId",
    "consumers_to_forget",
    "format_stream_id",
    "next_stream_id",
    "parse_stream_id",
    "trim_bound",
]

StreamId = tuple[int, int]
_MAX_SEQ = 2**64 - 1


def parse_stream_id(raw: bytes | str) -> StreamId:
    ms, _, seq = reply_text(raw).partition("-")
    return int(ms), int(seq or 0)


def format_stream_id(sid: StreamId) -> str:
    return f"{sid[0]}-{sid[1]}"


def next_stream_id(raw: bytes | str) -> StreamId:
    """The smallest id greater than ``raw``: XTRIM MINID keeps ids >= its argument, so trimming
    at this id removes ``raw`` itself."""
    ms, seq = parse_stream_id(raw)
    return (ms + 1, 0) if seq == _MAX_SEQ else (ms, seq + 1)


@dataclass(frozen=True)
class FlushPolicy:
    """A batch is flushed when it holds ``max_records`` or its first entry is ``max_age_s`` old."""

    max_records: int
    max_age_s: float

    def due(self, batch: Batch, now: float) -> bool:
        if not batch.ids:
            return False
        return len(batch.ids) >= self.max_records or self.age(batch, now) >= self.max_age_s

    def age(self, batch: Batch, now: float) -> float:
        return 0.0 if batch.first_at is None else now - batch.first_at

    def read_count(self, batch: Batch) -> int:
        return max(1, self.max_records - len(batch.ids))

    def read_block_ms(self, batch: Batch, now: float, block_ms: int) -> int:
        """Block at most until the batch comes of age; never 0, which Redis reads as forever."""
        if batch.first_at is None:
            return max(1, block_ms)
        left_ms = int((self.max_age_s - self.age(batch, now)) * 1000)
        return max(1, min(block_ms, left_ms))


@dataclass
class Batch:
    """Entries read but not yet acknowledged, in read order. ``first_at`` is a monotonic time."""

    ids: list[bytes] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    first_at: float | None = None

    def add(self, entry_id: bytes, payload: bytes, now: float) -> None:
        if self.first_at is None:
            self.first_at = now
        self.ids.append(entry_id)
        self.payloads.append(payload)

    def clear(self) -> None:
        self.ids.clear()
        self.payloads.clear()
        self.first_at = None


@dataclass(frozen=True)
class GroupPosition:
    """What trimming needs from one consumer group: ``XINFO GROUPS`` + ``XPENDING`` summary."""

    last_delivered_id: str
    oldest_pending_id: str | None


def trim_bound(groups: Sequence[GroupPosition]) -> StreamId | None:
    """The MINID below which every group has had every entry delivered and acknowledged.

    Plain MAXLEN would drop unacknowledged entries; this never does. None when no group exists
    or nothing was delivered yet (nothing may be trimmed).
    """
    bounds: list[StreamId] = []
    for group in groups:
        bound = next_stream_id(group.last_delivered_id)
        if group.oldest_pending_id is not None:
            bound = min(bound, parse_stream_id(group.oldest_pending_id))
        bounds.append(bound)
    if not bounds:
        return None
    lowest = min(bounds)
    return None if lowest <= (0, 1) else lowest


@dataclass(frozen=True)
class ConsumerState:
    name: str
    pending: int
    idle_ms: int


def consumers_to_forget(
    consumers: Iterable[ConsumerState], *, me: str, forget_after_ms: int
) -> list[str]:
    """Consumers gone quiet with nothing pending; deleting a live one is harmless (its next
    XREADGROUP recreates it), deleting one with pending entries would orphan them."""
    return [
        c.name
        for c in consumers
        if c.name != me and c.pending == 0 and c.idle_ms >= forget_after_ms
    ]


@dataclass
class Cadence:
    """A chore due every ``interval_s`` (monotonic clock); the first check is due at once."""

    interval_s: float
    last_at: float | None = None

    def due(self, now: float) -> bool:
        return self.last_at is None or now - self.last_at >= self.interval_s

    def mark(self, now: float) -> None:
        self.last_at = now
