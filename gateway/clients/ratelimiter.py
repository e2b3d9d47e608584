"""GCRA rate limiting in Redis, shared by every gateway worker and instance.

Invariants:
- One Lua script does the whole read-decide-write step for all of a request's buckets, so
  concurrent workers never both spend the last unit, and a request costs one round trip however
  many limits apply; per bucket it mirrors ``gateway.policy.ratelimit.gcra`` (a test runs both).
- The clock is Redis's ``TIME`` read inside the script: all gateway processes share one clock,
  whatever their hosts' clocks say.
- The script is sent by EVALSHA; after a Redis restart or ``SCRIPT FLUSH`` (NOSCRIPT) it is
  loaded again once, by redis-py's ``Script``.
- A bucket key expires when its debt is paid off, so idle buckets cost no memory.
- Fail open: if Redis cannot answer, the request is allowed and the decision says
  ``fail_open=True`` (the caller sets a header); each such decision is logged and counted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.policy.ratelimit import RateLimitPolicy

__all__ = ["GCRA_LUA", "Bucket", "RateLimitDecision", "RateLimiter"]

log = logging.getLogger(__name__)

GCRA_LUA = """
-- Redis < 7 refuses writes after TIME unless the script replicates its effects.
if redis.replicate_commands then redis.replicate_commands() end
-- exact floor(a / b) for integers below 2^53: the double quotient may round across an integer
local function idiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end
  return q
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + idiv(tonumber(t[2]), 1000)
local buckets = {}
local all_allowed = true
for i = 1, #KEYS do
  local o = (i - 1) * 5
  local b = {quota = tonumber(ARGV[o + 1]), window = tonumber(ARGV[o + 2]),
             cost = tonumber(ARGV[o + 3]), force = ARGV[o + 4] == '1', tick = tonumber(ARGV[o + 5])}
  b.now = idiv(now_ms, b.tick)
  b.limit = b.window * b.quota
  if b.cost > 2 * b.quota then b.cost = 2 * b.quota end
  b.debt = 0
  local saved = redis.call('HMGET', KEYS[i], 'at', 'debt')
  if saved[1] and saved[2] then
    local elapsed = b.now - tonumber(saved[1])
    if elapsed < 0 then elapsed = 0 end
    b.debt = tonumber(saved[2]) - elapsed * b.quota
    if b.debt < 0 then b.debt = 0 end
  end
  b.new = b.debt + b.cost * b.window
  b.allowed = b.new <= b.limit
  b.retry = 0
  if not b.allowed then
    b.retry = -idiv(-(b.new - b.limit), b.quota)
    all_allowed = false
  end
  buckets[i] = b
end
local out = {now_ms}
for i, b in ipairs(buckets) do
  -- all or nothing: a request denied by one bucket spends nothing from the others
  if all_allowed or b.force then
    b.debt = b.new
    if b.debt > 2 * b.limit then b.debt = 2 * b.limit end
    if b.debt > 0 then
      redis.call('HSET', KEYS[i], 'at', b.now, 'debt', b.debt)
      redis.call('PEXPIRE', KEYS[i], (-idiv(-b.debt, b.quota) + 1) * b.tick)
    else
      redis.call('DEL', KEYS[i])
    end
  end
  local remaining = idiv(b.limit - b.debt, b.window)
  if remaining < 0 then remaining = 0 end
  table.insert(out, b.allowed and 1 or 0)
  table.insert(out, remaining)
  table.insert(out, -idiv(-b.debt, b.quota))
  table.insert(out, b.retry)
end
return out
"""


@dataclass(frozen=True)
class Bucket:
    """One bucket to take from: its Redis key (``policy.ratelimit.bucket_key``) and policy."""

    key: str
    policy: RateLimitPolicy
    cost: int = 1
    force: bool = False


@dataclass(frozen=True)
class RateLimitDecision:
    """One bucket's answer; times in milliseconds."""

    allowed: bool
    remaining: int
    reset_ms: int
    retry_after_ms: int
    fail_open: bool = False
    now_ms: int = 0


class RateLimiter:
    """Takes units from GCRA buckets in Redis. One instance per process; coroutine-safe."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._script = redis.register_script(GCRA_LUA)
        self.fail_open_count = 0

    async def acquire(
        self, key: str, policy: RateLimitPolicy, cost: int = 1, *, force: bool = False
    ) -> RateLimitDecision:
        """Take ``cost`` units if the bucket has them (``force``: take them anyway).

        ``cost=0`` asks whether the bucket still has room without spending anything: the check
        made before a request limited by tokens or cost, charged with ``force`` afterwards.
        """
        [decision] = await self.acquire_many([Bucket(key, policy, cost, force)])
        return decision

    async def acquire_many(self, buckets: Sequence[Bucket]) -> list[RateLimitDecision]:
        """All the limits of one request (org, key, per-request policy) in one round trip, all
        or nothing: the request is allowed when every decision is, and a bucket is charged only
        then (or when ``force``)."""
        args: list[int] = []
        for b in buckets:
            tick = b.policy.tick_ms or 1000
            args += [b.policy.quota, b.policy.window_ticks, b.cost, 1 if b.force else 0, tick]
        try:
            raw: Any = await self._script(keys=[b.key for b in buckets], args=args)
        except (RedisError, OSError) as exc:
            return self._fail_open(buckets, exc)
        now_ms = int(raw[0])
        decisions = []
        for i, b in enumerate(buckets):
            tick = b.policy.tick_ms or 1000
            allowed, remaining, reset, retry = (int(v) for v in raw[1 + 4 * i : 5 + 4 * i])
            decisions.append(
                RateLimitDecision(
                    allowed=bool(allowed),
                    remaining=remaining,
                    reset_ms=reset * tick,
                    retry_after_ms=retry * tick,
                    now_ms=now_ms,
                )
            )
        return decisions

    def _fail_open(self, buckets: Sequence[Bucket], exc: Exception) -> list[RateLimitDecision]:
        self.fail_open_count += 1
        log.warning(
            "rate limiter failing open: redis unavailable (%s: %s)",
            type(exc).__name__,
            exc,
            extra={"keys": [b.key for b in buckets]},
        )
        return [
            RateLimitDecision(
                allowed=True, remaining=b.policy.quota, reset_ms=0, retry_after_ms=0, fail_open=True
            )
            for b in buckets
        ]
