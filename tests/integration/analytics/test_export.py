"""Export of the Requests list: CSV and JSON Lines hold exactly the rows the list shows for the
same filters, in the same order, up to the documented cap, and another org's rows never."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator

import pytest
from litestar.testing import AsyncTestClient

from devstack.servers import RedisServer
from gateway.console import api as console_api
from gateway.console.export import EXPORT_COLUMNS
from shared.records import RequestRecord
from shared.settings import ClickHouseSettings

from .test_read_api import ACME, ACME_KEY, Client, all_ids, build_app, loaded, window

pytestmark = pytest.mark.integration

__all__ = ["loaded"]  # the module-scoped dataset fixture, shared with the read API tests

AUTH = {"Authorization": f"Bearer {ACME_KEY}"}


@pytest.fixture
async def client(
    loaded: tuple[ClickHouseSettings, list[RequestRecord]], redis_server: RedisServer
) -> AsyncIterator[Client]:
    async with AsyncTestClient(app=build_app(loaded[0], redis_server)) as c:
        yield c


async def test_csv_and_jsonl_hold_exactly_the_filtered_rows(
    client: Client, loaded: tuple[ClickHouseSettings, list[RequestRecord]]
) -> None:
    records = loaded[1]
    params = {**window(records), "status": "200", "sort": "cost", "order": "asc"}
    want = await all_ids(client, params)
    assert 200 < len(want) < 900  # more than one export page, fewer than every row

    got = await client.get("/console/api/requests/export", params=params, headers=AUTH)
    assert got.status_code == 200, got.text
    assert got.headers["content-type"].startswith("text/csv")
    assert "attachment" in got.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(got.text)))
    assert tuple(rows[0]) == EXPORT_COLUMNS
    assert [r["request_id"] for r in rows] == want
    by_id = {r.request_id: r for r in records}
    first = by_id[rows[0]["request_id"]]
    assert rows[0]["status_code"] == "200" and rows[0]["user_id"] == first.user_id
    assert json.loads(rows[0]["properties"]) == first.properties

    got = await client.get(
        "/console/api/requests/export", params={**params, "format": "jsonl"}, headers=AUTH
    )
    lines = [json.loads(line) for line in got.text.splitlines()]
    assert [line["request_id"] for line in lines] == want
    assert all(by_id[line["request_id"]].org_id == ACME for line in lines)


async def test_export_stops_at_the_cap_and_refuses_bad_input(
    client: Client,
    loaded: tuple[ClickHouseSettings, list[RequestRecord]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    records = loaded[1]
    monkeypatch.setattr(console_api, "EXPORT_MAX_ROWS", 250)
    want = await all_ids(client, window(records))
    got = await client.get(
        "/console/api/requests/export", params={**window(records), "format": "jsonl"}, headers=AUTH
    )
    assert [json.loads(line)["request_id"] for line in got.text.splitlines()] == want[:250]
    assert got.headers["floopy-export-max-rows"] == "250"
    bad = await client.get("/console/api/requests/export", params={"format": "xml"}, headers=AUTH)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "BAD_REQUEST"
    nokey = await client.get("/console/api/requests/export")
    assert nokey.status_code == 401
