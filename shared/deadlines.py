"""Deadlines on the hot path, kept by one timer per event loop instead of one per wait.

``asyncio.timeout`` schedules and cancels a loop timer (and runs its state machine) on every
use. Around the gateway's per-request waits, the body read and the provider call, that cost
more than the waits themselves: ≈ 75,000 and ≈ 27,000 instructions of a 2.6 million
instruction request (``bench.instructions`` with each one knocked out). Here a wait registers
in a set, and one timer, running only while something waits, sweeps the set every
``RESOLUTION_S``: a wait past its deadline is cancelled and raises ``TimeoutError``, as under
``asyncio.timeout``.

Invariants:
- A wait is cut no earlier than its deadline and at most ``RESOLUTION_S`` after it.
- Only the task that entered ``Deadline`` is cancelled, and only while it is inside the block.
  A cancellation that is not the deadline's (the client went away, the worker stops) leaves as
  ``CancelledError``; when both happen, the other one wins (``Task.uncancel`` counts them, as
  ``asyncio.timeout`` does).
- A deadline already past when the block is entered raises at once, before anything is awaited.
- No timer is left behind: the sweep reschedules itself only while a wait is registered.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from weakref import WeakKeyDictionary

__all__ = ["RESOLUTION_S", "Deadline", "Sweeper", "sweeper", "within"]

RESOLUTION_S = 0.05


class Sweeper:
    """The waits of one event loop that have a deadline, and the timer that checks them."""

    def __init__(self) -> None:
        # no reference to the loop: the loop is this object's weak key in ``_sweepers``, and
        # a value that held its key would keep every loop alive
        self.waiting: set[Deadline] = set()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, deadline: Deadline) -> None:
        self.waiting.add(deadline)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(RESOLUTION_S, self._sweep)

    def discard(self, deadline: Deadline) -> None:
        self.waiting.discard(deadline)

    @property
    def scheduled(self) -> bool:
        return self._timer is not None

    def _sweep(self) -> None:
        self._timer = None
        now = time.monotonic()
        for deadline in [d for d in self.waiting if d.at <= now]:
            self.waiting.discard(deadline)
            deadline.expire()
        if self.waiting:
            self._timer = asyncio.get_running_loop().call_later(RESOLUTION_S, self._sweep)


_sweepers: WeakKeyDictionary[asyncio.AbstractEventLoop, Sweeper] = WeakKeyDictionary()


def sweeper() -> Sweeper:
    """The running loop's sweeper (one per loop, made on first use)."""
    loop = asyncio.get_running_loop()
    found = _sweepers.get(loop)
    if found is None:
        found = _sweepers[loop] = Sweeper()
    return found


class Deadline:
    """``with Deadline(at):`` (``time.monotonic`` seconds) around the awaits to cut short."""

    __slots__ = ("_cancelling", "_sweeper", "_task", "at", "expired")

    def __init__(self, at: float) -> None:
        self.at = at
        self.expired = False
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._sweeper: Sweeper | None = None

    def __enter__(self) -> Deadline:
        if time.monotonic() >= self.at:
            raise TimeoutError
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a Deadline must be entered inside a task")
        self._task, self._cancelling = task, task.cancelling()
        self._sweeper = sweeper()
        self._sweeper.add(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._sweeper is not None and self._task is not None
        self._sweeper.discard(self)
        if (
            self.expired
            and exc_type is asyncio.CancelledError
            and self._task.uncancel() <= self._cancelling
        ):
            raise TimeoutError from exc

    def expire(self) -> None:
        """Called by the sweep once ``at`` has passed."""
        self.expired = True
        if self._task is not None:
            self._task.cancel()


def within(seconds: float) -> Deadline:
    """A deadline ``seconds`` from now, as ``asyncio.timeout(seconds)``."""
    return Deadline(time.monotonic() + seconds)
