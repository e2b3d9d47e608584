"""The read API against a known-answer dataset in a real ClickHouse: every Requests filter
returns exactly the rows it should, pagination loses and repeats nothing, metrics equal raw
totals, and a key of one org never reads another org's data.

The dataset is loaded once per module (through the real ``Delivery``, every record twice) into
its own database; the tests only read it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from devstack.servers import ClickHouseServer, RedisServer
from gateway.admin.seed import apply_seed, seed_from_api_keys
from gateway.clients.admin_store import AdminStore
from gateway.clients.key_auth import KeyAuthenticator
from gateway.clients.routing_config import RoutingConfigStore
from gateway.clients.templates import TemplateStore
from gateway.console import Console, Principal, openapi_config
from gateway.console.api import Authenticator
from gateway.console.auth import reader_keys
from gateway.console.filters import encode_cursor
from gateway.errors import EXCEPTION_HANDLERS
from gateway.settings import ApiKeyEntry
from ingester.rollups import Rollups
from shared.clickhouse_client import clickhouse_client
from shared.codec import encode_record
from shared.records import BreakerEventRecord, RequestRecord
from shared.settings import ClickHouseSettings
from shared.streams import Sink

from .conftest import dataset, drop_database, make_deliver, new_database

pytestmark = pytest.mark.integration

ACME, GLOBEX = "org-acme", "org-globex"
ACME_KEY, GLOBEX_KEY = "sk-floopy-acme", "sk-floopy-globex"
KEYS = {
    ACME_KEY: ApiKeyEntry(org_id=ACME, key_id="k-acme"),
    GLOBEX_KEY: ApiKeyEntry(org_id=GLOBEX, key_id="k-globex"),
}
Client = AsyncTestClient[Litestar]


@pytest.fixture(scope="module")
def loaded(
    clickhouse_server: ClickHouseServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ClickHouseSettings, list[RequestRecord]]]:
    ch = new_database(clickhouse_server)
    records = dataset(900, seed=5, days=2)
    client = clickhouse_client(ch)
    client.execute(f"SYSTEM STOP MERGES `{ch.database}`.`requests`")  # keep the duplicates
    deliver, delivery = make_deliver(ch, tmp_path_factory.mktemp("dead"))
    deliver(records)
    deliver(records[:400])  # redelivered: every figure must still count each record once
    events = [encode_record(e) for e in breaker_events_near(records)]
    assert delivery.deliver(Sink.BREAKER_EVENTS, events).inserted == len(events)
    delivery.close()
    (raw_rows,) = client.execute(f"SELECT count() FROM `{ch.database}`.`requests`")[0]
    client.disconnect()
    assert raw_rows == len(records) + 400  # every answer below must count each record once
    rollups = Rollups(ch, overlap_s=0)
    rollups.run_changed()
    rollups.close()
    yield ch, records
    drop_database(ch)


def breaker_events_near(records: list[RequestRecord]) -> list[BreakerEventRecord]:
    """The breaker of the first failed request's provider opens a second after it, and a
    breaker of a provider no request of that minute used opens at the same time."""
    failed = next(r for r in records if r.org_id == ACME and r.status_code == 502)
    return [
        BreakerEventRecord(
            event_id=f"ev-{provider}",
            provider=provider,
            created_at_ms=failed.created_at_ms + 1000,
            from_state="closed",
            to_state="open",
            failure_count=5,
            reason="5 failures in 30s",
        )
        for provider in (failed.provider, "provider-nobody-used")
    ]


def build_app(ch: ClickHouseSettings, redis_server: RedisServer) -> Litestar:
    """The console with the read API's keys as a gateway has them: the static key table seeded
    into the key store at start-up (``Access.seed``), each key read through the authenticator
    (opened in the app's lifespan: the test client runs the app on a loop of its own)."""
    opened: list[Authenticator] = []

    async def authenticate(token: str) -> Principal:
        return await opened[0](token)

    @asynccontextmanager
    async def keys(_: Litestar) -> AsyncIterator[None]:
        redis = Redis.from_url(redis_server.url)
        prefix = f"t{uuid.uuid4().hex[:12]}"
        try:
            await apply_seed(
                seed_from_api_keys(KEYS),
                admin_store=AdminStore(redis, prefix=prefix),
                templates=TemplateStore(redis, prefix=prefix),
                routing_config=RoutingConfigStore(redis, prefix=prefix),
                environ={},
                keep_orgs=True,
            )
            opened[:] = [reader_keys(KeyAuthenticator(redis, prefix=prefix))]
            yield
        finally:
            await redis.aclose()

    console = Console(ch, authenticate)
    return Litestar(
        route_handlers=[console.router],
        lifespan=[keys, console.lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=openapi_config(),
    )


@pytest.fixture
async def client(
    loaded: tuple[ClickHouseSettings, list[RequestRecord]], redis_server: RedisServer
) -> AsyncIterator[Client]:
    async with AsyncTestClient(app=build_app(loaded[0], redis_server)) as c:
        yield c


def window(records: list[RequestRecord]) -> dict[str, str]:
    return {"start": str(records[0].created_at_ms), "end": str(records[-1].created_at_ms + 1)}


async def all_ids(client: Client, params: dict[str, Any], key: str = ACME_KEY) -> list[str]:
    """Every request id of a filtered list, following cursors with small pages."""
    ids: list[str] = []
    cursor = None
    for _ in range(200):
        query = {**params, "limit": 37, **({"cursor": cursor} if cursor else {})}
        r = await client.get(
            "/console/api/requests", params=query, headers={"Authorization": f"Bearer {key}"}
        )
        assert r.status_code == 200, r.text
        body = r.json()
        ids += [row["request_id"] for row in body["data"]]
        cursor = body["next_cursor"]
        if not cursor:
            return ids
    raise AssertionError("pagination did not end")


def model(r: RequestRecord) -> str:
    return r.model_used or r.model_requested


def has_prop(r: RequestRecord, key: str, value: str) -> bool:
    return r.properties.get(key) == value


FILTERS: list[tuple[dict[str, Any], Callable[[RequestRecord], bool]]] = [
    ({}, lambda r: True),
    ({"model": "gpt-4o"}, lambda r: model(r) == "gpt-4o"),
    (
        {"model": ["gpt-4o", "claude-3-5-haiku"]},
        lambda r: model(r) in ("gpt-4o", "claude-3-5-haiku"),
    ),
    ({"provider": "anthropic"}, lambda r: r.provider == "anthropic"),
    ({"status": "429"}, lambda r: r.status_code == 429),
    ({"status": ["502", "504"]}, lambda r: r.status_code in (502, 504)),
    ({"error_code": "PROVIDER_ERROR"}, lambda r: r.error_code == "PROVIDER_ERROR"),
    ({"cache_status": "hit"}, lambda r: r.cache_status == "hit"),
    ({"cache_status": "hit", "cache_tier": "semantic"}, lambda r: r.cache_tier == "semantic"),
    ({"user_id": "user-0003"}, lambda r: r.user_id == "user-0003"),
    ({"session_id": "sess-org-acme-00005"}, lambda r: r.session_id == "sess-org-acme-00005"),
    ({"property": "feature:search"}, lambda r: has_prop(r, "feature", "search")),
    (
        {"property": ["feature:chat", "env=prod"]},
        lambda r: has_prop(r, "feature", "chat") and has_prop(r, "env", "prod"),
    ),
    ({"min_latency_ms": "800"}, lambda r: r.latency_ms >= 800),
    ({"max_latency_ms": "300"}, lambda r: r.latency_ms <= 300),
    ({"min_cost_usd": "0.01"}, lambda r: r.cost_usd is not None and r.cost_usd >= 0.01),
    ({"max_cost_usd": "0.0005"}, lambda r: r.cost_usd is not None and r.cost_usd <= 0.0005),
    ({"q": "REFUND"}, lambda r: "refund" in (r.request_body + r.response_body).lower()),
    ({"q": "Here is what I found about invoice"}, lambda r: "about invoice" in r.response_body),
    (
        {"model": "gpt-4o-mini", "status": "200", "cache_status": "miss", "min_latency_ms": "500"},
        lambda r: (
            model(r) == "gpt-4o-mini"
            and r.status_code == 200
            and r.cache_status == "miss"
            and r.latency_ms >= 500
        ),
    ),
]


@pytest.mark.parametrize(("params", "keep"), FILTERS, ids=[str(p) for p, _ in FILTERS])
async def test_every_requests_filter_returns_exactly_its_rows(
    client: Client,
    loaded: tuple[ClickHouseSettings, list[RequestRecord]],
    params: dict[str, Any],
    keep: Callable[[RequestRecord], bool],
) -> None:
    records = loaded[1]
    want = [r for r in records if r.org_id == ACME and keep(r)]
    assert want, "the dataset must have rows for every filter, or the test proves nothing"
    got = await all_ids(client, {**window(records), **params})
    assert len(got) == len(set(got))  # no row twice, across pages and redelivery
    expected = sorted(want, key=lambda r: (r.created_at_ms, r.request_id), reverse=True)
    assert got == [r.request_id for r in expected]


async def test_time_range_and_sort_by_latency_ascending(
    client: Client, loaded: tuple[ClickHouseSettings, list[RequestRecord]]
) -> None:
    records = loaded[1]
    mid = records[len(records) // 3].created_at_ms
    end = records[2 * len(records) // 3].created_at_ms
    got = await all_ids(client, {"start": mid, "end": end, "sort": "latency", "order": "asc"})
    want = sorted(
        (r for r in records if r.org_id == ACME and mid <= r.created_at_ms < end),
        key=lambda r: (r.latency_ms, r.request_id),
    )
    assert got == [r.request_id for r in want]


async def test_one_request_in_full_with_spans(
    client: Client, loaded: tuple[ClickHouseSettings, list[RequestRecord]]
) -> None:
    record = next(r for r in loaded[1] if r.org_id == ACME and r.status_code == 200)
    r = await client.get(
        f"/console/api/requests/{record.request_id}",
        params={"at": record.created_at_ms},
        headers={"Authorization": f"Bearer {ACME_KEY}"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["request"]["request_body"] == record.request_body
    assert body["request"]["response_body"] == record.response_body
    assert body["request"]["stage_latency_ms"] == record.stage_latency_ms
    assert body["request"]["properties"] == record.properties
    assert body["request"]["prompt_tokens"] == record.prompt_tokens
    assert [s["name"] for s in body["spans"]] == list(record.stage_latency_ms)
    no_hint = await client.get(
        f"/console/api/requests/{record.request_id}",
        headers={"Authorization": f"Bearer {ACME_KEY}"},
    )
    assert no_hint.json()["request"]["request_id"] == record.request_id


async def test_one_failed_request_shows_firewall_retries_and_breaker_events(
    client: Client, loaded: tuple[ClickHouseSettings, list[RequestRecord]]
) -> None:
    failed = next(r for r in loaded[1] if r.org_id == ACME and r.status_code == 502)
    r = await client.get(
        f"/console/api/requests/{failed.request_id}",
        headers={"Authorization": f"Bearer {ACME_KEY}"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    got = body["request"]
    assert (got["error_code"], got["error_message"]) == (failed.error_code, failed.error_message)
    assert got["providers_tried"] == failed.providers_tried and got["retries"] == 1
    assert got["firewall_verdict"] == failed.firewall_verdict
    assert got["firewall_score"] == pytest.approx(failed.firewall_score)
    assert got["firewall_model_ref"] == failed.firewall_model_ref
    assert [(e["provider"], e["to_state"]) for e in body["breaker_events"]] == [
        (failed.provider, "open")
    ]
    spans = {s["name"]: s for s in body["spans"]}
    assert spans["provider"]["status"] == "error"
    assert spans["provider"]["duration_ms"] == pytest.approx(failed.stage_latency_ms["provider"])


async def test_metrics_from_rollups_equal_raw_totals(
    client: Client, loaded: tuple[ClickHouseSettings, list[RequestRecord]]
) -> None:
    records = loaded[1]
    start = records[0].created_at_ms // 3_600_000 * 3_600_000
    end = (records[-1].created_at_ms // 86_400_000 + 1) * 86_400_000
    acme = [r for r in records if r.org_id == ACME]
    for bucket in ("1h", "1d"):
        r = await client.get(
            "/console/api/metrics",
            params={"start": start, "end": end, "bucket": bucket},
            headers={"Authorization": f"Bearer {ACME_KEY}"},
        )
        assert r.status_code == 200, r.text
        totals = r.json()["totals"]
        assert totals["requests"] == len(acme)
        assert totals["cost_usd"] == pytest.approx(sum(x.cost_usd or 0 for x in acme))
        assert totals["total_tokens"] == sum(x.total_tokens for x in acme)
        errors = sum(1 for x in acme if x.status_code >= 400 or x.error_code)
        assert totals["errors"] == errors


async def test_sessions_users_properties(
    client: Client, loaded: tuple[ClickHouseSettings, list[RequestRecord]]
) -> None:
    records = loaded[1]
    acme = [r for r in records if r.org_id == ACME]
    h = {"Authorization": f"Bearer {ACME_KEY}"}
    span = {
        "start": records[0].created_at_ms // 86_400_000 * 86_400_000,
        "end": (records[-1].created_at_ms // 86_400_000 + 1) * 86_400_000,
    }
    sessions = (
        await client.get("/console/api/sessions", params={**span, "limit": 200}, headers=h)
    ).json()
    by_id = {s["session_id"]: s for s in sessions["data"]}
    sid = acme[0].session_id
    mine = [r for r in acme if r.session_id == sid]
    assert by_id[sid]["requests"] == len(mine)
    assert by_id[sid]["duration_ms"] == mine[-1].created_at_ms - mine[0].created_at_ms
    one = (await client.get(f"/console/api/sessions/{sid}", headers=h)).json()
    assert [x["request_id"] for x in one["requests"]] == [x.request_id for x in mine]

    users = (
        await client.get("/console/api/users", params={**span, "limit": 200}, headers=h)
    ).json()
    got = {u["user_id"]: u["requests"] for u in users["data"]}
    want: dict[str, int] = {}
    for r in acme:
        if r.user_id:
            want[r.user_id] = want.get(r.user_id, 0) + 1
    assert got == want
    timeline = (await client.get("/console/api/users/user-0003", params=span, headers=h)).json()
    assert sum(p["requests"] for p in timeline["series"]) == want["user-0003"]

    keys = (await client.get("/console/api/properties", params=span, headers=h)).json()
    assert {k["property_key"] for k in keys["data"]} == {"feature", "env"}
    values = (await client.get("/console/api/properties/feature", params=span, headers=h)).json()
    cost = {v["property_value"]: v["cost_usd"] for v in values["data"]}
    assert cost["search"] == pytest.approx(
        sum(r.cost_usd or 0 for r in acme if r.properties["feature"] == "search")
    )
    series = (
        await client.get("/console/api/properties/feature/series", params=span, headers=h)
    ).json()
    assert sum(p["requests"] for p in series["data"]) == len(acme)


async def test_another_orgs_ids_and_filters_return_nothing(
    client: Client, loaded: tuple[ClickHouseSettings, list[RequestRecord]]
) -> None:
    records = loaded[1]
    acme_record = next(r for r in records if r.org_id == ACME)
    g = {"Authorization": f"Bearer {GLOBEX_KEY}"}
    r = await client.get(f"/console/api/requests/{acme_record.request_id}", headers=g)
    assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"
    r = await client.get(
        f"/console/api/requests/{acme_record.request_id}",
        params={"at": acme_record.created_at_ms},
        headers=g,
    )
    assert r.status_code == 404
    r = await client.get(f"/console/api/sessions/{acme_record.session_id}", headers=g)
    assert r.status_code == 404
    ids = await all_ids(
        client, {**window(records), "session_id": acme_record.session_id}, key=GLOBEX_KEY
    )
    assert ids == []
    globex_ids = {r.request_id for r in records if r.org_id == GLOBEX}
    everything = await all_ids(client, window(records), key=GLOBEX_KEY)
    assert set(everything) == globex_ids
    by_user = await all_ids(client, {**window(records), "user_id": "user-0003"}, key=GLOBEX_KEY)
    assert by_user and set(by_user) <= globex_ids


async def test_auth_and_bad_input_are_json_errors(client: Client) -> None:
    r = await client.get("/console/api/requests")
    assert r.status_code == 401 and r.json()["error"]["code"] == "INVALID_API_KEY"
    r = await client.get("/console/api/requests", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    h = {"Authorization": f"Bearer {ACME_KEY}"}
    forged = encode_cursor(["1 OR 1=1", "x"])
    for params in (
        {"sort": "drop table"},
        {"cursor": "!!"},
        {"cursor": forged},
        {"cursor": encode_cursor([True, "x"])},
        {"limit": "0"},
        {"start": "x"},
    ):
        r = await client.get("/console/api/requests", params=params, headers=h)
        assert r.status_code == 400, (params, r.text)
        assert r.json()["error"]["code"] == "BAD_REQUEST"
    r = await client.get("/console/api/metrics", params={"bucket": "90m"}, headers=h)
    assert r.status_code == 400


async def test_openapi_spec_lists_the_read_api(client: Client) -> None:
    r = await client.get("/schema/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    read_api = {p: ops["get"] for p, ops in spec["paths"].items() if p.startswith("/console/api")}
    assert set(read_api) == {
        "/console/api/requests",
        "/console/api/requests/export",
        "/console/api/requests/{request_id}",
        "/console/api/sessions",
        "/console/api/sessions/{session_id}",
        "/console/api/users",
        "/console/api/users/{user_id}",
        "/console/api/properties",
        "/console/api/properties/{key}",
        "/console/api/properties/{key}/series",
        "/console/api/metrics",
    }
    assert spec["components"]["securitySchemes"]["BearerAuth"]["scheme"] == "bearer"
    for op in read_api.values():
        assert op["security"] == [{"BearerAuth": []}]
        assert {"400", "401", "403", "503"} <= set(op["responses"])
    assert "404" in read_api["/console/api/requests/{request_id}"]["responses"]
    documented = {
        p["name"]: p.get("description", "") for p in read_api["/console/api/requests"]["parameters"]
    }
    filters: tuple[str, ...]
    filters = ("model", "provider", "status", "error_code", "cache_status", "cache_tier", "user_id")
    filters += ("session_id", "property", "min_latency_ms", "max_cost_usd", "q", "sort", "cursor")
    assert all(documented[name] for name in filters)
    exported = {p["name"] for p in read_api["/console/api/requests/export"]["parameters"]}
    assert {*filters, "format", "start", "end"} - {"cursor"} <= exported


async def test_sessions_pages_are_the_latest_sessions_with_whole_range_figures(
    client: Client, loaded: tuple[ClickHouseSettings, list[RequestRecord]]
) -> None:
    """Small pages are filled from the last hour or day of the range (see ``recent_windows``);
    the order and the figures must still be those of the whole range."""
    records = loaded[1]
    tr = {"start": records[0].created_at_ms, "end": records[-1].created_at_ms + 1}
    sessions: dict[str, list[RequestRecord]] = {}
    for record in records:
        if record.org_id == ACME:
            sessions.setdefault(record.session_id, []).append(record)
    want = sorted(
        (
            (
                sid,
                rs[-1].created_at_ms,
                len(rs),
                rs[0].created_at_ms,
                sum(r.total_tokens for r in rs),
                rs[-1].session_name,
            )
            for sid, rs in sessions.items()
        ),
        key=lambda s: (-s[1], s[0]),
    )
    got: list[tuple[str, int, int, int, int, str]] = []
    cursor = None
    for _ in range(100):
        params = {**tr, "limit": 7, **({"cursor": cursor} if cursor else {})}
        r = await client.get(
            "/console/api/sessions", params=params, headers={"Authorization": f"Bearer {ACME_KEY}"}
        )
        assert r.status_code == 200, r.text
        body = r.json()
        got += [
            (
                s["session_id"],
                s["last_ms"],
                s["requests"],
                s["first_ms"],
                s["total_tokens"],
                s["name"],
            )
            for s in body["data"]
        ]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert got == want
