"""Records leave the gateway through here: a ``KEEP`` drain (``gateway.clients.drain``) of
encoded records into Redis streams.

Invariants:
- ``submit`` is synchronous and O(1): a request never awaits Redis and never fails because of it.
- The buffer holds at most ``buffer_records`` encoded records; when full, new records are
  dropped, counted in ``dropped`` and logged (the drain's invariants).
- One background task per worker drains the buffer oldest first, a batch per round trip: one
  ``EVALSHA`` of a tiny Lua script that XADDs each record (no MAXLEN: the ingester trims what it
  has acknowledged). Why not a pipeline of XADDs: redis-py packs and parses every command in
  Python, which cost ≈35 µs of the worker's CPU per XADD, five per request (profiled); one
  script call per batch costs the same once. Records leave the buffer only after Redis
  answered; on a Redis error they stay and the task retries on the ``shared.backoff``
  schedule (50 ms doubling up to ``retry_max_s``).
- Fences: a call whose answer was lost (a timeout, a Redis killed before it replied) may have
  run, or may run later (a hung Redis runs what waited in its socket). So every record
  carries a fence: a key (per stream, publisher and *epoch*) and a sequence number; the script
  adds a record only if its number is above the fence's, then raises the fence. Each failure
  starts a new epoch, so the records of an epoch reach Redis in their order whatever happens
  to them (retried from the buffer, or spooled and drained by any worker): a copy Redis
  already took is skipped (counted as ``deduplicated``), never added twice, and no record is
  skipped that Redis did not take. Fences live ``FENCE_TTL_S``; a spooled record drained
  later than that may be added twice.
- With an outage spool (``gateway.clients.outage_spool``): once Redis has been unreachable for
  ``spool.grace_s``, the buffer is written to disk every ``spool.interval_s`` (fsynced, then
  let go), so a long outage neither fills memory nor loses records with the worker. When Redis
  answers again, the same task drains the spool back into the streams (a batch and its file
  offset in one script call, so a drainer resumes after the batches Redis took), spooled
  usage included. Every record is spooled with its fence (``_fenced``) and drained into its
  own stream through it, and spooling starts a new epoch (a record sent live after it must
  not raise the spooled records' fences): a drained batch whose answer was lost, which a hung
  Redis may run after the next pass read the file's offset, adds nothing the second time.
- ``stop`` flushes what it can within ``flush_deadline_s`` (at once to the spool when Redis is
  down); what is left is logged and counted.
- Shards: a record goes to the shard of its routing key (the request id, ``shared.streams``).
  On a Redis Cluster a script may only touch keys of one slot, so a batch is split into one
  script call per slot, sent concurrently; the records of a call that failed go back to the
  front of the buffer and are retried, the others are done (a master down delays only its own
  shards' records). On a cluster a drained batch and its file offset are two or more calls
  (the offset key is in another slot); a drainer that dies between them sends the batch
  again, and the fences keep the copies out. A fence key is hash-tagged with its stream, so
  it shares the stream's slot. A line of a gateway from before fences is drained into shard
  0 unfenced.
- Counters (``shared.metrics``): what ``stats`` shows is what ``/metrics`` exports.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Sequence
from functools import partial
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.clients.drain import Drain, Outlet, Policy, Undelivered
from gateway.clients.outage_spool import OFFSET_TTL_S, Deliver, OutageSpool
from gateway.metrics import RECORDS_BUFFERED, publisher_counters
from gateway.policy.outage import Outage
from gateway.settings import PublisherSettings
from shared.backoff import Backoff
from shared.metrics import counted
from shared.redis_client import is_cluster, slot_of
from shared.redis_keys import RedisKeys
from shared.streams import RECORD_FIELD, Sink, shard_of, stream_keys

__all__ = ["Publisher", "spooled_record"]

log = logging.getLogger(__name__)

XADD_BATCH_LUA = """
local streams = tonumber(ARGV[1])
local seen, top = {}, {}
local added = 0
for i = 3, #ARGV, 4 do
  local f = tonumber(ARGV[i + 1])
  local fresh = f == 0
  if not fresh then
    local seq = tonumber(ARGV[i + 2])
    if seen[f] == nil then
      seen[f] = tonumber(redis.call('GET', KEYS[streams + f]) or '0')
    end
    fresh = seq > seen[f]
    if fresh then
      seen[f] = seq
      top[f] = ARGV[i + 2]
    end
  end
  if fresh then
    redis.call('XADD', KEYS[tonumber(ARGV[i])], '*', ARGV_FIELD, ARGV[i + 3])
    added = added + 1
  end
end
for f, seq in pairs(top) do
  redis.call('SET', KEYS[streams + f], seq, 'EX', FENCE_TTL)
end
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[#KEYS], ARGV[2], 'EX', OFFSET_TTL)
end
return added
"""
"""KEYS: the streams of the batch, then its fence keys, then (draining the spool) the file's
offset key. ARGV: the number of streams, the file's new offset (or ''), then per record in
order: its stream's index, its fence's index (0: none), its sequence number, its bytes. The
records the fences let in are added and the offset set in one (atomic) call; returns how many
were added."""

FENCE_TTL_S = OFFSET_TTL_S
"""A fence is kept as long as a half-sent spool file's offset: as long as the spool may hold
a record it guards."""

_FIRST_RETRY_S = 0.05

_Entry = tuple[str, bytes, str, int]
"""A buffered record: its stream key (sink and shard), its encoded bytes, its fence key and
its sequence number (``""`` and 0: unfenced, a line spooled by a gateway before fences)."""


class _FencedLine(msgspec.Struct):
    """A spooled record with its fence (a copy Redis took already has raised it): a JSON line
    like any other (``{"fence":…,"stream":…,"seq":…,"record":{…}}``), told from a bare
    record, which a gateway before fences spooled, by its first key (a record's is
    ``schema_version``)."""

    fence: str
    stream: str
    seq: int
    record: msgspec.Raw


_FENCED = b'{"fence":'
_fenced_lines = msgspec.json.Decoder(_FencedLine)


class Publisher(Outlet[_Entry]):
    """The outlet of a ``KEEP`` drain of (stream key, encoded record) entries, and the
    keeper of the outage spool those entries go to while Redis is down."""

    published = counted("published")
    deduplicated = counted("deduplicated")
    dropped = counted("dropped")
    failures = counted("failures")
    spooled = counted("spooled")
    unspooled = counted("unspooled")
    spool_failures = counted("spool_failures")

    expected_errors = (RedisError, OSError)

    def __init__(
        self,
        redis: Redis,
        settings: PublisherSettings,
        *,
        prefix: str = "floopy",
        spool: OutageSpool | None = None,
        shards: int = 1,
    ) -> None:
        self._redis = redis
        self._settings = settings
        self._shards = shards
        self._keys = {sink: stream_keys(sink, prefix, shards) for sink in Sink}
        self._sinks = {key: sink for sink, keys in self._keys.items() for key in keys}
        self._by_slot = is_cluster(redis)
        self._xadd_batch = redis.register_script(
            XADD_BATCH_LUA.replace("ARGV_FIELD", repr(RECORD_FIELD.decode()))
            .replace("OFFSET_TTL", str(OFFSET_TTL_S))
            .replace("FENCE_TTL", str(FENCE_TTL_S))
        )
        self._redis_keys = RedisKeys(prefix)
        self._id = uuid.uuid4().hex[:16]
        self._epoch = 0
        self._fences: dict[str, str] = {}
        self._seq = itertools.count(1)
        self._new_epoch()
        self._spool = spool
        self._outage = Outage(spool.settings.grace_s if spool else 0.0)
        self.idle_check_s = spool.settings.check_interval_s if spool else None
        self.drains: dict[str, Deliver] = {
            sink.value: partial(self._deliver_spooled, sink) for sink in Sink
        }
        """Spool names this task drains and how; the usage recorder adds ``usage``."""
        self.counters = publisher_counters()
        self.last_error = ""
        self._drain: Drain[_Entry] = Drain(
            self,
            self.counters,
            name="publisher",
            policy=Policy.KEEP,
            capacity=settings.buffer_records,
            batch_items=settings.batch_records,
            linger_s=settings.linger_s,
            backoff=Backoff(_FIRST_RETRY_S, settings.retry_max_s),
            gauge=RECORDS_BUFFERED,
        )

    @property
    def buffered(self) -> int:
        return len(self._drain)

    def stats(self) -> dict[str, Any]:
        return {
            "buffered": self.buffered,
            "published": self.published,
            "deduplicated": self.deduplicated,
            "dropped": self.dropped,
            "failures": self.failures,
            "last_error": self.last_error,
            "spool": None
            if self._spool is None
            else {
                "spooled": self.spooled,
                "drained": self.unspooled,
                "failures": self.spool_failures,
                "pending": self._spool.pending,
            },
        }

    def submit(self, sink: Sink, payload: bytes, routing_key: str = "") -> bool:
        """Queue one encoded record for the shard of ``routing_key`` (its request id); False
        (and counted) when the buffer is full."""
        key = self._keys[sink][shard_of(routing_key, self._shards)]
        return self._drain.submit((key, payload, self._fences[key], next(self._seq)))

    def _new_epoch(self) -> None:
        """A call that failed may still run, so the fences of its records must never see a
        later record: records submitted from now on get fences of their own."""
        self._epoch += 1
        self._fences = {
            key: self._redis_keys.publish_fence(key, self._id, self._epoch) for key in self._sinks
        }

    def start(self) -> None:
        self._drain.start()

    async def stop(self) -> None:
        """Stop the drain task, then flush what Redis takes before the deadline (straight to
        the spool when Redis is down); what is left is lost, logged and counted."""
        await self._drain.stop(self._settings.flush_deadline_s)

    async def send(self, batch: list[_Entry]) -> Undelivered[_Entry] | None:
        """XADD a batch: one call per slot on a cluster, else one call."""
        groups = _by_slot(batch) if self._by_slot else [batch]
        if len(groups) == 1:
            await self._xadd_group(batch)
            self.counters.inc("published", len(batch))
            return None
        results = await asyncio.gather(
            *(self._xadd_group(group) for group in groups), return_exceptions=True
        )
        failed = [
            item
            for group, result in zip(groups, results, strict=True)
            if isinstance(result, BaseException)
            for item in group
        ]
        self.counters.inc("published", len(batch) - len(failed))
        error = next((r for r in results if isinstance(r, BaseException)), None)
        return None if error is None else Undelivered(failed, error)

    async def _xadd_group(self, group: list[_Entry], offset: tuple[str, int] | None = None) -> None:
        """One script call: the records of ``group`` their fences let in (and the spool file's
        ``offset``, atomically with them)."""
        streams: dict[str, int] = {}
        fences: dict[str, int] = {}
        args: list[int | bytes | str] = [0, ""]
        for key, payload, fence, seq in group:
            args += (
                streams.setdefault(key, len(streams) + 1),
                fences.setdefault(fence, len(fences) + 1) if fence else 0,
                seq,
                payload,
            )
        args[0] = len(streams)
        keys = [*streams, *fences]
        if offset is not None:
            keys.append(offset[0])
            args[1] = offset[1]
        added = int(await self._xadd_batch(keys=keys, args=args))
        if added < len(group):
            self.counters.inc("deduplicated", len(group) - added)

    async def on_failure(self, failure: Undelivered[_Entry]) -> None:
        exc = failure.error
        self._new_epoch()
        self.counters.inc("failures")
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._outage.failed(time.monotonic())
        if self.failures == 1 or self.failures % 50 == 0:
            log.warning(
                "publishing to Redis failed (%d failures, %d buffered): %s",
                self.failures,
                self.buffered,
                self.last_error,
            )

    def recovered(self) -> None:
        self._outage.recovered()

    def has_backlog(self) -> bool:
        return self._spool is not None and self._spool.pending

    async def check_backlog(self) -> None:
        """An idle worker looks for files other workers left."""
        if self._spool is not None:
            self._spool.pending = await asyncio.to_thread(self._spool.has_files)

    async def send_backlog(self) -> None:
        if self._spool is not None and self._spool.pending:
            self.counters.inc("unspooled", await self._spool.drain(self._redis, self.drains))

    async def wait_out(self, delay_s: float, drain: Drain[_Entry]) -> None:
        """Wait ``delay_s`` before the next try; meanwhile, past the grace, move the buffer to
        disk every ``interval_s``."""
        end = time.monotonic() + delay_s
        while not drain.stopping:
            if self._spool is not None and self._outage.spooling(time.monotonic()):
                await self.spool_buffer()
            left = end - time.monotonic()
            if left <= 0:
                return
            step = self._spool.settings.interval_s if self._spool else left
            await asyncio.sleep(min(left, step))

    def hold_at_stop(self) -> bool:
        return self._spool is not None and self._outage.down

    async def left_at_stop(self, drain: Drain[_Entry]) -> None:
        self._new_epoch()  # a send cut at the deadline may have reached Redis
        if self._spool is not None:
            spooled = await self.spool_buffer()
            log.warning("shutdown: %d records spooled to disk for the next worker", spooled)
        if left := len(drain):
            log.error(
                "shutdown: %d records could not be published before the deadline and are lost",
                left,
            )
            self.counters.inc("dropped", left)

    async def spool_buffer(self) -> int:
        """Write what is buffered to the spool (fsynced) and let it go; a sink whose write
        failed keeps its records in the buffer. Returns the records spooled. A cancelled
        caller still waits for a write under way, so what reached disk always leaves memory."""
        if self._spool is None or not len(self._drain):
            return 0
        batch = self._drain.held()
        self._new_epoch()  # a later record sent live must not raise these records' fences
        by_sink: dict[Sink, list[bytes]] = {}
        for key, payload, fence, seq in batch:
            by_sink.setdefault(self._sinks[key], []).append(_fenced(key, fence, seq, payload))
        write = asyncio.ensure_future(asyncio.to_thread(self._append_all, by_sink))
        try:
            failed = await asyncio.shield(write)
        except asyncio.CancelledError:
            self._let_go(batch, await write)
            raise
        return self._let_go(batch, failed)

    def _append_all(self, by_sink: dict[Sink, list[bytes]]) -> set[Sink]:
        """Blocking: one fsynced append per sink; the sinks that failed."""
        assert self._spool is not None
        failed: set[Sink] = set()
        for sink, payloads in by_sink.items():
            try:
                self._spool.append(sink.value, payloads)
            except OSError as exc:
                failed.add(sink)
                self.counters.inc("spool_failures")
                log.error("could not spool %d %s records: %s", len(payloads), sink, exc)
        return failed

    def _let_go(self, batch: list[_Entry], failed: set[Sink]) -> int:
        kept = [entry for entry in batch if self._sinks[entry[0]] in failed]
        self._drain.release(len(batch), kept)
        self.counters.inc("spooled", len(batch) - len(kept))
        return len(batch) - len(kept)

    async def _deliver_spooled(
        self, sink: Sink, payloads: list[bytes], offset_key: str, end_offset: int
    ) -> None:
        entries = [_unspooled(line, self._keys[sink]) for line in payloads]
        if self._by_slot:  # the offset key is in another slot: calls apart (see the invariants)
            for group in _by_slot(entries):
                await self._xadd_group(group)
            await self._redis.set(offset_key, end_offset, ex=OFFSET_TTL_S)
            return
        await self._xadd_group(entries, (offset_key, end_offset))


def _fenced(key: str, fence: str, seq: int, payload: bytes) -> bytes:
    return msgspec.json.encode(_FencedLine(fence, key, seq, msgspec.Raw(payload)))


def _unspooled(line: bytes, streams: Sequence[str]) -> _Entry:
    """A spooled line as an entry for the sink's ``streams`` (shard 0 first): a fenced record
    goes back to its stream through its fence; a bare one (spooled before fences), or one
    whose stream this gateway no longer writes (fewer shards, another prefix: nobody may read
    it), into shard 0 unfenced."""
    if line.startswith(_FENCED):
        try:
            fenced = _fenced_lines.decode(line)
        except msgspec.MsgspecError as exc:  # sent as it is: the ingester sets it aside
            log.warning("outage spool: a malformed fenced line sent unfenced: %s", exc)
            return (streams[0], line, "", 0)
        line = bytes(fenced.record)
        if fenced.stream in streams:
            return (fenced.stream, line, fenced.fence, fenced.seq)
    return (streams[0], line, "", 0)


def spooled_record(line: bytes) -> bytes:
    """The record in a line of the outage spool, fenced or not."""
    return _unspooled(line, [""])[1]


def _by_slot(batch: list[_Entry]) -> list[list[_Entry]]:
    groups: dict[int, list[_Entry]] = {}
    for item in batch:
        groups.setdefault(slot_of(item[0]), []).append(item)
    return list(groups.values())
