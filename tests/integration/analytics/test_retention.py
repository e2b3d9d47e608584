"""Retention on a real ClickHouse 18.16: per-org days, whole partitions dropped, the rest deleted
by one mutation, rollups kept, and expired hours never recomputed from half-deleted raw rows."""

from __future__ import annotations

import time
import uuid

import msgspec
import pytest
from redis.asyncio import Redis

from devstack.servers import RedisServer
from gateway.clients.admin_store import AdminStore
from gateway.policy.keys import Org, Plan
from ingester.cron import analytics_jobs
from ingester.retention import Retention
from ingester.rollups import Rollups
from shared.records import RequestRecord
from shared.settings import ClickHouseSettings

from .conftest import Deliver, dataset
from .test_rollups import query

pytestmark = pytest.mark.integration

DAY = 86400
ROLLUP_BY_ORG = (
    "SELECT org_id, sum(requests) FROM DB.rollup_daily FINAL GROUP BY org_id ORDER BY org_id"
)


def aged(records: list[RequestRecord], org: str, days_ago: float) -> list[RequestRecord]:
    at_ms = int((time.time() - days_ago * DAY) * 1000)
    return [
        msgspec.structs.replace(
            r, org_id=org, created_at_ms=at_ms + i, request_id=f"{org}-{days_ago}-{i}"
        )
        for i, r in enumerate(records)
    ]


def wait_for_mutations(ch: ClickHouseSettings) -> None:
    for _ in range(600):
        (pending,) = query(
            ch,
            "SELECT count() FROM system.mutations WHERE database = %(db)s AND is_done = 0",
            {"db": ch.database},
        )[0]
        if not pending:
            return
        time.sleep(0.1)
    raise AssertionError("mutations still running after 60 s")


def test_each_org_keeps_its_own_days_and_rollups_outlive_raw_rows(
    ch: ClickHouseSettings, deliver: Deliver
) -> None:
    base = dataset(20)
    old_partition = aged(base, "org-a", 400) + aged(base, "org-b", 400)
    a_recent, a_old = aged(base, "org-a", 3), aged(base, "org-a", 10)
    b_recent, b_old = aged(base, "org-b", 10), aged(base, "org-b", 40)
    deliver(old_partition + a_recent + a_old + b_recent + b_old)

    roll = Rollups(ch, default_retention_days=1000, overlap_s=0)
    retention = Retention(ch, default_days=30)
    try:
        roll.run_changed()
        rollup_before = query(
            ch,
            ROLLUP_BY_ORG,
        )
        retention.set_days("org-a", 7)
        report = retention.enforce()
        wait_for_mutations(ch)
    finally:
        roll.close()

    old_month = time.strftime("%Y%m", time.gmtime(old_partition[0].created_at_ms / 1000))
    assert old_month in report.dropped_partitions["requests"]
    assert "org-a" in report.deleted_orgs["requests"]  # 10 days old, next to rows it keeps
    kept = query(
        ch, "SELECT org_id, count() FROM DB.requests FINAL GROUP BY org_id ORDER BY org_id"
    )
    assert kept == [("org-a", len(a_recent)), ("org-b", len(b_recent))]
    spans_left = query(ch, "SELECT uniqExact(request_id) FROM DB.spans")[0][0]
    assert spans_left == len(a_recent) + len(b_recent)
    assert (
        query(
            ch,
            ROLLUP_BY_ORG,
        )
        == rollup_before
    )

    # A late record of an expired hour arrives (a replay): its hour keeps the rollup it had.
    late = aged(base[:1], "org-a", 10)[0]
    hour_of = late.created_at_ms // 1000 // 3600 * 3600
    hour_sql = (
        "SELECT sum(requests) FROM DB.rollup_hourly FINAL "
        "WHERE org_id = 'org-a' AND toUInt32(bucket) = %(h)s"
    )
    before = query(ch, hour_sql, {"h": hour_of})
    deliver([msgspec.structs.replace(late, request_id="late-expired")])
    roll = Rollups(ch, default_retention_days=30, overlap_s=0)
    try:
        assert roll.run_changed().skipped_expired >= 1
    finally:
        roll.close()
        retention.close()
    assert query(ch, hour_sql, {"h": hour_of}) == before


def test_nothing_expired_issues_no_mutation(ch: ClickHouseSettings, deliver: Deliver) -> None:
    deliver(dataset(50))
    retention = Retention(ch, default_days=30)
    try:
        report = retention.enforce()
    finally:
        retention.close()
    assert report.deleted_orgs == {} and report.dropped_partitions["requests"] == []
    assert query(
        ch, "SELECT count() FROM system.mutations WHERE database = %(db)s", {"db": ch.database}
    ) == [(0,)]


async def test_a_plan_stored_by_the_gateway_reaches_the_retention_job(
    ch: ClickHouseSettings, deliver: Deliver, redis_server: RedisServer
) -> None:
    """The key store mirrors each org's retention into Redis; the arq retention job copies it
    into ``org_settings`` and enforces it, with no import of the gateway in the ingester."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    client = Redis.from_url(redis_server.url)
    store = AdminStore(client, prefix=prefix)
    await store.put_org(Org(org_id="org-short", plan=Plan(retention_days=5)))
    await store.put_org(Org(org_id="org-long", plan=Plan(retention_days=60)))
    base = dataset(10)
    deliver(aged(base, "org-short", 10) + aged(base, "org-long", 10) + aged(base, "org-short", 1))

    (job,) = [
        c.coroutine
        for c in analytics_jobs(ch, default_retention_days=30, key_prefix=prefix)
        if c.name == "floopy_retention"
    ]
    await job({"redis": client})
    wait_for_mutations(ch)

    assert Retention(ch).days_by_org() == {"org-short": 5, "org-long": 60}
    by_org = query(
        ch, "SELECT org_id, count() FROM DB.requests FINAL GROUP BY org_id ORDER BY org_id"
    )
    assert by_org == [("org-long", 10), ("org-short", 10)]  # org-short's 10-day-old rows gone
    await client.aclose()
