"""A real 2-shard ClickHouse 18.16 cluster against one server with the same data: the ingester's
delivery (every record of a batch redelivered, a spool file replayed twice) into the
``Distributed`` tables, rollups and retention per shard, and every read-API answer and every
rollup row compared with the single server's."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from devstack.clickhouse_cluster import ClickHouseCluster
from devstack.servers import ClickHouseServer, RedisServer
from ingester.replay import Replayer
from ingester.retention import Retention
from ingester.rollup_sql import DAY, HOUR, MEASURES, ROLLUPS
from ingester.rollups import Rollups, run_on_shards
from ingester.schema.migrate import MIGRATIONS, migrate
from ingester.schema.topology import shard_settings
from shared.clickhouse_client import clickhouse_client
from shared.codec import encode_record
from shared.records import RequestRecord
from shared.settings import ClickHouseSettings
from shared.spool import SpoolWriter
from shared.streams import Sink

from ..analytics.conftest import dataset, drop_database, make_deliver, new_database
from ..analytics.test_read_api import (
    ACME,
    ACME_KEY,
    GLOBEX,
    GLOBEX_KEY,
    breaker_events_near,
    build_app,
)

pytestmark = pytest.mark.integration

Target = tuple[ClickHouseSettings, list[RequestRecord]]


def _rows(settings: ClickHouseSettings, sql: str) -> list[tuple[Any, ...]]:
    client = clickhouse_client(settings)
    try:
        return [tuple(row) for row in client.execute(sql.format(db=f"`{settings.database}`"))]
    finally:
        client.disconnect()


def _load(settings: ClickHouseSettings, records: list[RequestRecord], spool: Path) -> None:
    """What the pipeline does to a database: a batch, the same records again (at least once),
    a spool file (overlapping what is in) replayed twice, breaker events; then rollups."""
    deliver, delivery = make_deliver(settings, spool / "dead")
    deliver(records[:600])
    deliver(records[:250])
    (spool / "requests").mkdir(parents=True)
    writer = SpoolWriter(spool / "requests", Sink.REQUESTS)
    writer.append([encode_record(r) for r in records[500:]])
    writer.close()
    for _ in range(2):
        report = Replayer(spool / "requests", Sink.REQUESTS, delivery, batch_records=97).replay()
        assert report.inserted in (len(records) - 500, 0), report
    writer = SpoolWriter(spool / "requests", Sink.REQUESTS)  # and a replay of the same file
    writer.append([encode_record(r) for r in records[700:]])
    writer.close()
    Replayer(spool / "requests", Sink.REQUESTS, delivery).replay()
    events = [encode_record(e) for e in breaker_events_near(records)]
    assert delivery.deliver(Sink.BREAKER_EVENTS, events).inserted == len(events)
    delivery.close()
    run_on_shards(settings, Rollups.run_changed, overlap_s=0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseCluster]:
    started = ClickHouseCluster(tmp_path_factory.mktemp("chcluster"), shards=2)
    started.start()
    yield started
    started.kill()


@pytest.fixture(scope="module")
def both(
    cluster: ClickHouseCluster,
    clickhouse_server: ClickHouseServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Target, Target]]:
    records = dataset(900, seed=5, days=2)
    single = new_database(clickhouse_server)
    sharded = ClickHouseSettings(
        port=cluster.first.port,
        database=f"t_{uuid.uuid4().hex[:12]}",
        cluster="floopy",
        send_receive_timeout_s=120,
    )
    assert migrate(sharded) == [m.version for m in MIGRATIONS]
    assert migrate(sharded) == []  # every node current: a second run is a no-op
    _load(single, records, tmp_path_factory.mktemp("single"))
    _load(sharded, records, tmp_path_factory.mktemp("sharded"))
    yield (single, records), (sharded, records)
    drop_database(single)


def test_tables_are_distributed_over_local_tables_on_every_node(
    cluster: ClickHouseCluster, both: tuple[Target, Target]
) -> None:
    (sharded, _) = both[1]
    for server in cluster.all_servers:
        node = sharded.model_copy(update={"port": server.port})
        sql = f"SELECT name, engine FROM system.tables WHERE database = '{node.database}'"
        engines = dict(_rows(node, sql))
        assert engines["requests"] == "Distributed"
        assert engines["requests_local"] == "ReplacingMergeTree"  # no ZooKeeper configured
        assert engines["rollup_hourly"] == "Distributed"
        assert engines["rollup_user_daily_local"] == "ReplacingMergeTree"
        assert engines["rollup_state"] == "ReplacingMergeTree"  # per shard, not distributed


def test_records_are_spread_and_a_duplicate_lands_on_its_records_shard(
    both: tuple[Target, Target],
) -> None:
    (sharded, records) = both[1]
    per_shard = []
    for shard in shard_settings(sharded):
        sql = "SELECT request_id, count() FROM {db}.requests_local GROUP BY request_id"
        rows = _rows(shard, sql)
        per_shard.append(dict(rows))
    first, second = per_shard
    assert first and second and not set(first) & set(second)
    assert set(first) | set(second) == {r.request_id for r in records}
    assert sum(first.values()) + sum(second.values()) > len(records)  # duplicates are stored


def test_every_rollup_row_equals_the_single_servers(both: tuple[Target, Target]) -> None:
    (single, _), (sharded, _) = both
    for spec in ROLLUPS.values():
        for granularity in (HOUR, DAY):
            dims = ", ".join(["org_id", "bucket", *(d.name for d in spec.dims)])
            figures = ", ".join(
                f"quantilesTDigestMerge(0.5, 0.9, 0.95, 0.99)({m.name})"
                if m.name == "latency_state"
                else f"{m.combine} AS x_{m.name}"
                for m in MEASURES
            )
            sql = (
                f"SELECT {dims}, {figures} FROM {{db}}.{spec.table(granularity)} FINAL "
                f"GROUP BY {dims} ORDER BY {dims}"
            )
            expected = _rows(single, sql)
            assert expected, spec.table(granularity)
            got = _rows(sharded, sql)
            assert _same(got, expected), (spec.table(granularity), got, expected)


def _same(got: Any, want: Any) -> bool:
    """Equal, except floats: sums over two shards add in another order, and the API rounds
    derived figures to 6 decimals, so they may differ in that last digit."""
    if isinstance(want, float) and isinstance(got, float):
        return math.isclose(got, want, rel_tol=1e-9, abs_tol=2e-6)
    if isinstance(want, list | tuple) and isinstance(got, list | tuple):
        return len(got) == len(want) and all(_same(g, w) for g, w in zip(got, want, strict=True))
    if isinstance(want, dict) and isinstance(got, dict):
        return got.keys() == want.keys() and all(_same(got[k], want[k]) for k in want)
    return bool(got == want)


def _read_api_calls(records: list[RequestRecord]) -> list[tuple[str, dict[str, str]]]:
    span = {"start": str(records[0].created_at_ms), "end": str(records[-1].created_at_ms + 1)}
    acme = [r for r in records if r.org_id == ACME]
    with_session = next(r for r in acme if r.session_id)
    with_user = next(r for r in acme if r.user_id)
    calls: list[tuple[str, dict[str, str]]] = [
        ("/console/api/requests", {**span, "limit": "50"}),
        ("/console/api/requests", {**span, "limit": "50", "sort": "cost"}),
        ("/console/api/requests", {**span, "limit": "50", "sort": "latency", "order": "asc"}),
        ("/console/api/requests", {**span, "limit": "200", "status": "502"}),
        ("/console/api/requests", {**span, "limit": "200", "property": "feature:chat"}),
        ("/console/api/requests", {**span, "limit": "200", "q": "refund"}),
        ("/console/api/sessions", {**span, "limit": "200"}),
        (f"/console/api/sessions/{with_session.session_id}", {}),
        ("/console/api/users", {**span, "limit": "200"}),
        (f"/console/api/users/{with_user.user_id}", span),
        ("/console/api/properties", span),
        ("/console/api/properties/feature", span),
        ("/console/api/properties/feature/series", span),
    ]
    calls += [
        ("/console/api/metrics", {**span, "bucket": bucket, "group_by": group})
        for bucket in ("1h", "1d")
        for group in ("", "model", "provider", "status_code")
    ]
    calls += [
        (f"/console/api/requests/{r.request_id}", {"at": str(r.created_at_ms)}) for r in acme[:40]
    ]
    return calls


async def _answers(
    settings: ClickHouseSettings, records: list[RequestRecord], redis_server: RedisServer
) -> list[Any]:
    answers = []
    async with AsyncTestClient(app=build_app(settings, redis_server)) as client:
        for key in (ACME_KEY, GLOBEX_KEY):
            for path, params in _read_api_calls(records):
                headers = {"Authorization": f"Bearer {key}"}
                r = await client.get(path, params=params, headers=headers)
                answers.append((key, path, params, r.status_code, r.json()))
    return answers


async def test_every_read_api_answer_equals_the_single_servers(
    both: tuple[Target, Target], redis_server: RedisServer
) -> None:
    (single, records), (sharded, _) = both
    expected = await _answers(single, records, redis_server)
    assert {a[3] for a in expected if a[0] == ACME_KEY} == {200}
    assert any(a[4].get("data") for a in expected if a[0] == GLOBEX_KEY and a[3] == 200)
    got = await _answers(sharded, records, redis_server)
    for want, have in zip(expected, got, strict=True):
        assert _same(have, want), (want, have)


def _wait_for_mutations(settings: ClickHouseSettings, nodes: list[ClickHouseSettings]) -> None:
    deadline = time.monotonic() + 60
    for node in nodes:
        while _rows(
            node,
            "SELECT count() FROM system.mutations WHERE database = "
            f"'{settings.database}' AND is_done = 0",
        )[0][0]:
            assert time.monotonic() < deadline, "mutations did not finish"
            time.sleep(0.1)


def test_retention_per_shard_keeps_what_one_server_keeps(both: tuple[Target, Target]) -> None:
    """Runs last in the module: it deletes rows the read API tests above read."""
    (single, records), (sharded, _) = both
    oldest_day = records[0].created_at_ms // 1000 // DAY * DAY
    days = (int(time.time()) // DAY * DAY - oldest_day) // DAY - 1  # cuts its first day
    sql = "SELECT org_id, uniqExact(request_id) FROM {db}.requests GROUP BY org_id ORDER BY org_id"
    before = _rows(single, sql)
    for target in [single, *shard_settings(sharded)]:
        retention = Retention(target)
        retention.ensure_table()
        retention.set_days(GLOBEX, days)
        retention.enforce()
        retention.close()
    _wait_for_mutations(single, [single])
    _wait_for_mutations(sharded, shard_settings(sharded))
    after = _rows(single, sql)
    assert dict(after)[ACME] == dict(before)[ACME]
    assert dict(after)[GLOBEX] < dict(before)[GLOBEX]
    assert _rows(sharded, sql) == after
