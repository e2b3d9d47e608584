"""Fixtures of the gateway's Redis-backed clients: one async client per test on the session's
Redis, and a key prefix of the test's own so tests never see each other's keys."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from devstack.fake_openai import FakeOpenAIThread
from devstack.servers import RedisServer


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def fake() -> Iterator[FakeOpenAIThread]:
    """The fake provider in its own thread: the test client blocks the test's loop while the app
    handles a request."""
    server = FakeOpenAIThread().start()
    yield server
    server.stop()
