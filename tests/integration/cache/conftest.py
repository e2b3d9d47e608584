"""Fixtures of the cache tests: the fake provider (``fake.served`` counts the requests that
reached it: a hit never does), the gateway's settings (orgs and keys of ``harness``) and the app
in-process behind litestar's test client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from devstack.fake_openai import FakeOpenAIThread
from devstack.servers import RedisServer
from gateway.settings import GatewaySettings
from tests.integration.cache.harness import GatewayClient, settings_for


@pytest.fixture
def fake() -> Iterator[FakeOpenAIThread]:
    """In its own thread: the test client blocks this loop while the app handles a request.
    ``fake.served`` counts the requests that reached it (a hit never does)."""
    server = FakeOpenAIThread().start()
    yield server
    server.stop()


@pytest.fixture
def settings(redis_server: RedisServer, fake: FakeOpenAIThread, tmp_path: Path) -> GatewaySettings:
    return settings_for(redis_server.url, fake.base_url, tmp_path)


@pytest.fixture
async def client(settings: GatewaySettings) -> AsyncIterator[GatewayClient]:
    async with GatewayClient(settings) as test_client:
        yield test_client
