"""Translation OpenAI ⇄ Anthropic: pure cases, then against the fake server's real output and
through the openai SDK's own parsers (the fake server runs in-process on loopback)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import msgspec
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import SecretStr

from devstack.fake_anthropic import (
    REPLY_TEXT,
    TOOL_INPUT,
    TOOL_PREAMBLE,
    FakeAnthropic,
    stream_events,
)
from devstack.servers import free_port
from gateway.clients.providers.anthropic import AnthropicProvider
from gateway.domain import ChatRequest
from gateway.policy.anthropic import (
    DEFAULT_MAX_TOKENS,
    StreamTranslator,
    to_anthropic_request,
    to_openai_response,
    translate_stream,
)
from gateway.policy.prices import PriceBook
from gateway.policy.upstream_errors import public_error
from gateway.settings import ProviderSettings
from shared.errors import BadRequestError, GatewayTimeoutError, ProviderError, UpstreamError

MODEL = "claude-3-5-haiku-latest"
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the docs",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    }
]

# -- request translation ------------------------------------------------------------------


def test_request_basics() -> None:
    out = to_anthropic_request(
        {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use English."}]},
                {"role": "user", "content": "Hi"},
                {"role": "user", "content": "there"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Bye"},
            ],
            "temperature": 0.2,
            "top_p": 0.9,
            "stop": "END",
            "user": "u-1",
            "frequency_penalty": 0.5,  # no equivalent: dropped
        }
    )
    assert out == {
        "model": MODEL,
        "system": "Be brief.\n\nUse English.",
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
            {"role": "user", "content": [{"type": "text", "text": "Bye"}]},
        ],
        "max_tokens": DEFAULT_MAX_TOKENS,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"},
    }


def test_max_tokens_precedence_and_model_override() -> None:
    msgs = [{"role": "user", "content": "x"}]
    assert to_anthropic_request({"messages": msgs, "max_tokens": 5})["max_tokens"] == 5
    both = {"messages": msgs, "max_tokens": 5, "max_completion_tokens": 7, "model": "a"}
    out = to_anthropic_request(both, model="b", default_max_tokens=9)
    assert (out["max_tokens"], out["model"]) == (7, "b")
    assert to_anthropic_request({"messages": msgs}, default_max_tokens=9)["max_tokens"] == 9


def test_tools_calls_and_results() -> None:
    out = to_anthropic_request(
        {
            "model": MODEL,
            "tools": TOOLS,
            "tool_choice": "required",
            "messages": [
                {"role": "user", "content": "find x"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "search", "arguments": '{"query": "x"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "found"},
            ],
        }
    )
    assert out["tools"] == [
        {
            "name": "search",
            "description": "Search the docs",
            "input_schema": TOOLS[0]["function"]["parameters"],
        }
    ]
    assert out["tool_choice"] == {"type": "any"}
    assert out["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "call_1", "name": "search", "input": {"query": "x"}}
        ],
    }
    assert out["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "found"}],
    }


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ({"type": "function", "function": {"name": "search"}}, {"type": "tool", "name": "search"}),
    ],
)
def test_tool_choice(choice: Any, expected: dict[str, str]) -> None:
    body = {"messages": [{"role": "user", "content": "x"}], "tools": TOOLS, "tool_choice": choice}
    assert to_anthropic_request(body)["tool_choice"] == expected


def test_images() -> None:
    parts = [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}},
    ]
    blocks = to_anthropic_request({"messages": [{"role": "user", "content": parts}]})["messages"][
        0
    ]["content"]
    assert blocks[1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
    }
    assert blocks[2] == {
        "type": "image",
        "source": {"type": "url", "url": "https://example.invalid/cat.png"},
    }


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "system", "content": "x"}]}, "user or assistant"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "n > 1"),
        ({"messages": [{"role": "function", "content": "x"}]}, "'function' is not supported"),
        ({"messages": ["hi"]}, "must be an object"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "'input_audio'"),
        (
            {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search"}]},
            "only function tools",
        ),
        (
            {"messages": [{"role": "user", "content": "x"}], "tool_choice": "sometimes"},
            "tool_choice",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"function": {"name": "f", "arguments": "{"}}],
                    }
                ]
            },
            "not valid JSON",
        ),
    ],
)
def test_untranslatable_requests_are_400(body: dict[str, Any], problem: str) -> None:
    with pytest.raises(BadRequestError, match=problem.replace("(", r"\(")):
        to_anthropic_request(body)


# -- response translation -----------------------------------------------------------------


def message(**changes: Any) -> dict[str, Any]:
    base = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 10,
            "cache_creation_input_tokens": 4,
            "cache_read_input_tokens": 6,
            "output_tokens": 3,
        },
    }
    return {**base, **changes}


def test_response_text_and_usage_with_cache_tokens() -> None:
    body, usage = to_openai_response(message(), created=123)
    parsed = ChatCompletion.model_validate(body)
    assert parsed.choices[0].message.content == "Hi there"
    assert parsed.choices[0].finish_reason == "stop"
    assert parsed.usage is not None and parsed.usage.prompt_tokens == 20
    assert parsed.usage.prompt_tokens_details is not None
    assert parsed.usage.prompt_tokens_details.cached_tokens == 6
    assert (usage.completion_tokens, usage.total_tokens, usage.cache_write_tokens) == (3, 23, 4)


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("max_tokens", "length"),
        ("stop_sequence", "stop"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
def test_finish_reasons(reason: str, finish: str) -> None:
    assert (
        to_openai_response(message(stop_reason=reason))[0]["choices"][0]["finish_reason"] == finish
    )


def test_response_tool_use() -> None:
    content = [{"type": "tool_use", "id": "toolu_1", "name": "search", "input": {"query": "x"}}]
    body, _ = to_openai_response(message(content=content, stop_reason="tool_use"))
    parsed = ChatCompletion.model_validate(body)
    assert parsed.choices[0].message.content is None
    [call] = parsed.choices[0].message.tool_calls or []
    assert call.id == "toolu_1" and call.function.name == "search"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"query": "x"}  # type: ignore[union-attr]


# -- streams from the fake's real event sequence ------------------------------------------


def chunks_of(lines: list[bytes]) -> tuple[list[ChatCompletionChunk], bool]:
    chunks, done = [], False
    for line in lines:
        assert line.startswith(b"data: ") and line.endswith(b"\n\n")
        data = line[6:-2]
        if data == b"[DONE]":
            done = True
        else:
            chunks.append(ChatCompletionChunk.model_validate_json(data))
    return chunks, done


def fake_message(content: list[dict[str, Any]], reason: str = "end_turn") -> dict[str, Any]:
    return message(content=content, stop_reason=reason)


def test_text_stream_becomes_openai_chunks_with_usage() -> None:
    events = stream_events(fake_message([{"type": "text", "text": REPLY_TEXT}]))
    names = [e for e, _ in events]
    assert names[:4] == ["message_start", "content_block_start", "ping", "content_block_delta"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    chunks, done = chunks_of(list(translate_stream(events, created=1)))
    assert done
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY_TEXT
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["stop"]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (20, 3, 23)
    assert all(c.id == "msg_1" and c.model == MODEL for c in chunks)


def test_stream_without_usage_chunk_when_not_asked() -> None:
    events = stream_events(fake_message([{"type": "text", "text": "ok"}]))
    translator = StreamTranslator(include_usage=False)
    chunks, done = chunks_of([line for e, d in events for line in translator.feed(e, d)])
    assert done and all(c.usage is None for c in chunks)
    assert translator.usage.completion_tokens == 3 and translator.completed  # still known


def test_tool_stream_becomes_tool_call_deltas() -> None:
    content: list[dict[str, Any]] = [
        {"type": "text", "text": TOOL_PREAMBLE},
        {"type": "tool_use", "id": "toolu_9", "name": "search", "input": TOOL_INPUT},
    ]
    chunks, done = chunks_of(
        list(translate_stream(stream_events(fake_message(content, "tool_use"))))
    )
    assert done
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert (
        calls[0].id == "toolu_9"
        and calls[0].function is not None
        and calls[0].function.name == "search"
    )
    assert all(tc.index == 0 for tc in calls)
    arguments = "".join(tc.function.arguments or "" for tc in calls if tc.function)
    assert json.loads(arguments) == TOOL_INPUT
    assert [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ] == ["tool_calls"]


def test_error_event_ends_stream_with_openai_error() -> None:
    events = stream_events(fake_message([{"type": "text", "text": "a b"}]), fail_midway=True)
    translator = StreamTranslator()
    lines = [line for e, d in events for line in translator.feed(e, d)]
    assert json.loads(lines[-1][6:]) == {
        "error": {"message": "Overloaded", "type": "overloaded_error", "code": None}
    }
    assert not translator.completed and translator.error is not None
    assert b"data: [DONE]\n\n" not in lines


def test_unknown_and_ping_events_say_nothing() -> None:
    translator = StreamTranslator()
    assert translator.feed("ping", {"type": "ping"}) == []
    assert translator.feed("future_event", {"type": "future_event"}) == []


# -- against the fake server over HTTP ----------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    server = await FakeAnthropic().start()
    yield server
    await server.stop()


@pytest.fixture
async def provider(fake: FakeAnthropic) -> AsyncIterator[AnthropicProvider]:
    settings = ProviderSettings(
        name="anthropic", base_url=fake.base_url, api_key=SecretStr("sk-ant-test"), timeout_s=5
    )
    client = AnthropicProvider(settings)
    await client.open()
    yield client
    await client.aclose()


def chat(body: dict[str, Any]) -> ChatRequest:
    return ChatRequest(
        raw=msgspec.json.encode(body), model=body["model"], stream=bool(body.get("stream"))
    )


async def test_fake_server_errors_have_anthropic_shape(fake: FakeAnthropic) -> None:
    url = fake.base_url + "/v1/messages"
    ok_headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    body = {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as session:
        cases = [
            ({}, body, 401, "authentication_error"),
            ({"x-api-key": "k"}, body, 400, "invalid_request_error"),
            (ok_headers, {**body, "max_tokens": 0}, 400, "invalid_request_error"),
            (
                ok_headers,
                {k: v for k, v in body.items() if k != "max_tokens"},
                400,
                "invalid_request_error",
            ),
            (ok_headers, {**body, "model": "claude-nope"}, 404, "not_found_error"),
            (ok_headers, {**body, "model": "fake-status-529"}, 529, "overloaded_error"),
        ]
        for headers, payload, status, kind in cases:
            async with session.post(url, json=payload, headers=headers) as response:
                answer = await response.json()
                assert response.status == status and response.headers["request-id"].startswith(
                    "req_"
                )
                assert answer["type"] == "error" and answer["error"]["type"] == kind
        headers = {**ok_headers, "x-fake-cache-read-tokens": "7"}
        async with session.post(url, json=body, headers=headers) as response:
            reply = await response.json()
    _, usage = to_openai_response(reply)
    assert (
        usage.cached_prompt_tokens == 7
        and usage.prompt_tokens == reply["usage"]["input_tokens"] + 7
    )


async def test_complete_through_the_fake(provider: AnthropicProvider, fake: FakeAnthropic) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "stop": ["canned"],
    }
    reply = await provider.complete(chat(body))
    parsed = ChatCompletion.model_validate_json(reply.body)
    assert parsed.choices[0].message.content == REPLY_TEXT[: REPLY_TEXT.index("canned")]
    assert parsed.choices[0].finish_reason == "stop" and reply.model == MODEL
    assert reply.usage is not None and reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    sent = fake.requests[-1]
    assert (
        sent["system"] == "Be brief."
        and sent["max_tokens"] == DEFAULT_MAX_TOKENS
        and sent["stream"] is False
    )


async def test_max_tokens_cut_maps_to_length(provider: AnthropicProvider) -> None:
    reply = await provider.complete(
        chat({"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]})
    )
    parsed = ChatCompletion.model_validate_json(reply.body)
    assert parsed.choices[0].finish_reason == "length" and reply.usage is not None
    assert reply.usage.completion_tokens == 2


async def test_tool_round_trip_through_the_fake(provider: AnthropicProvider) -> None:
    first = {"model": MODEL, "tools": TOOLS, "messages": [{"role": "user", "content": "find x"}]}
    parsed = ChatCompletion.model_validate_json((await provider.complete(chat(first))).body)
    assert parsed.choices[0].finish_reason == "tool_calls"
    [call] = parsed.choices[0].message.tool_calls or []
    assert json.loads(call.function.arguments) == TOOL_INPUT  # type: ignore[union-attr]
    second = {
        **first,
        "messages": [
            *first["messages"],
            parsed.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "x is 42"},
        ],
    }
    answer = ChatCompletion.model_validate_json((await provider.complete(chat(second))).body)
    assert answer.choices[0].message.content == REPLY_TEXT


async def test_upstream_errors_keep_anthropic_error(provider: AnthropicProvider) -> None:
    with pytest.raises(UpstreamError) as err:
        await provider.complete(
            chat({"model": "fake-status-529", "messages": [{"role": "user", "content": "x"}]})
        )
    overloaded = public_error(err.value)
    assert isinstance(overloaded, ProviderError)
    assert overloaded.details["provider_error"] == {
        "type": "overloaded_error",
        "message": "Fake failure with status 529.",
    }
    with pytest.raises(UpstreamError) as bad:
        await provider.complete(
            chat({"model": "claude-nope", "messages": [{"role": "user", "content": "x"}]})
        )
    refused = public_error(bad.value)
    assert isinstance(refused, BadRequestError) and refused.details["provider_status"] == 404
    with pytest.raises(UpstreamError) as failed:
        await provider.open_stream(
            chat(
                {
                    "model": "fake-status-500",
                    "stream": True,
                    "messages": [{"role": "user", "content": "x"}],
                }
            )
        )
    assert isinstance(public_error(failed.value), ProviderError)


async def test_unreachable_and_slow_provider() -> None:
    down = AnthropicProvider(
        ProviderSettings(
            name="a", base_url=f"http://127.0.0.1:{free_port()}", api_key=SecretStr("k")
        )
    )
    await down.open()
    try:
        with pytest.raises(UpstreamError, match="could not be reached") as unreachable:
            await down.complete(
                chat({"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
            )
        assert isinstance(public_error(unreachable.value), ProviderError)
    finally:
        await down.aclose()


async def test_timeout_is_gateway_timeout(fake: FakeAnthropic) -> None:
    slow = AnthropicProvider(
        ProviderSettings(name="a", base_url=fake.base_url, api_key=SecretStr("k"), timeout_s=0.2)
    )
    await slow.open()
    try:
        with pytest.raises(UpstreamError) as late:
            await slow.complete(
                chat({"model": "fake-delay-1000", "messages": [{"role": "user", "content": "x"}]})
            )
        assert isinstance(public_error(late.value), GatewayTimeoutError)
    finally:
        await slow.aclose()


async def test_stream_through_the_openai_sdk_with_usage_and_cost(
    provider: AnthropicProvider,
) -> None:
    """The adapter's bytes go through the openai SDK's own SSE parser via an httpx transport."""
    seen: dict[str, Any] = {}

    async def upstream(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        stream = await provider.open_stream(
            ChatRequest(
                raw=request.content,
                model=body["model"],
                stream=True,
                client_wants_usage=wants_usage,
            )
        )
        data = b"".join([chunk async for chunk in stream.chunks()])
        await stream.aclose()
        seen["stream"] = stream.observed
        return httpx.Response(200, content=data, headers={"content-type": "text/event-stream"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as http:
        client = openai.AsyncOpenAI(
            api_key="sk-floopy-test",
            base_url="http://gateway.test/v1",
            # openai types it as httpx2's client; it takes httpx's too
            http_client=http,  # type: ignore[arg-type]
        )
        response = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in response]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY_TEXT
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == len(REPLY_TEXT.split())
    stream = seen["stream"]
    assert stream.completed and stream.finish_reason == "stop" and stream.model == MODEL
    assert stream.usage is not None and stream.usage.prompt_tokens == usage.prompt_tokens
    assert "".join(stream.content_parts) == REPLY_TEXT and stream.first_chunk_ns > 0
    cost = PriceBook().cost_usd(
        provider="anthropic",
        model=MODEL,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
    )
    assert cost is not None and cost > 0
