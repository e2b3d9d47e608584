"""The chores of one stream shard that are not moving records: claiming entries a dead consumer
left pending, forgetting consumers gone quiet, trimming what every group has acknowledged.
The stream consumer (``ingester.consume``) runs them between reads, when their ``Cadence`` is
due; the decisions themselves are pure (``ingester.stream_policy``).

Invariants:
- Only entries idle longer than ``claim_min_idle_s`` are claimed (XAUTOCLAIM); the settings keep
  that well above what a live consumer holds an entry, so live consumers' batches are never
  claimed. Claimed entries go through the consumer like new ones (acked only once durable).
- A consumer is forgotten (``XGROUP DELCONSUMER``) only if it has nothing pending, checked
  atomically in the same script, so no pending entry is ever orphaned.
- Trimming (``XTRIM MINID``) never removes an entry that a group has not both delivered and
  had acknowledged; it runs at most every ``trim_interval_s``.
- Redis errors are raised to the consumer, whose loop backs off and retries.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable
from typing import Any, cast

from redis.asyncio import Redis

from ingester.metrics import ConsumerCounter as C
from ingester.metrics import Counters
from ingester.settings import IngesterSettings
from ingester.stream_policy import (
    Cadence,
    ConsumerState,
    GroupPosition,
    consumers_to_forget,
    format_stream_id,
    trim_bound,
)
from shared.streams import CONSUMER_GROUP, Sink, reply_text

__all__ = ["Entry", "Housekeeping", "group_positions"]

log = logging.getLogger(__name__)

Entry = tuple[bytes, dict[bytes, bytes] | None]
"""A stream entry as redis-py returns it: id and fields (None for an entry deleted meanwhile)."""

_FORGET_IF_IDLE = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pending == 0 then
  return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return -1
"""


class Housekeeping:
    """The chores of stream ``key`` (of ``sink``) done by consumer ``name``."""

    def __init__(
        self,
        redis: Redis,
        sink: Sink,
        key: str,
        *,
        name: str,
        settings: IngesterSettings,
        counters: Counters,
    ) -> None:
        self.claims = Cadence(settings.claim_interval_s)
        self.trims = Cadence(settings.trim_interval_s)
        self._redis = redis
        self._sink = sink
        self._key = key
        self._name = name
        self._settings = settings
        self._counters = counters

    async def claim_idle(self) -> AsyncGenerator[list[Entry], None]:
        """Entries idle longer than ``claim_min_idle_s`` (their consumer died), now ours, a
        chunk of at most ``batch_records`` at a time, until none is left."""
        start: bytes | str = "0-0"
        min_idle_ms = int(self._settings.claim_min_idle_s * 1000)
        while True:
            reply = await self._redis.xautoclaim(
                self._key,
                CONSUMER_GROUP,
                self._name,
                min_idle_ms,
                start_id=start,
                count=self._settings.batch_records,
            )
            start, entries = reply[0], list(reply[1])
            if entries:
                self._counters.inc(self._sink, C.CLAIMED, len(entries))
                log.warning(
                    "consumer %s claimed %d idle entries on %s", self._name, len(entries), self._key
                )
                yield entries
            if start in (b"0-0", "0-0"):
                return

    async def forget_idle_consumers(self) -> None:
        infos: list[dict[str, Any]] = await self._redis.xinfo_consumers(self._key, CONSUMER_GROUP)
        states = [
            ConsumerState(reply_text(i["name"]), int(i["pending"]), int(i["idle"])) for i in infos
        ]
        forget_ms = int(self._settings.consumer_forget_after_s * 1000)
        for name in consumers_to_forget(states, me=self._name, forget_after_ms=forget_ms):
            deleting = self._redis.eval(_FORGET_IF_IDLE, 1, self._key, CONSUMER_GROUP, name)
            result = await cast(Awaitable[Any], deleting)
            if int(result) >= 0:
                self._counters.inc(self._sink, C.FORGOTTEN_CONSUMERS)
                log.info("forgot idle consumer %s on %s", name, self._key)

    async def trim(self) -> None:
        positions = await group_positions(self._redis, self._key)
        bound = trim_bound(positions)
        if bound is None:
            return
        removed = await self._redis.xtrim(
            self._key, minid=format_stream_id(bound), approximate=False
        )
        self._counters.inc(self._sink, C.TRIMS)
        self._counters.inc(self._sink, C.TRIMMED, int(removed))


async def group_positions(redis: Redis, key: str) -> list[GroupPosition]:
    """Every group's last delivered id and oldest pending id. XINFO GROUPS is read before
    XPENDING: an entry delivered in between only makes the bound more conservative."""
    positions = []
    for group in await redis.xinfo_groups(key):
        oldest = None
        if int(group["pending"]):
            summary = await redis.xpending(key, group["name"])
            oldest = reply_text(summary["min"]) if summary.get("min") else None
        positions.append(GroupPosition(reply_text(group["last-delivered-id"]), oldest))
    return positions
