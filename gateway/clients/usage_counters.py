"""Usage counters in Redis: an org's requests this month, a key's tokens and cost per day and
month, and when each key was last used. Written after responses (``UsageRecorder``), checked by
the limits script, read by admins.

Invariants:
- Key names come from ``shared.redis_keys``; on a Redis Cluster the counters the limits script
  reads carry the org as a hash tag, so a key's usage keys need its org there.
- Counters are per UTC period and expire a while after it ends (``usage_expiry_s``). One script
  call adds a batch of entries (``ADD_LUA``: ``HINCRBY``/``HINCRBYFLOAT`` + ``EXPIREAT`` per
  key, day and month), one per org on a cluster (a script's keys share one slot; the orgs' calls
  go as one pipeline per master, ``gateway.clients.command_batch``); one pipelined round trip
  reads them.
- Each entry is counted once, however often it is sent: the script sets the entry's bit in its
  ``usage_seen`` bitmap (its gateway process, org, and block of ``SEEN_BLOCK`` entry numbers)
  and adds only entries whose bit was clear. A batch whose answer was lost (Redis hung, then
  ran it) and that was also spooled, or a spooled batch replayed again after a drainer died
  before recording its offset, adds nothing the second time. A bitmap lives ``SEEN_TTL_S``
  after its last use: a copy replayed later than that is counted again if Redis had taken the
  first. Bits are dense (entry numbers count up per process and org): 8 KiB per 65,536
  requests of one org.
- The org's monthly request counter is incremented only by the limits script (an admitted
  request); this module names it and reads it.
- ``<p>:key_last_used`` is a hash key id → unix ms of its latest request with usage, written
  with the usage counters (batched, after responses), read by admins only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from redis.asyncio import Redis

from gateway.clients.command_batch import script_batch
from gateway.clients.stored_fields import aw
from gateway.domain import UsageEntry
from gateway.policy.keys import Usage, day_period, month_period, utc_day
from shared.redis_client import is_cluster
from shared.redis_keys import RedisKeys

__all__ = ["SEEN_BLOCK", "SEEN_TTL_S", "UsageCounters", "add_usage_call", "usage_expiry_s"]

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
    return _period_end_of_day(utc_day(now_ms), monthly)


SEEN_BLOCK = 1 << 16
"""Entry numbers per ``usage_seen`` bitmap (8 KiB when full)."""

SEEN_TTL_S = 86_400
"""A bitmap lives this long after its last use: a spooled copy is replayed within seconds of
Redis answering again while a gateway runs on its volume; a day covers a volume whose gateways
were all down meanwhile."""

ADD_LUA = """
-- KEYS: the usage_seen bitmaps, then the counters, a (day, month) pair per key and day, then
-- key_last_used when ARGV[4] > 0.
-- ARGV: the bitmaps' TTL, #bitmaps, #counters, #last-used pairs, each counter's EXPIREAT, the
-- (key id, ms) last-used pairs, then five per entry: its bitmap (1-based; 0: no identity,
-- always added), its bit, its day counter (1-based among the counters; the month is the next),
-- tokens, cost.
local nb, nc, nl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens, cost = {}, {}
local added = 0
for i = 5 + nc + 2 * nl, #ARGV, 5 do
  local b = tonumber(ARGV[i])
  if b == 0 or redis.call('SETBIT', KEYS[b], ARGV[i + 1], 1) == 0 then
    local c = tonumber(ARGV[i + 2])
    tokens[c] = (tokens[c] or 0) + tonumber(ARGV[i + 3])
    cost[c] = (cost[c] or 0) + tonumber(ARGV[i + 4])
    added = added + 1
  end
end
for b = 1, nb do redis.call('EXPIRE', KEYS[b], ARGV[1]) end
for c, t in pairs(tokens) do
  for k = c, c + 1 do
    local key = KEYS[nb + k]
    redis.call('HINCRBY', key, 'tokens', string.format('%d', t))
    if cost[c] ~= 0 then
      redis.call('HINCRBYFLOAT', key, 'cost', string.format('%.17g', cost[c]))
    end
    redis.call('EXPIREAT', key, ARGV[4 + k])
  end
end
if nl > 0 then
  redis.call('HSET', KEYS[nb + nc + 1], unpack(ARGV, 5 + nc, 4 + nc + 2 * nl))
end
return added
"""


def _usage_keys(keys: RedisKeys, key_id: str, now_ms: int, org_id: str) -> tuple[str, str]:
    day, month = f"d:{day_period(now_ms)}", f"m:{month_period(now_ms)}"
    return (
        keys.key_usage(key_id, day, org_id=org_id),
        keys.key_usage(key_id, month, org_id=org_id),
    )


def add_usage_call(
    keys: RedisKeys, entries: Iterable[UsageEntry], last_used_ms: Mapping[str, int] | None = None
) -> tuple[list[str], list[str | int | float]]:
    """``ADD_LUA``'s keys and arguments for ``entries`` (one org's on a cluster). Entries of
    one key and day share their counters, so a batch of one busy key is one set of increments
    however many requests it holds; the sums are taken in the script, over the entries not
    counted before. ``last_used_ms`` is written to ``key_last_used`` by the same call (one node
    only: that hash is in no org's slot)."""
    seen: dict[tuple[str, str, int], int] = {}
    counters: dict[tuple[str, str, int], int] = {}
    counter_keys: list[str] = []
    expire: list[int] = []
    rows: list[str | int | float] = []
    for e in entries:
        group = (e.key_id, e.org_id, utc_day(e.now_ms))
        c = counters.get(group)
        if c is None:
            c = counters[group] = len(counter_keys) + 1
            counter_keys.extend(_usage_keys(keys, e.key_id, e.now_ms, e.org_id))
            expire.extend((usage_expiry_s(e.now_ms, False), usage_expiry_s(e.now_ms, True)))
        if e.seq < 0:
            rows.extend((0, 0, c, e.tokens, e.cost_usd or 0))
            continue
        block = (e.org_id, e.origin, e.seq // SEEN_BLOCK)
        b = seen.get(block)
        if b is None:
            b = seen[block] = len(seen) + 1
        rows.extend((b, e.seq % SEEN_BLOCK, c, e.tokens, e.cost_usd or 0))
    bitmaps = [keys.usage_seen(org, origin, n) for org, origin, n in seen]
    last_used = [x for pair in (last_used_ms or {}).items() for x in pair]
    return [*bitmaps, *counter_keys, *([keys.key_last_used] if last_used else [])], [
        SEEN_TTL_S,
        len(bitmaps),
        len(counter_keys),
        len(last_used) // 2,
        *expire,
        *last_used,
        *rows,
    ]


class UsageCounters:
    """Names, writes and reads of the usage counters."""

    def __init__(self, redis: Redis, *, prefix: str = "floopy") -> None:
        self._redis = redis
        self.cluster = is_cluster(redis)
        self._k = RedisKeys(prefix, cluster=self.cluster)
        self._add = redis.register_script(ADD_LUA)
        self._batch = script_batch(redis, self._add)
        """On a cluster, the calls of a batch's orgs: one pipeline per master."""

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
        return _usage_keys(self._k, key_id, now_ms, org_id)

    async def add(
        self,
        entries: Sequence[UsageEntry],
        *,
        last_used_ms: Mapping[str, int] | None = None,
        offset: tuple[str, int, int] | None = None,
    ) -> int:
        """Add the entries' spend (each counted once: see the invariants); how many were new.
        ``last_used_ms`` goes to ``key_last_used``. ``offset`` (key, value, TTL) is set with
        them, in one MULTI/EXEC on one node (an outage-spool file's progress: entries of older
        gateways carry no identity, so only the transaction keeps them from counting twice).

        One round trip on one node (the script call), not a pipeline with the script in it:
        redis-py checks a pipeline's scripts with ``SCRIPT EXISTS`` first, a round trip more."""
        if self.cluster:
            by_org: dict[str, list[UsageEntry]] = {}
            for e in entries:
                by_org.setdefault(e.org_id, []).append(e)
            calls = [add_usage_call(self._k, group) for group in by_org.values()]
            added = sum(int(n) for n in await asyncio.gather(*(self._batch(*c) for c in calls)))
            if last_used_ms or offset:
                async with self._redis.pipeline(transaction=False) as pipe:
                    if last_used_ms:
                        pipe.hset(self._k.key_last_used, mapping=dict(last_used_ms))
                    if offset is not None:
                        pipe.set(offset[0], offset[1], ex=offset[2])
                    await pipe.execute()
            return added
        keys, args = add_usage_call(self._k, entries, last_used_ms)
        if offset is None:
            return int(await self._add(keys=keys, args=args))
        async with self._redis.pipeline(transaction=True) as pipe:
            await self._add(keys=keys, args=args, client=pipe)
            pipe.set(offset[0], offset[1], ex=offset[2])
            replies = await pipe.execute()
        return int(replies[0])

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
