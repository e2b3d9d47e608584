"""Replication with Debian's ZooKeeper: one shard, two replicas of ClickHouse 18.16. One replica is
SIGKILLed while the ingester's ``Delivery`` inserts through the ``Distributed`` table, and started
again; in the end each replica holds every record once (nothing lost, nothing doubled)."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from devstack.clickhouse_cluster import ClickHouseCluster
from ingester.delivery import Delivery
from ingester.schema.migrate import migrate
from shared.clickhouse_client import clickhouse_client
from shared.codec import encode_record
from shared.errors import SinkUnavailableError
from shared.settings import ClickHouseSettings
from shared.streams import Sink

from ..analytics.conftest import dataset

pytestmark = pytest.mark.integration

BATCH = 100


def _one(settings: ClickHouseSettings, sql: str) -> Any:
    client = clickhouse_client(settings)
    try:
        return client.execute(sql.format(db=f"`{settings.database}`"))[0][0]
    finally:
        client.disconnect()


def _caught_up(replica: ClickHouseSettings, expected: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while _one(replica, "SELECT uniqExact(request_id) FROM {db}.requests_local") < expected:
        assert time.monotonic() < deadline, "the restarted replica did not catch up"
        time.sleep(0.2)


def test_a_replica_killed_under_load_loses_and_doubles_nothing(tmp_path: Path) -> None:
    cluster = ClickHouseCluster(tmp_path, shards=1, replicas=2, zookeeper=True)
    cluster.start()
    try:
        entry, victim = cluster.servers[0]
        settings = ClickHouseSettings(
            port=entry.port, database=f"t_{uuid.uuid4().hex[:12]}", cluster="floopy"
        )
        migrate(settings)
        replicas = [settings, settings.model_copy(update={"port": victim.port})]
        for replica in replicas:
            engine = _one(
                replica,
                "SELECT engine FROM system.tables WHERE database = "
                f"'{settings.database}' AND name = 'requests_local'",
            )
            assert engine == "ReplicatedReplacingMergeTree"

        records = dataset(3000, seed=7, days=1)
        payloads = [encode_record(r) for r in records]
        batches = [payloads[i : i + BATCH] for i in range(0, len(payloads), BATCH)]
        batches += batches[5:8]  # redelivered (at least once)
        delivered = threading.Event()
        failed: list[list[bytes]] = []
        progress = [0]

        def load() -> None:
            delivery = Delivery(settings, tmp_path / "dead")
            for batch in batches:
                try:
                    delivery.deliver(Sink.REQUESTS, batch)
                except SinkUnavailableError:
                    failed.append(batch)  # the worker would spool it and replay it later
                progress[0] += 1
                time.sleep(0.01)
            delivery.close()
            delivered.set()

        loader = threading.Thread(target=load)
        loader.start()
        while progress[0] < len(batches) // 3:
            time.sleep(0.01)
        victim.kill()
        killed_at = progress[0]
        while progress[0] < 2 * len(batches) // 3 and not delivered.is_set():
            time.sleep(0.01)
        assert progress[0] > killed_at  # inserts went on while the replica was down
        victim.start()
        loader.join(120)
        assert delivered.is_set()

        replay = Delivery(settings, tmp_path / "dead")
        for batch in failed:
            replay.deliver(Sink.REQUESTS, batch)
        replay.close()

        for replica in replicas:
            _caught_up(replica, len(records))
            assert _one(replica, "SELECT uniqExact(request_id) FROM {db}.requests_local") == len(
                records
            )
            assert _one(replica, "SELECT count() FROM {db}.requests_local FINAL") == len(records)
        assert _one(settings, "SELECT count() FROM {db}.requests FINAL") == len(records)
    finally:
        cluster.kill()
