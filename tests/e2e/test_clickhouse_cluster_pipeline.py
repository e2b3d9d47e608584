"""The real processes on a 2-shard ClickHouse cluster: SDK → gateway → Redis → ``floopy-ingester
worker`` (``FLOOPY_INGESTER_CLICKHOUSE__CLUSTER``: it migrates every node and inserts through the
``Distributed`` tables) while one shard is SIGKILLed and started again (batches spool, then
replay), ``floopy-ingester rollups run`` per shard, and the gateway's read API through the
``Distributed`` tables: every answered request once, the metrics counting each once."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack.clickhouse_cluster import ClickHouseCluster
from devstack.servers import RedisServer
from ingester.replay import pending_files
from shared.streams import Sink
from tests.e2e.harness import API_KEY, BIN, Floopy
from tests.e2e.load import Load

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CLUSTER = {"FLOOPY_INGESTER_CLICKHOUSE__CLUSTER": "floopy"}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClickHouseCluster]:
    started = ClickHouseCluster(tmp_path / "clickhouse", shards=2)
    started.start()
    yield started
    started.kill()


@pytest.fixture
def floopy(
    tmp_path: Path, redis_server: RedisServer, cluster: ClickHouseCluster
) -> Iterator[Floopy]:
    stack = Floopy(tmp_path / "stack", redis_server, cluster.first)
    stack.root.mkdir()
    stack.start_provider()
    stack.start_ingester(**CLUSTER)
    stack.start_gateway(
        FLOOPY_GATEWAY_CLICKHOUSE__PORT=str(cluster.first.port),
        FLOOPY_GATEWAY_CLICKHOUSE__DATABASE=stack.database,
    )
    yield stack
    stack.stop_all()


async def test_pipeline_on_two_shards_with_one_killed_and_back(
    floopy: Floopy, cluster: ClickHouseCluster
) -> None:
    floopy.wait_for(
        lambda: bool(floopy.query("SELECT count() FROM system.tables WHERE name = 'requests'")),
        what="the worker's migration",
    )
    second = cluster.servers[1][0]

    def back_once_a_batch_was_spooled() -> None:
        """The shard stays down until the ingester gave up on a batch: on a fast machine the
        load would otherwise end before the retries do, and nothing would be spooled."""
        floopy.wait_for(
            lambda: floopy.spooled_records() > 0,
            timeout_s=90,
            what="a batch spooled while a shard is down",
        )
        second.start()

    load = Load(floopy, limit=300)
    await load.run_fault(
        at=60,
        until=200,
        down=second.kill,
        up=back_once_a_batch_was_spooled,
        phases=("shard down", "shard back"),
    )
    floopy.wait_for(
        lambda: floopy.request_counts() == (load.sent, load.sent),
        timeout_s=90,
        what=f"{load.sent} distinct rows (have {floopy.request_counts()})",
    )
    floopy.wait_for(lambda: not pending_files(floopy.spool_dir, Sink.REQUESTS), what="replay")
    missing, doubled = floopy.missing_and_doubled(load.answered)
    spooled = floopy.spooled_records()
    assert not missing
    assert spooled > 0, "no batch was spooled while a shard was down"
    assert sum(n - 1 for n in doubled.values()) <= spooled, "a duplicate never spooled"
    shards = [
        floopy.query(
            f"SELECT uniqExact(request_id) FROM remote('127.0.0.1:{row[0].port}', "
            f"`{floopy.database}`.requests_local)"
        )[0][0]
        for row in cluster.servers
    ]
    assert all(shards) and sum(shards) == load.sent  # spread over both, each record once

    assert await asyncio.to_thread(_requests_in_metrics, floopy) == load.sent


def _requests_in_metrics(floopy: Floopy) -> int:
    """One rollup run on every shard (the CLI, as cron would), then the read API's total."""
    subprocess.run(
        [str(BIN / "floopy-ingester"), "rollups", "run"],
        env=floopy.env(**CLUSTER),
        check=True,
        capture_output=True,
        timeout=120,
    )
    now_ms = int(time.time() * 1000)
    answer = httpx.get(
        f"{floopy.gateway_url}/console/api/metrics",
        params={"start": str(now_ms - 3 * 3600_000), "end": str(now_ms + 3600_000), "bucket": "1h"},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return int(answer.json()["totals"]["requests"])
