from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.servers import ClickHouseServer, RedisServer
from tests.e2e.harness import Floopy


@pytest.fixture
def floopy(
    tmp_path: Path, redis_server: RedisServer, clickhouse_server: ClickHouseServer
) -> Iterator[Floopy]:
    """Provider, gateway and one ingester on the session's servers."""
    stack = Floopy(tmp_path, redis_server, clickhouse_server)
    stack.start_provider()
    stack.start_ingester()
    stack.start_gateway()
    yield stack
    stack.stop_all()
