"""A bounded request loop through the openai SDK for fault tests: every answered request's
``Floopy-Request-Id`` is kept, so rows can be counted per request id afterwards, and each
latency is tagged with the phase of the fault script it ran in (printed, never asserted)."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import openai

from tests.e2e.harness import Floopy

__all__ = ["Load"]


class Load:
    """``concurrency`` clients sending requests until the script returns, or until ``limit``
    requests were sent (a bounded, deterministic count for the fault tests)."""

    def __init__(self, floopy: Floopy, concurrency: int = 6, limit: int | None = None) -> None:
        self.floopy = floopy
        self.concurrency = concurrency
        self.limit = limit
        self.phase = "before"
        self.latencies: dict[str, list[float]] = {}
        self.sent = 0
        self.answered: list[str] = []
        """Request ids of the answered requests (``Floopy-Request-Id``)."""
        self.failures: list[str] = []
        self.stopping = False

    async def _one(self, client: openai.AsyncOpenAI, n: int) -> None:
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"load {n}"}],
            extra_headers={"floopy-user-id": f"u{n}", "floopy-session-id": uuid.uuid4().hex},
        )
        raw.parse()
        self.answered.append(raw.headers["floopy-request-id"])

    async def _worker(self, n: int) -> None:
        client = self.floopy.async_sdk(max_retries=0, timeout=20)
        try:
            while not self.stopping and (self.limit is None or self.sent < self.limit):
                self.sent += 1
                started = time.perf_counter()
                try:
                    await self._one(client, n)
                except Exception as exc:  # every failure is recorded and fails the test
                    self.failures.append(repr(exc))
                phase = self.phase
                self.latencies.setdefault(phase, []).append(time.perf_counter() - started)
        finally:
            await client.close()

    async def run(self, script: Callable[[Load], Awaitable[None] | None]) -> None:
        """Run the load beside ``script``; with a ``limit``, until ``limit`` requests were sent
        (after the script returned), else until the script returns."""
        workers = [asyncio.create_task(self._worker(n)) for n in range(self.concurrency)]
        try:
            result = script(self)
            if result is not None:
                await result
            if self.limit is not None:
                await asyncio.gather(*workers)
        finally:
            self.stopping = True
            await asyncio.gather(*workers)

    async def until_sent(self, n: int) -> None:
        """Wait (inside a script) until ``n`` requests were sent."""
        while self.sent < n and not self.stopping:  # noqa: ASYNC110 - polls a counter
            await asyncio.sleep(0.02)

    async def run_fault(
        self,
        *,
        at: int,
        until: int,
        down: Callable[[], object],
        up: Callable[[], object],
        meanwhile: Callable[[], Awaitable[None]] | None = None,
        phases: tuple[str, str] = ("fault", "recovered"),
    ) -> None:
        """The load of every fault test: ``down()`` once ``at`` requests were sent, then
        ``meanwhile()`` and ``until`` requests sent, then ``up()``; every request must be
        answered. Counts, not timings, decide when things happen."""

        async def script(load: Load) -> None:
            await load.until_sent(at)
            load.phase = phases[0]
            await asyncio.to_thread(down)
            try:
                if meanwhile is not None:
                    await meanwhile()
                await load.until_sent(until)
            finally:
                load.phase = phases[1]
                await asyncio.to_thread(up)

        await self.run(script)
        print(self.report())
        assert not self.failures, self.failures[:3]
        assert len(self.answered) == self.sent
        assert self.latencies.get(phases[0]), f"no request ran in phase {phases[0]!r}"

    def report(self) -> str:
        parts = []
        for phase, values in self.latencies.items():
            ms = sorted(v * 1000 for v in values)
            p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
            parts.append(f"{phase}: n={len(ms)} p50={statistics.median(ms):.1f}ms p99={p99:.1f}ms")
        return "; ".join(parts)
