from __future__ import annotations

from collections.abc import Callable

import redis
from clickhouse_driver import Client

from devstack.servers import ClickHouseServer, RedisServer


def test_redis_keeps_stream_across_restart(redis_factory: Callable[[], RedisServer]) -> None:
    server: RedisServer = redis_factory()
    r = redis.Redis.from_url(server.url)
    r.xadd("s", {"a": "1"})
    r.close()
    server.restart()
    r = redis.Redis.from_url(server.url)
    assert r.xlen("s") == 1
    r.close()


def test_clickhouse_answers(clickhouse_server: ClickHouseServer) -> None:
    client = Client(host="127.0.0.1", port=clickhouse_server.port)
    assert client.execute("SELECT 1 + 1") == [(2,)]
    client.disconnect()
