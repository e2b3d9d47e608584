"""The guard's body gate: the cap and the read deadline, kept by one timer per worker."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import pytest

from gateway.guard import BodyDeadlines, _BodyGate, sweep_interval
from shared.errors import PayloadTooLargeError, RequestTimeoutError

if TYPE_CHECKING:
    from litestar.types import ReceiveMessage


class _Client:
    """An ASGI ``receive`` fed by the test: each message is sent when the test puts it."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[ReceiveMessage] = asyncio.Queue()

    async def receive(self) -> ReceiveMessage:
        return await self.messages.get()

    def send(self, body: bytes, more: bool = False) -> None:
        self.messages.put_nowait({"type": "http.request", "body": body, "more_body": more})


def _gate(client: _Client, deadlines: BodyDeadlines, timeout_s: float = 0.2) -> _BodyGate:
    return _BodyGate(client.receive, 100, timeout_s, deadlines)


def _timer_pending(deadlines: BodyDeadlines) -> bool:
    timer: Any = deadlines._timer
    return timer is not None


async def test_a_body_that_arrives_in_time_is_read_and_no_timer_is_left() -> None:
    client, deadlines = _Client(), BodyDeadlines(0.02)
    gate = _gate(client, deadlines)
    client.send(b"abc", more=True)
    client.send(b"de")
    assert [await gate(), await gate()] == [
        {"type": "http.request", "body": b"abc", "more_body": True},
        {"type": "http.request", "body": b"de", "more_body": False},
    ]
    await asyncio.sleep(0.05)  # the sweep that was scheduled runs once and finds nobody
    assert not _timer_pending(deadlines)


async def test_a_body_that_stops_arriving_is_cut_after_its_deadline() -> None:
    client, deadlines = _Client(), BodyDeadlines(0.02)
    gate = _gate(client, deadlines, timeout_s=0.1)
    client.send(b"abc", more=True)
    await gate()
    started = time.monotonic()
    with pytest.raises(RequestTimeoutError):
        await gate()  # nothing more comes
    waited = time.monotonic() - started
    assert 0.05 <= waited < 0.1 + 0.02 + 0.2  # the deadline counts from the first read
    task = asyncio.current_task()
    assert task is not None
    assert not task.cancelling()
    await asyncio.sleep(0.05)
    assert not _timer_pending(deadlines)


async def test_a_deadline_passed_between_reads_is_refused_at_the_next_read() -> None:
    client, deadlines = _Client(), BodyDeadlines(10.0)  # the sweep would come far too late
    gate = _gate(client, deadlines, timeout_s=0.05)
    client.send(b"abc", more=True)
    await gate()
    await asyncio.sleep(0.08)
    client.send(b"de")
    with pytest.raises(RequestTimeoutError):
        await gate()


async def test_one_timer_serves_every_waiting_body() -> None:
    clients = [_Client() for _ in range(50)]
    deadlines = BodyDeadlines(0.02)
    gates = [_gate(c, deadlines, timeout_s=0.1) for c in clients]
    reads = [asyncio.ensure_future(g()) for g in gates]
    await asyncio.sleep(0)
    assert len(deadlines._waiting) == 50
    for c in clients[:25]:
        c.send(b"x")
    results = await asyncio.gather(*reads, return_exceptions=True)
    assert [type(r) for r in results[:25]] == [dict] * 25
    assert [type(r) for r in results[25:]] == [RequestTimeoutError] * 25
    assert not deadlines._waiting


async def test_a_cancellation_that_is_not_the_deadline_stays_a_cancellation() -> None:
    client, deadlines = _Client(), BodyDeadlines(0.02)
    gate = _gate(client, deadlines, timeout_s=5)
    read = asyncio.ensure_future(gate())
    await asyncio.sleep(0.01)
    read.cancel()
    with pytest.raises(asyncio.CancelledError):
        await read
    assert not deadlines._waiting


async def test_the_cap_counts_every_chunk() -> None:
    client, deadlines = _Client(), BodyDeadlines(0.02)
    gate = _gate(client, deadlines)
    client.send(b"x" * 60, more=True)
    client.send(b"x" * 60)
    await gate()
    with pytest.raises(PayloadTooLargeError):
        await gate()


def test_the_sweep_interval_is_a_tenth_of_the_timeout_within_bounds() -> None:
    assert sweep_interval(30) == 1.0
    assert sweep_interval(2) == pytest.approx(0.2)
    assert sweep_interval(0.1) == 0.05
