"""Usage counters in Redis: an org's requests this month, a key's tokens and cost per day and
month, and when each key was last used. Written after responses (``UsageRecorder``), checked by
the limits script, read by admins.

Invariants:
- Key names come from ``shared.redis_keys``; on a Redis Cluster the counters the limits script
  reads carry the org as a hash tag, so a key's usage keys need its org there.
- Counters are per UTC period and expire a while after it ends (``usage_expiry_s``); one
  pipelined round trip writes them (``HINCRBY``/``HINCRBYFLOAT`` + ``EXPIREAT``), queued by the
  caller on its own pipeline, and one reads them.
- The org's monthly request counter is incremented only by the limits script (an admitted
  request); this module names it and reads it.
- ``<p>:key_last_used`` is a hash key id → unix ms of its latest request with usage, written
  with the usage counters (batched, after responses), read by admins only.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from gateway.clients.stored_fields import aw
from gateway.policy.keys import Usage, day_period, month_period
from shared.redis_client import is_cluster
from shared.redis_keys import RedisKeys

__all__ = ["UsageCounters", "usage_expiry_s"]

_DAY_GRACE = timedelta(days=2)
_MONTH_GRACE = timedelta(days=40)


@lru_cache(maxsize=64)
def _period_end_of_day(day: int, monthly: bool) -> int:
    now = datetime.fromtimestamp(day * 86_400, UTC)
    if monthly:
        first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (first + timedelta(days=32)).replace(day=1) + _MONTH_GRACE
    else:
        end = now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
        end += _DAY_GRACE
    return int(end.timestamp())


def usage_expiry_s(now_ms: int, monthly: bool) -> int:
    """When a usage counter of the period holding ``now_ms`` may go (a grace after its end)."""
    return _period_end_of_day(now_ms // 86_400_000, monthly)


class UsageCounters:
    """Names, writes (on the caller's pipeline) and reads of the usage counters."""

    def __init__(self, redis: Redis, *, prefix: str = "floopy") -> None:
        self._redis = redis
        self.cluster = is_cluster(redis)
        self._k = RedisKeys(prefix, cluster=self.cluster)

    @property
    def keys(self) -> RedisKeys:
        """The key names the counters use (hash-tagged by org on a cluster)."""
        return self._k

    def request_counter(self, org_id: str, now_ms: int) -> str:
        """The org's monthly request counter (the limits script increments it)."""
        return self._k.org_requests(org_id, month_period(now_ms))

    def usage_keys(self, key_id: str, now_ms: int, *, org_id: str = "") -> tuple[str, str]:
        """The key's usage counters of the day and month; on a cluster they carry the org's
        hash tag (``RedisKeys``), so ``org_id`` is needed there."""
        day, month = f"d:{day_period(now_ms)}", f"m:{month_period(now_ms)}"
        return (
            self._k.key_usage(key_id, day, org_id=org_id),
            self._k.key_usage(key_id, month, org_id=org_id),
        )

    def queue_usage(
        self,
        pipe: Pipeline,
        key_id: str,
        tokens: int,
        cost_usd: float | None,
        now_ms: int,
        *,
        org_id: str = "",
    ) -> None:
        """Add a request's spend to the key's day and month counters, on ``pipe``."""
        day, month = self.usage_keys(key_id, now_ms, org_id=org_id)
        for counter, monthly in ((day, False), (month, True)):
            pipe.hincrby(counter, "tokens", tokens)
            if cost_usd:
                pipe.hincrbyfloat(counter, "cost", cost_usd)
            pipe.expireat(counter, usage_expiry_s(now_ms, monthly))

    def queue_last_used(self, pipe: Pipeline, last_used_ms: Mapping[str, int]) -> None:
        if last_used_ms:
            pipe.hset(
                self._k.key_last_used,
                mapping={k: str(v) for k, v in last_used_ms.items()},
            )

    async def last_used(self, key_ids: list[str]) -> dict[str, int]:
        if not key_ids:
            return {}
        raw = await aw(self._redis.hmget(self._k.key_last_used, key_ids))
        return {k: int(v) for k, v in zip(key_ids, raw, strict=True) if v is not None}

    async def requests(self, org_id: str, now_ms: int) -> int:
        """The org's admitted requests in the UTC month holding ``now_ms``."""
        raw = await self._redis.get(self.request_counter(org_id, now_ms))
        return int(raw or 0)

    async def usage(self, key_id: str, now_ms: int, *, org_id: str = "") -> Usage:
        """The key's spend in the day and month holding ``now_ms``."""
        day, month = self.usage_keys(key_id, now_ms, org_id=org_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(day, ["tokens", "cost"])
            pipe.hmget(month, ["tokens", "cost"])
            (d_tok, d_cost), (m_tok, m_cost) = await pipe.execute()
        return _usage(d_tok, d_cost, m_tok, m_cost)


def _usage(d_tok: Any, d_cost: Any, m_tok: Any, m_cost: Any) -> Usage:
    return Usage(
        day_tokens=int(d_tok or 0),
        day_cost_usd=float(d_cost or 0),
        month_tokens=int(m_tok or 0),
        month_cost_usd=float(m_cost or 0),
    )
