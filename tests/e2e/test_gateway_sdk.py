"""The gateway as users run it: granian subprocess, fake provider subprocess, real Redis, and the
official ``openai`` SDK as the client."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import httpx
import openai
import pytest
import redis
from openai.types.chat import ChatCompletionMessageParam

from devstack.gateway_process import FakeProviderProcess, GatewayProcess
from devstack.servers import RedisServer
from shared.codec import decode_record
from shared.records import RequestRecord
from shared.streams import RECORD_FIELD, Sink, stream_key

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

KEY = "sk-floopy-e2e"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]
MAX_BODY = 50_000


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, str]]:
    logs: Path = tmp_path_factory.mktemp("gateway-e2e")
    prefix = f"e2e{uuid.uuid4().hex[:8]}"
    fake = FakeProviderProcess(logs)
    fake.start()
    gateway = GatewayProcess(
        logs,
        redis_url=redis_server.url,
        provider_url=fake.base_url,
        api_keys={KEY: {"org_id": "org-e2e", "key_id": "key-e2e"}},
        extra_env={
            "FLOOPY_GATEWAY_REDIS__KEY_PREFIX": prefix,
            "FLOOPY_GATEWAY_MAX_BODY_BYTES": str(MAX_BODY),
        },
    )
    try:
        gateway.start()
        yield gateway, prefix
    finally:
        gateway.stop()
        fake.stop()


@pytest.fixture
def sdk(stack: tuple[GatewayProcess, str]) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=stack[0].base_url, api_key=KEY, max_retries=0, timeout=10)
    yield client
    client.close()


def _record(redis_server: RedisServer, prefix: str, request_id: str) -> RequestRecord:
    client = redis.Redis.from_url(redis_server.url)
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            entries = cast(
                list[tuple[bytes, dict[bytes, bytes]]],
                client.xrange(stream_key(Sink.REQUESTS, prefix)),
            )
            for _, fields in entries:
                record = decode_record(Sink.REQUESTS, fields[RECORD_FIELD])
                if record.request_id == request_id:
                    return record
            time.sleep(0.05)
    finally:
        client.close()
    raise AssertionError(f"no record for {request_id}")


HEADERS = {
    "floopy-user-id": "user-1",
    "floopy-session-id": "sess-1",
    "floopy-session-name": "Onboarding",
    "floopy-session-path": "/signup/welcome",
    "floopy-property-Team": "growth",
    "floopy-property-env": "e2e",
}


def test_completion_through_the_sdk(
    sdk: openai.OpenAI, stack: tuple[GatewayProcess, str], redis_server: RedisServer
) -> None:
    raw = sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        extra_headers=HEADERS,
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.total_tokens > 0
    assert raw.headers["floopy-provider"] == "openai"
    assert raw.headers["floopy-model"] == "gpt-4o-mini"
    record = _record(redis_server, stack[1], raw.headers["floopy-request-id"])
    assert (record.status_code, record.org_id, record.api_key_id) == (200, "org-e2e", "key-e2e")
    assert record.total_tokens == completion.usage.total_tokens
    assert (record.user_id, record.session_id, record.session_name) == (
        "user-1",
        "sess-1",
        "Onboarding",
    )
    assert record.session_path == "/signup/welcome"
    assert record.properties == {"team": "growth", "env": "e2e"}


def test_streaming_through_the_sdk(
    sdk: openai.OpenAI, stack: tuple[GatewayProcess, str], redis_server: RedisServer
) -> None:
    raw = sdk.chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=MESSAGES,
        stream=True,
        extra_headers=HEADERS,
    )
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("Hello from the fake provider")
    assert all(c.usage is None for c in chunks)  # usage was not asked for, so not forwarded
    record = _record(redis_server, stack[1], raw.headers["floopy-request-id"])
    assert record.stream and record.status_code == 200
    assert record.completion_tokens > 0 and record.time_to_first_token_ms > 0
    assert record.properties == {"team": "growth", "env": "e2e"}
    assert text in record.response_body


def test_streaming_with_usage_asked_for(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_bad_key_is_a_401_for_the_sdk(stack: tuple[GatewayProcess, str]) -> None:
    client = openai.OpenAI(base_url=stack[0].base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    client.close()
    assert caught.value.status_code == 401
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "INVALID_API_KEY"


def test_sdk_sees_provider_failures_as_structured_errors(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.chat.completions.create(model="fake-status-500", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "PROVIDER_ERROR"


JSON = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("content", "headers", "status", "says"),
    [
        (b'{"model": "gpt-4o", "messages": [', JSON, 400, "not valid JSON"),
        (b'{"messages": [{"role":"user","content":"x"}]}', JSON, 400, "`model`"),
        (b'{"model": "gpt-4o"}', JSON, 400, "`messages`"),
        (b'{"model": "gpt-4o", "messages": []}', JSON, 400, "must not be empty"),
        (b'"just a string"', JSON, 400, "Expected `object`"),
        (
            b'{"model":"gpt-4o","messages":[{}]}',
            {**JSON, "Content-Type": "text/plain"},
            400,
            "Content-Type",
        ),
        (b"x" * (MAX_BODY + 1), JSON, 413, "over the limit"),
        (
            b'{"model":"gpt-4o","messages":[{}]}',
            {**JSON, "floopy-user-id": "u" * 300},
            400,
            "floopy-user-id",
        ),
        (
            b'{"model":"gpt-4o","messages":[{}]}',
            {**JSON, "floopy-session-path": "nope"},
            400,
            "start with",
        ),
        (
            b'{"model":"gpt-4o","messages":[{}]}',
            {**JSON, "floopy-property-a*b": "x"},
            400,
            "property",
        ),
        (
            b'{"model":"gpt-4o","messages":[{}]}',
            {**JSON, "floopy-user-id": b"caf\xc3\xa9"},
            400,
            "ASCII",
        ),
        (
            b'{"model":"gpt-4o","messages":[{}]}',
            {"Content-Type": "application/json"},
            401,
            "API key",
        ),
    ],
)
def test_client_mistakes_are_structured_4xx_never_500(
    stack: tuple[GatewayProcess, str],
    content: bytes,
    headers: dict[str, str | bytes],
    status: int,
    says: str,
) -> None:
    # httpx takes a header value as str or bytes, its types one kind per mapping: this one mixes
    response = httpx.post(
        f"{stack[0].base_url}/chat/completions",
        content=content,
        headers=headers,  # type: ignore[arg-type]
    )
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] in {"BAD_REQUEST", "INVALID_API_KEY"}
    assert says in error["message"]
    assert response.headers["floopy-request-id"] == error["request_id"]


def test_health_is_public(stack: tuple[GatewayProcess, str]) -> None:
    health = httpx.get(f"http://127.0.0.1:{stack[0].port}/health").json()
    assert health["status"] == "ok" and health["redis"]["reachable"] is True
