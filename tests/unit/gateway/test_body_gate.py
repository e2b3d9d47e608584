"""The guard's body gate: the cap and the read deadline."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from gateway.guard import _BodyGate
from shared.errors import PayloadTooLargeError, RequestTimeoutError

if TYPE_CHECKING:
    from litestar.types import ReceiveMessage


class _Client:
    """An ASGI ``receive`` fed by the test: each message arrives when the test sends it."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[ReceiveMessage] = asyncio.Queue()

    async def receive(self) -> ReceiveMessage:
        return await self.messages.get()

    def send(self, body: bytes, more: bool = False) -> None:
        self.messages.put_nowait({"type": "http.request", "body": body, "more_body": more})


async def test_a_body_that_arrives_in_time_is_read() -> None:
    client = _Client()
    gate = _BodyGate(client.receive, 100, 0.2)
    client.send(b"abc", more=True)
    client.send(b"de")
    assert [await gate(), await gate()] == [
        {"type": "http.request", "body": b"abc", "more_body": True},
        {"type": "http.request", "body": b"de", "more_body": False},
    ]


async def test_a_body_that_stops_arriving_is_refused_with_408() -> None:
    client = _Client()
    gate = _BodyGate(client.receive, 100, 0.1)
    client.send(b"abc", more=True)
    await gate()
    with pytest.raises(RequestTimeoutError):
        await gate()  # nothing more comes


async def test_the_deadline_counts_from_the_first_read() -> None:
    client = _Client()
    gate = _BodyGate(client.receive, 100, 0.05)
    client.send(b"abc", more=True)
    await gate()
    await asyncio.sleep(0.08)
    client.send(b"de")
    with pytest.raises(RequestTimeoutError):
        await gate()  # the rest is there, but too late


async def test_the_cap_counts_every_chunk() -> None:
    client = _Client()
    gate = _BodyGate(client.receive, 100, 0.2)
    client.send(b"x" * 60, more=True)
    client.send(b"x" * 60)
    await gate()
    with pytest.raises(PayloadTooLargeError):
        await gate()
