"""The app in-process (litestar's test client) against the fake provider and real Redis: one
record per request, with the right fields, for successes, streams and failures."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from pydantic import SecretStr
from redis.asyncio import Redis

from devstack.fake_openai import FakeOpenAIThread
from devstack.servers import RedisServer
from gateway.app import create_app
from gateway.clients.admin_store import AdminStore
from gateway.policy.keys import Permission
from gateway.settings import ApiKeyEntry, GatewaySettings, ProviderSettings
from shared.codec import decode_record, decode_records
from shared.records import RequestRecord, SpanRecord
from shared.settings import RedisSettings
from shared.streams import RECORD_FIELD, Sink, stream_key

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

KEY = "sk-floopy-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def settings(redis_server: RedisServer, fake: FakeOpenAIThread) -> GatewaySettings:
    return GatewaySettings(
        redis=RedisSettings(url=redis_server.url, key_prefix=f"t{uuid.uuid4().hex[:10]}"),
        provider=ProviderSettings(base_url=fake.base_url, api_key=SecretStr("sk-up"), timeout_s=2),
        api_keys={KEY: ApiKeyEntry(org_id="org-1", key_id="key-1")},
        max_body_bytes=10_000,
    )


@pytest.fixture
async def client(settings: GatewaySettings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(app=create_app(settings)) as test_client:
        yield test_client


async def _records(settings: GatewaySettings, count: int) -> list[RequestRecord]:
    redis = Redis.from_url(settings.redis.url)
    key = stream_key(Sink.REQUESTS, settings.redis.key_prefix)
    try:
        async with asyncio.timeout(10):
            while await redis.xlen(key) < count:  # noqa: ASYNC110 - polling another process's writes
                await asyncio.sleep(0.02)
        entries = await redis.xrange(key)
    finally:
        await redis.aclose()
    return [decode_record(Sink.REQUESTS, fields[RECORD_FIELD]) for _, fields in entries]


async def _spans(settings: GatewaySettings) -> list[SpanRecord]:
    redis = Redis.from_url(settings.redis.url)
    try:
        entries = await redis.xrange(stream_key(Sink.SPANS, settings.redis.key_prefix))
    finally:
        await redis.aclose()
    return [
        cast(SpanRecord, span)
        for _, fields in entries
        for span in decode_records(Sink.SPANS, fields[RECORD_FIELD])
    ]


async def test_completion_record(client: AsyncTestClient[Any], settings: GatewaySettings) -> None:
    headers = {
        **AUTH,
        "floopy-user-id": "u-7",
        "floopy-session-id": "s-1",
        "floopy-property-Plan": "pro",
    }
    response = await client.post("/v1/chat/completions", json=BODY, headers=headers)
    assert response.status_code == 200
    assert response.json()["object"] == "chat.completion"
    request_id = response.headers["floopy-request-id"]
    assert response.headers["floopy-provider"] == "openai"
    assert response.headers["floopy-model"] == "gpt-4o-mini"
    [record] = await _records(settings, 1)
    assert record.request_id == request_id
    assert (record.org_id, record.api_key_id, record.status_code) == ("org-1", "key-1", 200)
    assert (record.model_requested, record.model_used, record.provider) == ("gpt-4o-mini",) * 2 + (
        "openai",
    )
    assert record.total_tokens == record.prompt_tokens + record.completion_tokens > 0
    assert (record.user_id, record.session_id, record.properties) == ("u-7", "s-1", {"plan": "pro"})
    stages = {
        "auth",
        "intake",
        "rate_limit",
        "template",
        "cache",
        "firewall",
        "routing",
        "dispatch",
    }
    assert set(record.stage_latency_ms) == stages
    # no FIREWALL_MODEL configured: the firewall says so rather than pretending to screen
    assert (record.firewall_verdict, record.firewall_reason) == ("skipped", "no_model")
    assert record.latency_ms >= record.stage_latency_ms["dispatch"] > 0
    assert msgspec.json.decode(record.request_body) == BODY
    assert "Hello from the fake provider" in record.response_body
    assert record.providers_tried == ["openai"]
    spans = await _spans(settings)
    assert stages <= {s.name for s in spans}
    assert {s.request_id for s in spans} == {request_id}
    [attempt] = [s for s in spans if s.name == "provider_attempt"]
    assert attempt.attributes == {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "outcome": "ok",
        "attempt": "1",
    }


async def test_stream_record_has_usage_and_ttft(
    client: AsyncTestClient[Any], settings: GatewaySettings
) -> None:
    response = await client.post(
        "/v1/chat/completions", json={**BODY, "stream": True}, headers=AUTH
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    text = response.text
    assert text.rstrip().endswith("data: [DONE]")
    assert '"choices":[]' not in text  # the caller did not ask for the usage chunk
    [record] = await _records(settings, 1)
    assert record.stream and record.status_code == 200 and record.error_message == ""
    assert record.completion_tokens > 0 and record.total_tokens > 0
    assert 0 < record.time_to_first_token_ms <= record.latency_ms
    assert "Hello from the fake provider. This answer is canned." in record.response_body


async def test_stream_usage_chunk_reaches_a_caller_who_asked(client: AsyncTestClient[Any]) -> None:
    body = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
    response = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert '"choices":[]' in response.text and '"total_tokens"' in response.text


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (BODY, {"Authorization": "Bearer nope"}, 401, "INVALID_API_KEY"),
        (BODY, {}, 401, "INVALID_API_KEY"),
        ({"messages": [{}]}, AUTH, 400, "BAD_REQUEST"),
        ({**BODY, "model": "fake-status-503"}, AUTH, 502, "PROVIDER_ERROR"),
        ({**BODY, "model": "no-such-model"}, AUTH, 400, "BAD_REQUEST"),
        ({**BODY, "model": "fake-delay-3000"}, AUTH, 504, "GATEWAY_TIMEOUT"),
        ({**BODY, "model": "fake-drop"}, AUTH, 502, "PROVIDER_ERROR"),
        ({**BODY, "pad": "x" * 20_000}, AUTH, 413, "BAD_REQUEST"),
        (BODY, {**AUTH, "floopy-user-id": "x" * 300}, 400, "BAD_REQUEST"),
    ],
)
async def test_failures_are_structured_and_recorded(  # noqa: PLR0917 - parametrised
    client: AsyncTestClient[Any],
    settings: GatewaySettings,
    body: dict[str, Any],
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    response = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    [record] = await _records(settings, 1)
    assert (record.status_code, record.error_code) == (status, code)
    assert record.request_id == response.headers["floopy-request-id"] == error["request_id"]


async def test_health_reports_redis_and_counters(
    client: AsyncTestClient[Any], settings: GatewaySettings
) -> None:
    """Liveness for anyone; the counters (every tenant's traffic) for an operator's admin key."""
    await client.post("/v1/chat/completions", json=BODY, headers=AUTH)
    public = (await client.get("/health")).json()
    assert public == {"status": "ok", "redis": {"reachable": True}}
    assert (await client.get("/health", headers=AUTH)).json() == public  # a proxy key: no more
    settings.operator_orgs = ["org-1"]
    redis = Redis.from_url(settings.redis.url)  # the app runs on the test client's own loop
    try:
        admin_store = AdminStore(redis, prefix=settings.redis.key_prefix)
        new, _ = await admin_store.create_key("org-1", permissions=frozenset({Permission.ADMIN}))
    finally:
        await redis.aclose()
    health = (await client.get("/health", headers={"Authorization": f"Bearer {new.secret}"})).json()
    assert health["redis"]["reachable"] is True
    assert set(health["publisher"]) >= {"buffered", "published", "dropped"}


async def test_a_response_that_fails_after_dispatch_still_leaves_its_record(
    settings: GatewaySettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10: a provider's model name the response header cannot carry failed the response
    after dispatch, and the record (and usage) went with it. Header text is made safe now; with
    that switched off here, the guard's after-response hook must still publish the record."""
    from gateway import routes

    monkeypatch.setattr(routes, "header_text", lambda value: value)
    settings.routes = {"unicode-route": ["openai/fake-模型"]}
    body = {"model": "unicode-route", "messages": [{"role": "user", "content": "hi"}]}
    async with AsyncTestClient(app=create_app(settings)) as client:
        response = await client.post("/v1/chat/completions", json=body, headers=AUTH)
        assert response.status_code >= 500
    [record] = await _records(settings, 1)
    assert record.model_used == "fake-模型" and record.total_tokens > 0
    assert record.status_code == 502


async def test_the_api_spec_lists_the_proxied_routes(client: AsyncTestClient[Any]) -> None:
    """They are plain ASGI endpoints in front of Litestar, so its own spec misses them."""
    from gateway.routes import proxy_endpoints
    from gateway.services import Opened

    spec = (await client.get("/schema/openapi.json")).json()
    proxied = set(proxy_endpoints(Opened()))
    assert proxied <= set(spec["paths"])
    assert "/console/api/requests" in spec["paths"]  # Litestar's own routes are still there
    for path in proxied:
        operation = spec["paths"][path]["post"]
        assert operation["security"] == [{"BearerAuth": []}]
        assert {"400", "401", "429", "502"} <= set(operation["responses"])
        headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
        assert "floopy-user-id" in headers
    chat = spec["paths"]["/v1/chat/completions"]["post"]
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert chat["requestBody"]["content"]["application/json"]["schema"]["required"] == [
        "model",
        "messages",
    ]
