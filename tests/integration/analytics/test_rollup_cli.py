"""``floopy-ingester rollups rebuild`` against a real ClickHouse."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ingester.cli import app
from shared.settings import ClickHouseSettings

from .conftest import Deliver, dataset
from .test_rollups import query

pytestmark = pytest.mark.integration


def test_rebuild_a_range_from_the_cli(ch: ClickHouseSettings, deliver: Deliver) -> None:
    records = dataset(200, days=1)
    deliver(records)
    start = records[0].created_at_ms // 1000
    end = records[-1].created_at_ms // 1000 + 1
    base = ["--clickhouse-port", str(ch.port), "--clickhouse-database", ch.database, "rollups"]
    result = CliRunner().invoke(app, [*base, "rebuild", "--from", str(start), "--to", str(end)])
    assert result.exit_code == 0, result.output
    assert "rebuilt" in result.output
    assert query(ch, "SELECT sum(requests) FROM DB.rollup_hourly FINAL") == [(len(records),)]
    result = CliRunner().invoke(app, [*base, "retention", "--org", "org-acme", "--days", "9"])
    assert result.exit_code == 0 and "org-acme: 9 day(s)" in result.output
    bad = CliRunner().invoke(app, [*base, "rebuild", "--from", "2026-01-02", "--to", "2026-01-01"])
    assert bad.exit_code != 0
