"""Two ingester replicas (real arq workers on one Redis) running the rollup cron job: every tick
runs exactly once across both, and the rollups it writes are the raw totals."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import cast

import pytest
from arq import Worker
from arq.connections import RedisSettings, create_pool

from devstack.servers import RedisServer
from ingester.cron import analytics_jobs
from ingester.worker import ResilientWorker, noop
from shared.settings import ClickHouseSettings

from .conftest import Deliver, dataset
from .test_rollups import actual, assert_same, expected

pytestmark = pytest.mark.integration

TICKS = 3


def replica(ch: ClickHouseSettings, redis: RedisServer, name: str) -> Worker:
    """One replica's worker with the real cron jobs, the rollup job rescheduled from once a
    minute to every second so the test sees several ticks."""
    jobs = [
        dataclasses.replace(job, second=None) if job.name == "floopy_rollups" else job
        for job in analytics_jobs(ch, overlap_s=0)
    ]
    return ResilientWorker(
        functions=[noop],
        cron_jobs=jobs,
        redis_settings=RedisSettings(port=redis.port, database=3),
        queue_name="floopy-test:arq:queue",
        health_check_key=f"floopy-test:arq:health:{name}",
        handle_signals=False,
        poll_delay=0.1,
    )


async def until(done: Callable[[], Awaitable[bool]], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not await done():
        if time.monotonic() > deadline:
            raise AssertionError("the cron job did not run often enough")
        await asyncio.sleep(0.2)


async def test_each_tick_runs_once_across_two_replicas(
    ch: ClickHouseSettings, deliver: Deliver, redis_server: RedisServer
) -> None:
    records = dataset(300, seed=31, days=1)
    deliver(records)
    redis = await create_pool(RedisSettings(port=redis_server.port, database=3))
    await redis.flushdb()
    workers = [replica(ch, redis_server, f"r{i}") for i in range(2)]
    tasks = [asyncio.create_task(w.async_run()) for w in workers]

    async def enough() -> bool:
        results = await redis.all_job_results()
        return len([r for r in results if r.function == "floopy_rollups"]) >= TICKS

    try:
        await until(enough)
    finally:
        for worker in workers:
            await worker.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    results = [r for r in await redis.all_job_results() if r.function == "floopy_rollups"]
    await redis.aclose()

    assert all(r.success for r in results), [r.result for r in results if not r.success]
    ticks = [cast(str, r.job_id) for r in results]  # all_job_results sets every job id
    # The job id is the tick's time: one id per tick, however many replicas enqueued it.
    assert all(t.startswith("floopy_rollups:") for t in ticks)
    assert len(set(ticks)) == len(ticks)
    runs = sum(w.jobs_complete + w.jobs_failed for w in workers)
    assert runs == len(ticks)  # no tick ran on both replicas
    assert_same(actual(ch, "rollup_hourly"), expected(records, 3600))
