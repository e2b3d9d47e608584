from __future__ import annotations

import pytest

from gateway.pipeline.auth import bearer_token
from gateway.policy.chat_request import check_content_type, parse_chat_request
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
