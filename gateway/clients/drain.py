"""One drain: a bounded in-memory buffer that one background task empties in batches, so a
request never awaits the store behind it. Records (``gateway.clients.publisher``), usage
(``gateway.clients.usage``) and the exact cache tier's writes (``gateway.clients.response_cache``)
leave the gateway through these, differing only in what a failed batch becomes: the ``Policy``.

Invariants:
- ``submit`` is synchronous and O(1). Beyond ``capacity`` a new item is refused, counted
  (``dropped``) and logged, at most one line per ``DROP_LOG_EVERY_S``.
- One task per drain sends the oldest ``batch_items`` at a time, in order. It wakes on the
  first item and lingers ``linger_s`` so that one round trip carries many.
- Items leave the buffer only after the outlet's ``send`` returned (a send cancelled midway
  leaves them where they were); only the drain's task, or ``stop`` once that task is done,
  takes from the buffer, so what was sent is always its head.
- ``KEEP``: what was not delivered goes back to the front, in order, and the task waits the
  ``backoff`` schedule (``shared.backoff``) before the next try; the outlet's ``wait_out`` may
  meanwhile move the buffer elsewhere (the publisher's outage spool). Nothing leaves memory
  undelivered except by the outlet or at ``stop``.
- ``DROP``: a batch leaves the buffer once tried; what was not delivered is the outlet's
  (``on_failure``: the usage recorder spools it or counts it lost) and the next batch follows at
  once.
- ``stop`` ends the task (waiting at most the deadline for it), sends what it can within the
  deadline, then gives what is left to the outlet's ``left_at_stop`` (spool it, or count and log
  it as lost): nothing is let go silently.
- ``stop`` never cancels a send in flight: the store may have taken the batch already, and a
  cancelled send leaves it buffered, so the flush would send it a second time. A task waiting
  (idle, lingering, backing off) is cancelled; a task sending is let finish, up to the deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Generic, TypeVar

from shared.backoff import Backoff

if TYPE_CHECKING:
    from prometheus_client import Gauge

    from shared.metrics import CounterSet

__all__ = ["DROP_LOG_EVERY_S", "Drain", "Outlet", "Policy", "Undelivered"]

log = logging.getLogger(__name__)

T = TypeVar("T")

DROP_LOG_EVERY_S = 10.0

_STOP_RETRY_S = 0.1
"""At ``stop``, between tries of a ``KEEP`` batch: the deadline is short, the backoff is not."""


class Policy(StrEnum):
    KEEP = "keep"
    """Undelivered items stay buffered and are retried after a backoff (records: losing one
    loses a request's log line)."""
    DROP = "drop"
    """Undelivered items leave the buffer for the outlet's ``on_failure`` (usage: a counter
    increment retried later lands in the wrong window, so it is spooled or counted lost)."""


@dataclass(frozen=True, slots=True)
class Undelivered(Generic[T]):
    """Items of a batch the store did not take (in order), and why."""

    items: list[T]
    error: BaseException


class Outlet(ABC, Generic[T]):
    """Where a drain's batches go. ``send`` and ``on_failure`` are required; the other hooks are for
    an outlet that also keeps a backlog outside memory (the publisher's outage spool)."""

    expected_errors: tuple[type[BaseException], ...] = (OSError,)
    """Failures of the store's client that are an outage, not a bug (logged without a trace)."""

    @abstractmethod
    async def send(self, batch: list[T]) -> Undelivered[T] | None:
        """Deliver ``batch`` in order; what was not delivered, or ``None``. Raising means
        nothing was delivered."""

    @abstractmethod
    async def on_failure(self, failure: Undelivered[T]) -> None:
        """Count and log a failure. ``KEEP``: the items are back in the buffer (none for a
        failed ``send_backlog``); ``DROP``: they left it, and are the outlet's now."""

    @abstractmethod
    async def left_at_stop(self, drain: Drain[T]) -> None:
        """At ``stop``, after the deadline: whatever ``drain`` still holds must be moved or
        counted (``Drain.release``); anything left after this is cleared."""

    idle_check_s: float | None = None
    """While idle, call ``check_backlog`` this often (``None``: sleep until an item comes)."""

    def has_backlog(self) -> bool:
        return False

    async def check_backlog(self) -> None:
        """Look for backlog that appeared without this process (another worker's files)."""

    async def send_backlog(self) -> None:
        """After a batch: send some backlog; raise if the store did not take it."""

    def recovered(self) -> None:
        """A round succeeded after failures."""

    async def wait_out(self, delay_s: float, drain: Drain[T]) -> None:
        """Wait before the next try (``KEEP``)."""
        await asyncio.sleep(delay_s)

    def hold_at_stop(self) -> bool:
        """At ``stop``: skip sending, the store is known to be down (go to ``left_at_stop``)."""
        return False


class Drain(Generic[T]):
    def __init__(
        self,
        outlet: Outlet[T],
        counters: CounterSet,
        *,
        name: str,
        policy: Policy,
        capacity: int,
        batch_items: int,
        linger_s: float,
        backoff: Backoff | None = None,
        gauge: Gauge | None = None,
    ) -> None:
        self.policy = policy
        self._outlet = outlet
        self._counters = counters
        self._name = name
        self._capacity = capacity
        self._batch_items = batch_items
        self._linger_s = linger_s
        self._backoff = backoff or Backoff(0.05, 2.0)
        self._gauge = gauge
        self._buffer: deque[T] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sending = False
        self._stopping = False
        self._last_drop_log = 0.0

    def __len__(self) -> int:
        return len(self._buffer)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def submit(self, item: T) -> bool:
        """Queue ``item``; False (counted, logged) when the buffer is full."""
        if len(self._buffer) >= self._capacity:
            self._counters.inc("dropped")
            self._log_drop()
            return False
        self._buffer.append(item)
        if not self._wake.is_set():
            self._wake.set()
        return True

    def _log_drop(self) -> None:
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_EVERY_S:
            self._last_drop_log = now
            log.error(
                "%s buffer full (%d): dropping new items; %d dropped so far",
                self._name,
                self._capacity,
                self._counters.get("dropped"),
            )

    def held(self) -> list[T]:
        """Everything buffered, oldest first (a copy: give it back with ``release``)."""
        return list(self._buffer)

    def release(self, taken: int, kept: Sequence[T] = ()) -> None:
        """Let go of the oldest ``taken`` items, then put ``kept`` back at the front in order."""
        for _ in range(taken):
            self._buffer.popleft()
        self._buffer.extendleft(reversed(kept))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"floopy-{self._name}")

    async def _run(self) -> None:
        failures = 0  # in a row
        while not self._stopping:
            if self._gauge is not None:
                self._gauge.set(len(self._buffer))  # once per batch, not per item
            await self._next_work()
            self._sending = True
            try:
                await self.send_batch()
                await self._outlet.send_backlog()
            except Exception as exc:  # noqa: BLE001 - the task outlives any client error (logged, counted)
                self._sending = False
                self._log_unexpected(exc)
                await self._outlet.on_failure(Undelivered([], exc))
                if self._stopping:
                    return
                failures += 1
                await self._outlet.wait_out(self._backoff.delay_s(failures), self)
                continue
            finally:
                self._sending = False
            if failures:
                self._outlet.recovered()
                failures = 0

    async def _next_work(self) -> None:
        """Return when items are buffered or the outlet has backlog; an idle drain asks the
        outlet to look for backlog every ``idle_check_s``."""
        while not self._buffer and not self._outlet.has_backlog():
            self._wake.clear()
            try:
                async with asyncio.timeout(self._outlet.idle_check_s):
                    await self._wake.wait()
            except TimeoutError:
                await self._outlet.check_backlog()
                continue
            if self._linger_s:
                await asyncio.sleep(self._linger_s)

    async def send_batch(self) -> int:
        """Send the oldest batch; the items tried. ``KEEP``: a failure is raised once what was
        not delivered is back in front; ``DROP``: it goes to the outlet's ``on_failure``."""
        batch = list(itertools.islice(self._buffer, self._batch_items))
        if not batch:
            return 0
        try:
            failure = await self._outlet.send(batch)
        except Exception as exc:
            if self.policy is Policy.KEEP:
                raise
            self._log_unexpected(exc)
            failure = Undelivered(batch, exc)
        if self.policy is Policy.KEEP:
            self.release(len(batch), failure.items if failure else [])
            if failure is not None:
                raise failure.error
            return len(batch)
        self.release(len(batch))
        if failure is not None:
            await self._outlet.on_failure(failure)
        return len(batch)

    def _log_unexpected(self, exc: Exception) -> None:
        if not isinstance(exc, self._outlet.expected_errors):
            log.error("%s: sending failed unexpectedly; retrying", self._name, exc_info=exc)

    async def stop(self, deadline_s: float) -> None:
        """End the task, send what the store takes before the deadline, then hand what is
        left to the outlet's ``left_at_stop``."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            if not self._sending:
                self._task.cancel()
            # bounded: shutdown must not hang on a task that does not take its cancellation
            # (seen under litestar's test client: stuck "cancelling" on its Event's waiter)
            done, _ = await asyncio.wait({self._task}, timeout=deadline_s)
            if not done:
                self._task.cancel()  # a send that outlived the deadline: at least once from here
                log.error(
                    "%s did not stop within %.1f s; flushing without it", self._name, deadline_s
                )
            self._task = None
        deadline = time.monotonic() + deadline_s
        while self._buffer and time.monotonic() < deadline and not self._outlet.hold_at_stop():
            try:
                async with asyncio.timeout(max(0.01, deadline - time.monotonic())):
                    await self.send_batch()
            except Exception as exc:  # noqa: BLE001 - counted by the outlet; the deadline ends it
                if not isinstance(exc, TimeoutError):
                    self._log_unexpected(exc)
                await self._outlet.on_failure(Undelivered([], exc))
                await asyncio.sleep(_STOP_RETRY_S)
        if self._buffer:
            await self._outlet.left_at_stop(self)
            self._buffer.clear()
