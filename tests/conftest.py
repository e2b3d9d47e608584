"""Session-wide real servers: one Redis and one ClickHouse, started from Debian's packages in
private directories on free ports. Tests that kill or stop a server start their own through
the ``redis_factory`` / ``clickhouse_factory`` fixtures so the shared ones stay up."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from devstack.servers import ClickHouseServer, RedisServer
from shared.redis_client import open_redis
from shared.settings import RedisSettings


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    server = ClickHouseServer(tmp_path_factory.mktemp("clickhouse"))
    server.start()
    yield server
    server.kill()


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[[], RedisServer]]:
    started: list[RedisServer] = []

    def make() -> RedisServer:
        server = RedisServer(tmp_path / f"redis{len(started)}")
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.kill()


@pytest.fixture
async def redis_node(
    redis_factory: Callable[[], RedisServer],
) -> AsyncIterator[tuple[RedisServer, Redis]]:
    """A Redis of the test's own (its INFO counters move only for it; it may be killed or
    hung) and a client of ours on it, which gives up after 2 s."""
    server = redis_factory()
    client = open_redis(RedisSettings(url=server.url, socket_timeout_s=2, connect_timeout_s=1))
    yield server, client
    await client.aclose()


@pytest.fixture
def clickhouse_factory(tmp_path: Path) -> Iterator[Callable[[], ClickHouseServer]]:
    started: list[ClickHouseServer] = []

    def make() -> ClickHouseServer:
        server = ClickHouseServer(tmp_path / f"clickhouse{len(started)}")
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.kill()


@pytest.fixture
def small_tmpfs() -> Iterator[Callable[[Path, str], Path]]:
    """``mount(path, size)``: a tmpfs of ``size`` at ``path``, for ENOSPC tests; unmounted in
    teardown. Skips (with the reason) only where mounting is not permitted; root can mount."""
    mounted: list[Path] = []

    def mount(path: Path, size: str = "2m") -> Path:
        path.mkdir(parents=True, exist_ok=True)
        argv = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"ENOSPC test needs a tmpfs mount (root): {done.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)  # a process still holds it
