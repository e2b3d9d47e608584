from __future__ import annotations

import pytest

from gateway.pipeline.auth import bearer_token
from gateway.policy.chat_request import (
    check_content_type,
    check_model_name,
    header_text,
    parse_chat_request,
)
from shared.errors import BadRequestError


def test_plain_request_keeps_its_bytes_and_skips_full_decoding() -> None:
    raw = b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"temperature":0.2}'
    request = parse_chat_request(raw)
    assert request.raw is raw
    assert request.model == "gpt-4o"
    assert request.stream is False
    assert request.fields is None


def test_stream_request_is_decoded_and_notes_who_asked_for_usage() -> None:
    asked = parse_chat_request(
        b'{"model":"m","messages":[{}],"stream":true,"stream_options":{"include_usage":true}}'
    )
    assert asked.stream and asked.client_wants_usage
    assert asked.fields is not None and asked.fields["stream"] is True
    not_asked = parse_chat_request(b'{"model":"m","messages":[{}],"stream":true}')
    assert not_asked.stream and not not_asked.client_wants_usage


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "Expected `object`"),
        (b'{"messages":[{}]}', "`model`"),
        (b'{"model":"m"}', "`messages`"),
        (b'{"model":3,"messages":[{}]}', "$.model"),
        (b'{"model":"m","messages":[]}', "`messages` must not be empty"),
        (b'{"model":"","messages":[{}]}', "`model` must not be empty"),
        (b'{"model":"m","messages":"hi"}', "$.messages"),
    ],
)
def test_malformed_bodies_name_the_problem(raw: bytes, says: str) -> None:
    with pytest.raises(BadRequestError) as caught:
        parse_chat_request(raw)
    assert says in caught.value.message


@pytest.mark.parametrize(
    "value", ["application/json", "application/json; charset=utf-8", "Application/JSON"]
)
def test_json_content_types_pass(value: str) -> None:
    check_content_type(value)


@pytest.mark.parametrize("value", ["", "text/plain", "application/x-www-form-urlencoded"])
def test_other_content_types_are_bad_requests(value: str) -> None:
    with pytest.raises(BadRequestError, match="Content-Type must be application/json"):
        check_content_type(value)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer sk-1", "sk-1"),
        ("bearer  sk-2 ", "sk-2"),
        ("Basic abc", None),
        ("Bearer ", None),
        ("", None),
    ],
)
def test_bearer_token(header: str, token: str | None) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize(
    ("model", "ok"),
    [
        ("gpt-4o-mini", True),
        ("accounts/fireworks/models/llama-v3p1-8b", True),
        ("llama3:8b", True),
        ("m" * 256, True),
        ("m" * 257, False),
        ("fake-模型", False),
        ("a b", False),
        ("a\r\nb", False),
        ("a\x00", False),
    ],
)
def test_model_names(model: str, ok: bool) -> None:
    if ok:
        assert check_model_name(model) == model
    else:
        with pytest.raises(BadRequestError, match="model"):
            check_model_name(model)


def test_header_text_keeps_what_a_header_can_carry() -> None:
    assert header_text("gpt-4o") == "gpt-4o"
    assert header_text("fake-模型") == "fake-"
    assert header_text("a b\r\nc") == "a_bc"
    assert len(header_text("x" * 10_000)) == 256


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"model": "m", "messages": ' + b"[" * 3000 + b"]" * 3000 + b"}", "nested too deeply"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "\xff"}]}', "UTF-8"),
        (b'{"model": "m\xfe", "messages": [1]}', "UTF-8"),
        (b'{"model": "m", "messages": [1], "stream": true, "n": 1e400}', "invalid request body"),
    ],
)
def test_hostile_bodies_are_400(body: bytes, message: str) -> None:
    with pytest.raises(BadRequestError, match=message):
        parse_chat_request(body)
