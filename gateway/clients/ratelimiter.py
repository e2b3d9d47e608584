"""GCRA rate limiting in Redis, shared by every gateway worker and instance.

Invariants:
- One Lua script does the whole read-decide-write step for all of a request's buckets, so
  concurrent workers never both spend the last unit, and a request costs one round trip however
  many limits apply; per bucket it mirrors ``gateway.policy.ratelimit.gcra`` (a test runs both).
- The clock is Redis's ``TIME`` read inside the script: all gateway processes share one clock,
  whatever their hosts' clocks say.
- The script is sent by EVALSHA; after a Redis restart or ``SCRIPT FLUSH`` (NOSCRIPT) it is
  loaded again once, by redis-py's ``Script``. The limits script's calls of concurrent requests
  share one pipelined round trip, one per node on a cluster (``gateway.clients.command_batch``).
- A bucket key expires when its debt is paid off (the bucket is full again), so idle buckets cost
  no memory.
- Per-segment buckets (``s=user``, ``s=property:…``) are capped per org: a sorted set of the
  org's live segment buckets, scored by when each expires, is trimmed and counted in the same
  script; a request that would start a bucket beyond ``segment_cap`` is refused (gate 3, 429)
  and spends nothing. The set expires with its last bucket.
- Fail open: if Redis cannot answer, the request is allowed and the decision says
  ``fail_open=True`` (the caller sets a header); each such decision is counted, and each
  failure of Redis logged. For ``REDIS_COOLDOWN_S`` after Redis was unreachable or timed out,
  for this limiter or another caller sharing its cooldown (the exact cache), ``admit`` does not
  ask it at all (fail open at once, counted ``cooldown``): a Redis that hangs costs requests one
  socket timeout per cooldown, not one each.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.clients.command_batch import script_batch
from gateway.clients.cooldown import Cooldown, redis_cooldown
from gateway.domain import Bucket
from gateway.metrics import access_counters
from gateway.policy.limits import GATE_MONTHLY, GATE_NONE, GATE_SEGMENTS, GATE_USAGE
from shared.metrics import counted
from shared.redis_keys import segments_beside

__all__ = [
    "GCRA_LUA",
    "LIMITS_LUA",
    "Admission",
    "Gates",
    "LimitsCall",
    "RateLimitDecision",
    "RateLimiter",
    "limits_call",
]

log = logging.getLogger(__name__)

_GCRA_PRELUDE = """
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
-- buckets KEYS[1..n], their arguments five each from ARGV[off + 1]
local function decide(n, off)
  local buckets = {}
  local all_allowed = true
  for i = 1, n do
    local o = off + (i - 1) * 5
    local b = {quota = tonumber(ARGV[o + 1]), window = tonumber(ARGV[o + 2]),
               cost = tonumber(ARGV[o + 3]), force = ARGV[o + 4] == '1',
               tick = tonumber(ARGV[o + 5])}
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
  return buckets, all_allowed
end
-- all or nothing: a request denied anywhere spends nothing from any bucket (unless forced)
local function commit(buckets, charge, out)
  for i, b in ipairs(buckets) do
    if charge or b.force then
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
end
"""

GCRA_LUA = (
    _GCRA_PRELUDE
    + """
local buckets, all_allowed = decide(#KEYS, 0)
local out = {now_ms}
commit(buckets, all_allowed, out)
return out
"""
)

LIMITS_LUA = (
    _GCRA_PRELUDE
    + """
-- ARGV[1] = n buckets; KEYS[n+1] org monthly request counter, KEYS[n+2]/[n+3] the key's usage
-- of the day/month; after the bucket arguments: quota (-1: never refuse), counter EXPIREAT,
-- then the day tokens, month tokens, day cost, month cost limits (-1: none)
local n = tonumber(ARGV[1])
local g = 1 + 5 * n
local quota = tonumber(ARGV[g + 1])
local count = tonumber(redis.call('GET', KEYS[n + 1]) or '0')
local d = redis.call('HMGET', KEYS[n + 2], 'tokens', 'cost')
local m = redis.call('HMGET', KEYS[n + 3], 'tokens', 'cost')
local used = {d[1] or '0', m[1] or '0', d[2] or '0', m[2] or '0'}
local gate = 0
if quota >= 0 and count >= quota then gate = 1 end
for i = 1, 4 do
  local limit = tonumber(ARGV[g + 2 + i])
  if gate == 0 and limit >= 0 and tonumber(used[i]) >= limit then gate = 2 end
end
-- KEYS[n+4]: the org's segment set; ARGV[g+7] its cap, ARGV[g+8] how many buckets are
-- segmented, then their indexes
local segs = KEYS[n + 4]
local seg_cap = tonumber(ARGV[g + 7])
local nseg = tonumber(ARGV[g + 8])
if nseg > 0 then
  redis.call('ZREMRANGEBYSCORE', segs, '-inf', now_ms)
  local live = redis.call('ZCARD', segs)
  for j = 1, nseg do
    local k = KEYS[tonumber(ARGV[g + 8 + j])]
    if not redis.call('ZSCORE', segs, k) and redis.call('EXISTS', k) == 0 then
      live = live + 1
      if gate == 0 and live > seg_cap then gate = 3 end
    end
  end
end
local buckets, all_allowed = decide(n, 1)
local admitted = all_allowed and gate == 0
if admitted then
  count = redis.call('INCR', KEYS[n + 1])
  redis.call('EXPIREAT', KEYS[n + 1], ARGV[g + 2])
end
-- usage goes back as strings: Lua numbers would be truncated to integers in the reply
local out = {now_ms, gate, count, used[1], used[2], used[3], used[4]}
commit(buckets, admitted, out)
for j = 1, nseg do
  local k = KEYS[tonumber(ARGV[g + 8 + j])]
  local ttl = redis.call('PTTL', k)
  if ttl > 0 then redis.call('ZADD', segs, now_ms + ttl, k) else redis.call('ZREM', segs, k) end
end
if nseg > 0 then
  local last = redis.call('ZRANGE', segs, -1, -1, 'WITHSCORES')
  if last[2] then redis.call('PEXPIREAT', segs, last[2]) end
end
-- KEYS[n+5], when given: a key read for the caller in the same round trip (the exact response
-- cache's entry), only for an admitted request; the last element of the answer (nil: absent)
if #KEYS > n + 4 then
  table.insert(out, admitted and redis.call('GET', KEYS[n + 5]) or false)
end
return out
"""
)


class RateLimitDecision(msgspec.Struct, frozen=True):
    """One bucket's answer; times in milliseconds."""

    allowed: bool
    remaining: int
    reset_ms: int
    retry_after_ms: int
    fail_open: bool = False
    now_ms: int = 0


@dataclass(frozen=True)
class Gates:
    """The non-rate limits checked in the same script: the org's monthly request counter and the
    key's usage so far. ``monthly_quota`` None never refuses (no quota, or overage allowed) but
    still counts; usage limits None mean "no limit of this kind"."""

    request_counter: str
    counter_expire_at_s: int
    usage_day_key: str
    usage_month_key: str
    segment_set: str = ""
    """The org's set of live segment buckets (``shared.redis_keys``); with ``segment_cap``."""
    segment_cap: int = 10_000
    monthly_quota: int | None = None
    daily_tokens: int | None = None
    monthly_tokens: int | None = None
    daily_cost_usd: float | None = None
    monthly_cost_usd: float | None = None

    def args(self) -> list[str]:
        limits = (self.daily_tokens, self.monthly_tokens, self.daily_cost_usd)
        values = [self.monthly_quota, self.counter_expire_at_s, *limits, self.monthly_cost_usd]
        return ["-1" if v is None else repr(v) for v in values]


class LimitsCall(msgspec.Struct, frozen=True):
    """The limits script's keys and arguments for some buckets and gates, made once: every
    request of one key under one set of policies on one UTC day makes the same call (the limits
    stage keeps it), only ``admit``'s ``peek`` differs."""

    buckets: tuple[Bucket, ...]
    keys: tuple[str, ...]
    args: tuple[str, ...]


def limits_call(buckets: Sequence[Bucket], gates: Gates) -> LimitsCall:
    keys = [b.key for b in buckets]
    segment_set = gates.segment_set or segments_beside(gates.request_counter)
    keys += [gates.request_counter, gates.usage_day_key, gates.usage_month_key, segment_set]
    segmented = [str(i + 1) for i, b in enumerate(buckets) if b.segmented]
    args = [str(len(buckets)), *(str(a) for a in _bucket_args(buckets)), *gates.args()]
    args += [str(gates.segment_cap), str(len(segmented)), *segmented]
    return LimitsCall(tuple(buckets), tuple(keys), tuple(args))


class Gate:
    """Why ``admit`` refused before looking at the rate limits (the values the script returns,
    defined once in ``gateway.policy.limits``)."""

    NONE = GATE_NONE
    MONTHLY_QUOTA = GATE_MONTHLY
    USAGE = GATE_USAGE
    SEGMENTS = GATE_SEGMENTS


class Admission(msgspec.Struct, frozen=True):
    """The limits stage's one answer. ``requests_this_month`` includes this request when it was
    admitted; usage is the key's ``(day tokens, day cost, month tokens, month cost)``."""

    decisions: list[RateLimitDecision]
    gate: int = Gate.NONE
    requests_this_month: int = 0
    usage: tuple[int, float, int, float] = (0, 0.0, 0, 0.0)
    fail_open: bool = False
    peeked: bytes | None = None
    """The value of ``admit``'s ``peek`` key (None: absent, not asked, or not admitted)."""

    @property
    def admitted(self) -> bool:
        return self.gate == Gate.NONE and all(d.allowed for d in self.decisions)


class RateLimiter:
    """Takes units from GCRA buckets in Redis. One instance per process; coroutine-safe."""

    fail_open_count = counted("fail_open")
    cooldown_count = counted("cooldown")
    """Of ``fail_open``: requests let through without asking Redis, in a cooldown."""

    def __init__(self, redis: Redis, *, cooldown: Cooldown | None = None) -> None:
        """``cooldown``: Redis's, shared with its other callers (``redis_cooldown``)."""
        self._redis = redis
        self._script = redis.register_script(GCRA_LUA)
        self._limits = script_batch(redis, redis.register_script(LIMITS_LUA))
        self.counters = access_counters("rate_limiter", "fail_open", "cooldown")
        self.redis_cooldown = cooldown or redis_cooldown()

    async def acquire_many(self, buckets: Sequence[Bucket]) -> list[RateLimitDecision]:
        """All the limits of one request (org, key, per-request policy) in one round trip, all
        or nothing: the request is allowed when every decision is, and a bucket is charged only
        then (or when ``force``). A bucket of ``cost=0`` asks whether it still has room without
        spending anything; the usage recorder charges token and cost buckets afterwards with
        ``force``."""
        try:
            raw: Any = await self._script(keys=[b.key for b in buckets], args=_bucket_args(buckets))
        except (RedisError, OSError) as exc:
            self._log_failure(buckets, exc)
            return self._fail_open(buckets)
        return _decisions(buckets, raw, 1, int(raw[0]))

    async def admit(self, call: LimitsCall, peek: str = "") -> Admission:
        """Everything the limits stage asks of Redis, in one script and one round trip: the
        monthly quota and usage gates, then every rate-limit bucket, all or nothing; an admitted
        request is counted against the monthly quota and charged to its buckets.

        ``peek``: a string key whose value an admitted request will need next (the exact
        response cache's entry), read in the same script so the request makes one round trip
        to Redis instead of two; it must hash to the same slot as the other keys on a cluster.
        """
        buckets = call.buckets
        if self.redis_cooldown.active:
            self.counters.inc("cooldown")
            return Admission(self._fail_open(buckets), fail_open=True)
        keys = (*call.keys, peek) if peek else call.keys
        args = call.args
        try:
            raw: Any = await self._limits(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            self.redis_cooldown.failed(exc)  # Redis down or hung, not an error a request made
            self._log_failure(buckets, exc)
            return Admission(self._fail_open(buckets), fail_open=True)
        usage = (
            int(raw[3]),
            float(raw[5]),
            int(raw[4]),
            float(raw[6]),
        )  # script: tokens d, m; cost d, m
        return Admission(
            decisions=_decisions(buckets, raw, 7, int(raw[0])),
            gate=int(raw[1]),
            requests_this_month=int(raw[2]),
            usage=usage,
            peeked=raw[7 + 4 * len(buckets)] if peek else None,
        )

    @staticmethod
    def _log_failure(buckets: Sequence[Bucket], exc: Exception) -> None:
        log.warning(
            "rate limiter failing open: redis unavailable (%s: %s)",
            type(exc).__name__,
            exc,
            extra={"keys": [b.key for b in buckets]},
        )

    def _fail_open(self, buckets: Sequence[Bucket]) -> list[RateLimitDecision]:
        self.counters.inc("fail_open")
        return [
            RateLimitDecision(
                allowed=True, remaining=b.policy.quota, reset_ms=0, retry_after_ms=0, fail_open=True
            )
            for b in buckets
        ]


def _bucket_args(buckets: Sequence[Bucket]) -> list[int]:
    args: list[int] = []
    for b in buckets:
        tick = b.policy.tick_ms or 1000
        args += [b.policy.quota, b.policy.window_ticks, b.cost, 1 if b.force else 0, tick]
    return args


def _decisions(
    buckets: Sequence[Bucket], raw: Any, start: int, now_ms: int
) -> list[RateLimitDecision]:
    decisions = []
    for i, b in enumerate(buckets):
        tick = b.policy.tick_ms or 1000
        first = start + 4 * i
        allowed, remaining, reset, retry = (int(v) for v in raw[first : first + 4])
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
