"""The worker hosts the rollup and retention jobs as arq cron jobs (one run per tick across
replicas: arq gives each tick a unique job id)."""

from __future__ import annotations

import pytest
import typer

from ingester.rollup_cli import parse_when
from ingester.settings import IngesterSettings
from ingester.worker import worker_settings


def test_worker_settings_carry_the_rollup_and_retention_cron_jobs() -> None:
    # worker_settings builds its class at run time (a plain ``type`` to mypy)
    cron_jobs = worker_settings(IngesterSettings()).cron_jobs  # type: ignore[attr-defined]
    jobs = {job.name: job for job in cron_jobs}
    assert set(jobs) == {"floopy_rollups", "floopy_retention"}
    assert jobs["floopy_rollups"].second == 0 and jobs["floopy_rollups"].minute is None
    assert jobs["floopy_retention"].minute == 17
    assert all(job.unique for job in jobs.values())
    # a kept result is what stops a lagging replica from enqueuing a finished tick again
    assert all((job.keep_result_s or 0) >= 3600 for job in jobs.values())


def test_cli_times_are_unix_seconds_or_iso_utc() -> None:
    assert parse_when("1767225600") == 1_767_225_600
    assert parse_when("2026-01-01") == 1_767_225_600
    assert parse_when("2026-01-01T01:00:00+01:00") == 1_767_225_600
    with pytest.raises(typer.BadParameter):
        parse_when("last tuesday")
