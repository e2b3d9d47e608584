"""The gateway's outage spool: records and usage that could not reach Redis wait on local disk.

Invariants:
- Files are ``shared.spool`` files, one spool name per sink plus ``usage``, in one directory
  that every worker of a host shares: an append is one write then ``fsync`` (and an ``fsync``
  of the directory when it creates a file) before it returns, under the name's writer
  ``flock``, so workers never interleave lines; files rotate within ``cap_bytes x
  generations`` and a dropped generation is counted and logged at ERROR.
- fsync policy: memory is let go only after the fsync. What is not yet on disk when a worker
  is SIGKILLed is lost: records of the outage's first ``grace_s`` and of the last
  ``interval_s`` (see ``SpoolSettings``); a graceful stop spools everything first.
- One drainer per spool name per directory: an exclusive, non-blocking ``flock`` on
  ``<dir>/<name>.draining`` held for one pass and released by the kernel when its worker dies,
  so any worker on the volume — the one that spooled, a sibling, or the next one started —
  drains what is there, and never two at once.
- A pass seals the files (``shared.spool.seal``), then sends them oldest first, a batch at a
  time. Each batch and the file's new offset reach Redis in one atomic call (the deliverer's
  Lua script or MULTI/EXEC) under ``<prefix>:gateway-spool:<volume id>:<file>``, so a
  drainer that dies anywhere is resumed after the batches Redis took, nothing skipped. The
  offset alone cannot stop a copy: a batch given up on (Redis hung) may run after the next
  pass read the offset and sent it again. What makes that copy add nothing is the
  deliverer's: the records' fences, the usage entries' seen bits. A file is deleted once
  sent, then its offset key (which otherwise expires after ``OFFSET_TTL_S``).
- ``<dir>/volume-id`` is a random id written once, so two volumes draining into one Redis
  never share offset keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path

from redis.asyncio import Redis

from gateway.settings import SpoolSettings
from shared.durable import fsync_directory
from shared.redis_keys import RedisKeys
from shared.spool.reader import SpoolBatch, read_batches
from shared.spool.writer import SpoolWriter, pending_files, seal

__all__ = ["OFFSET_TTL_S", "USAGE", "Deliver", "OutageSpool"]

log = logging.getLogger(__name__)

USAGE = "usage"
"""The spool name of usage counters (the others are the sinks')."""

OFFSET_TTL_S = 7 * 86_400
"""A half-sent file's offset is kept this long; a file resumed later starts over."""

Deliver = Callable[[list[bytes], str, int], Awaitable[None]]
"""``deliver(payloads, offset_key, end_offset)``: send the payloads and set ``offset_key`` to
``end_offset`` in one atomic Redis call; raise if Redis did not take them."""


def _volume_id(directory: Path) -> str:
    path = directory / "volume-id"
    with contextlib.suppress(FileNotFoundError):
        if text := path.read_text().strip():
            return text
    tmp = directory / f"volume-id.{os.getpid()}.{uuid.uuid4().hex}"
    with tmp.open("w") as f:
        f.write(uuid.uuid4().hex)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)  # first writer wins; the others read its id
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    fsync_directory(directory)
    return path.read_text().strip()


def _read_batch(path: Path, start: int, records: int) -> SpoolBatch | None:
    """The batch at ``start``; the generator (and its file) is finalised on return, so a drain
    cancelled between batches holds nothing open."""
    return next(read_batches(path, records, start_offset=start), None)


def _unlink(path: Path) -> None:
    path.unlink()
    fsync_directory(path.parent)


class OutageSpool:
    """One worker's handle on the spool directory. Appends are blocking (call them in a
    thread); ``drain`` runs on the event loop and hops to threads for file work."""

    def __init__(self, settings: SpoolSettings, names: Iterable[str], *, prefix: str) -> None:
        if settings.dir is None:
            raise ValueError("the outage spool needs settings.dir")
        self.settings = settings
        self.directory = settings.dir
        self.directory.mkdir(parents=True, exist_ok=True)
        self._writers = {
            name: SpoolWriter(
                self.directory,
                name,
                cap_bytes=settings.cap_bytes,
                generations=settings.generations,
            )
            for name in names
        }
        self._keys = RedisKeys(prefix)
        self._volume_id = _volume_id(self.directory)
        self.pending = self.has_files()
        """Something may wait on disk: set by appends and by ``has_files``, cleared by a pass."""

    @classmethod
    def open(cls, settings: SpoolSettings, names: Iterable[str], *, prefix: str) -> OutageSpool:
        spool = cls(settings, names, prefix=prefix)
        if spool.pending:
            log.warning("outage spool %s holds records from earlier; draining", spool.directory)
        return spool

    def append(self, name: str, payloads: list[bytes]) -> None:
        """Blocking: returns once ``payloads`` are fsynced."""
        self._writers[name].append(payloads)
        self.pending = True

    def has_files(self) -> bool:
        """Blocking (a directory listing): whether any spool name has files to send."""
        return any(pending_files(self.directory, name) for name in self._writers)

    def offset_key(self, path: Path) -> str:
        return self._keys.spool_offset(self._volume_id, path.name)

    async def drain(self, redis: Redis, deliverers: Mapping[str, Deliver]) -> int:
        """One pass over every name with a deliverer; the payloads sent. Redis errors
        propagate (the files stay, resumable); a name another worker drains is skipped."""
        self.pending = False
        sent = 0
        try:
            for name, deliver in deliverers.items():
                sent += await self._drain_name(name, redis, deliver)
        except BaseException:
            self.pending = True
            raise
        if sent:
            log.info("outage spool: %d spooled payloads sent to redis", sent)
        return sent

    async def _drain_name(self, name: str, redis: Redis, deliver: Deliver) -> int:
        fd = os.open(self.directory / f"{name}.draining", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # another worker is draining it
            files = await asyncio.to_thread(seal, self.directory, name)
            sent = 0
            for path in files:
                sent += await self._drain_file(path, redis, deliver)
            return sent
        finally:
            os.close(fd)  # releases the flock

    async def _drain_file(self, path: Path, redis: Redis, deliver: Deliver) -> int:
        key = self.offset_key(path)
        start = int(await redis.get(key) or 0)
        if start:
            log.info("outage spool: resuming %s at byte %d", path.name, start)
        sent, records = 0, self.settings.batch_records
        while (batch := await asyncio.to_thread(_read_batch, path, start, records)) is not None:
            await deliver(batch.payloads, key, batch.end_offset)
            sent += len(batch.payloads)
            start = batch.end_offset
        await asyncio.to_thread(_unlink, path)
        await redis.delete(key)
        return sent
