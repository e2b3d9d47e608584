"""The cache's pure decisions: plans, keys, the stream fold and replay, the lexical verifier."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from gateway.policy.cache import (
    CacheControls,
    CachedAnswer,
    CacheOutcome,
    CacheSettings,
    CacheStatus,
    CacheTier,
    decode_answer,
    encode_answer,
    plan_cache,
)
from gateway.policy.cache_key import request_keys
from gateway.policy.cache_replay import PIECE_CHARS, assemble_stream, replay_events
from gateway.policy.cache_verify import verify_turns
from gateway.policy.headers import parse_floopy_headers
from gateway.policy.sse import SSESplitter
from shared.errors import BadRequestError

ALL = CacheSettings(tiers=frozenset(CacheTier))
NOW = 1_800_000_000_000


def _plan(settings: CacheSettings = ALL, key: bool = True, **controls: Any) -> Any:
    return plan_cache(settings, CacheControls(**controls), key_switch=key, now_ms=NOW)


def test_plan_orders_tiers_and_applies_switches() -> None:
    assert _plan().tiers == (CacheTier.EXACT, CacheTier.SEMANTIC, CacheTier.ADVANCED)
    assert _plan().status is CacheStatus.MISS
    assert _plan(key=False).status is CacheStatus.DISABLED
    assert _plan(enabled=False).status is CacheStatus.BYPASS
    assert _plan(key=False, enabled=False).status is CacheStatus.DISABLED
    assert _plan(CacheSettings(tiers=frozenset())).status is CacheStatus.DISABLED
    exact_only = plan_cache(ALL, CacheControls(), key_switch=True, now_ms=NOW, exact_only=True)
    assert exact_only.tiers == (CacheTier.EXACT,)


def test_max_age_sets_ttl_capped_and_oldest_entry() -> None:
    plan = _plan(max_age_s=60)
    assert (plan.ttl_s, plan.min_created_at_ms) == (60, NOW - 60_000)
    capped = _plan(CacheSettings(ttl_s=100, max_ttl_s=3600), max_age_s=86_400)
    assert capped.ttl_s == 3600
    assert _plan().ttl_s == 7 * 86_400 and _plan().min_created_at_ms == 0


def test_threshold_header_only_raises() -> None:
    assert _plan(semantic_threshold=0.99).semantic_threshold == 0.99
    assert _plan(semantic_threshold=0.1).semantic_threshold == ALL.semantic_threshold
    assert _plan(semantic_threshold=0.99).advanced_threshold == 0.99
    assert _plan(semantic_threshold=0.1).advanced_threshold == ALL.advanced_threshold


def test_settings_are_validated() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"ttl_s": 10, "max_ttl_s": 5}, CacheSettings)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"semantic_threshold": 1.5}, CacheSettings)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"tiers": ["fuzzy"]}, CacheSettings)
    assert ALL.view()["tiers"] == ["exact", "semantic", "advanced"]


@pytest.mark.parametrize(
    ("header", "value", "field", "parsed"),
    [
        ("floopy-cache-max-age", "3600", "cache_max_age_s", 3600),
        ("floopy-cache-seed", "tenant-7", "cache_seed", "tenant-7"),
        ("floopy-cache-semantic-threshold", "0.97", "cache_semantic_threshold", 0.97),
    ],
)
def test_cache_headers_parse(header: str, value: str, field: str, parsed: object) -> None:
    assert getattr(parse_floopy_headers([(header, value)]), field) == parsed


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("floopy-cache-max-age", "-1"),
        ("floopy-cache-max-age", "1e3"),
        ("floopy-cache-max-age", "99999999999"),
        ("floopy-cache-semantic-threshold", "-0.1"),
        ("floopy-cache-semantic-threshold", "inf"),
        ("floopy-cache-seed", ""),
        ("floopy-cache-seed", "caf\u00e9"),
    ],
)
def test_bad_cache_headers_name_the_header(header: str, value: str) -> None:
    with pytest.raises(BadRequestError, match=header):
        parse_floopy_headers([(header, value)])


BODY: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ],
    "temperature": 0.5,
}


def _keys(body: dict[str, Any], org: str = "o", seed: str = "") -> Any:
    return request_keys(body, endpoint="/v1/chat/completions", org_id=org, seed=seed)


def test_exact_key_ignores_delivery_fields_and_float_spelling() -> None:
    base = _keys(BODY)
    assert _keys({**BODY, "stream": True, "stream_options": {"include_usage": True}}) == base
    assert _keys({**BODY, "user": "u1"}).exact == base.exact
    assert _keys({**BODY, "temperature": 1.0}).exact == _keys({**BODY, "temperature": 1}).exact
    assert _keys(dict(reversed(list(BODY.items())))).exact == base.exact


@pytest.mark.parametrize(
    "change",
    [
        {"model": "gpt-4o-mini"},
        {"temperature": 0.6},
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        {"some_new_provider_option": True},
        {"messages": [{"role": "user", "content": "Hi"}]},
    ],
)
def test_exact_key_changes_with_the_request(change: dict[str, Any]) -> None:
    assert _keys({**BODY, **change}).exact != _keys(BODY).exact


def test_org_seed_and_endpoint_are_in_every_key() -> None:
    base = _keys(BODY)
    for other in (_keys(BODY, org="p"), _keys(BODY, seed="s")):
        assert other.exact != base.exact and other.params_hash != base.params_hash
        assert other.prefix_hash != base.prefix_hash
    embeddings = request_keys(BODY, endpoint="/v1/embeddings", org_id="o", seed="")
    assert embeddings.exact != base.exact


def test_exact_only_keys_are_the_exact_key_alone() -> None:
    """Without an embedding tier only the exact key is made; it is the same key."""
    for body in (BODY, {**BODY, "messages": "not a list"}, {"model": "m", "input": "x"}):
        full = _keys(body)
        lean = request_keys(
            body, endpoint="/v1/chat/completions", org_id="o", seed="", vectors=False
        )
        assert lean.exact == full.exact
        assert (lean.params_hash, lean.prompt_text, lean.last_turn, lean.prefix_hash) == (
            "",
            "",
            "",
            "",
        )


def test_semantic_and_advanced_keys() -> None:
    keys = _keys(BODY)
    assert keys.prompt_text == "system: Be brief.\nuser: Hi" and keys.last_turn == "Hi"
    other_turn = _keys(
        {**BODY, "messages": [BODY["messages"][0], {"role": "user", "content": "Yo"}]}
    )
    assert other_turn.prefix_hash == keys.prefix_hash and other_turn.params_hash == keys.params_hash
    other_system = _keys(
        {**BODY, "messages": [{"role": "system", "content": "x"}, BODY["messages"][1]]}
    )
    assert other_system.prefix_hash != keys.prefix_hash
    assert _keys({**BODY, "temperature": 0.9}).params_hash != keys.params_hash
    single = _keys(
        {**BODY, "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}]}
    )
    assert single.prompt_text == single.last_turn == "a"


def _completion(**message: Any) -> bytes:
    return msgspec.json.encode(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "gpt-4o",
            "choices": [
                {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
        }
    )


def test_replay_then_fold_gives_the_completion_back() -> None:
    text = "word " * 40
    events = replay_events(_completion(content=text), include_usage=True)
    assert events is not None and events[-1] == b"data: [DONE]\n\n"
    chunks = [msgspec.json.decode(e[6:]) for e in events[:-1]]
    assert all(c["id"] == "chatcmpl-1" and c["created"] == 1700000000 for c in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 8
    assert all("usage" in c for c in chunks)
    pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]]
    assert "".join(pieces) == text and max(map(len, pieces)) <= PIECE_CHARS
    folded = assemble_stream(events, {"total_tokens": 8})
    assert folded is not None
    message = msgspec.json.decode(folded)["choices"][0]["message"]
    assert message["content"] == text


def test_tool_calls_survive_fold_and_replay() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    events = replay_events(_completion(content=None, tool_calls=[call]), include_usage=False)
    assert events is not None and all(b'"usage"' not in e for e in events)
    folded = assemble_stream(events, None)
    assert folded is not None
    message = msgspec.json.decode(folded)["choices"][0]["message"]
    assert message["tool_calls"] == [call] and message["content"] is None


def test_fold_of_split_tool_call_deltas_and_bad_streams() -> None:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        body = {
            "id": "x",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return b"data: " + msgspec.json.encode(body) + b"\n\n"

    events = SSESplitter().feed(
        chunk(
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "c",
                        "type": "function",
                        "function": {"name": "get", "arguments": '{"q'},
                    }
                ],
            }
        )
        + chunk({"tool_calls": [{"index": 0, "function": {"arguments": '":1}'}}]})
        + chunk({}, "tool_calls")
        + b"data: [DONE]\n\n"
    )
    folded = msgspec.json.decode(assemble_stream(events, None) or b"{}")
    call = folded["choices"][0]["message"]["tool_calls"][0]
    assert call["function"] == {"name": "get", "arguments": '{"q":1}'}
    assert folded["choices"][0]["finish_reason"] == "tool_calls"
    assert assemble_stream([b"data: {not json\n\n"], None) is None
    assert assemble_stream([b"data: [DONE]\n\n"], None) is None
    assert replay_events(b'{"object": "list", "data": []}', include_usage=False) is None


def test_stored_answer_round_trip() -> None:
    answer = CachedAnswer(body=b"{}", model="m", prompt_tokens=1, cost_usd=None, created_at_ms=5)
    assert decode_answer(encode_answer(answer)) == answer
    assert decode_answer(b"\x00garbage") is None


@pytest.mark.parametrize(
    ("asked", "stored", "same"),
    [
        ("What is the capital of France?", "Which city is the capital of France?", True),
        ("How do I reverse a list in Python?", "How can I reverse a Python list?", True),
        ("yes", "no", False),
        ("continue", "stop", False),
        ("What is 2+2?", "What is 2+3?", False),
        ("How do I reverse a list in Python?", "How do I sort a list in Python?", False),
        ("Is it safe?", "Isn't it safe?", False),
        ("ok", "ok", True),
    ],
)
def test_verifier(asked: str, stored: str, same: bool) -> None:
    assert verify_turns(asked, stored, 0.5).same is same


def test_threshold_in_force_is_the_tier_that_decides() -> None:
    both = CacheOutcome(plan=_plan())
    assert both.threshold == ALL.semantic_threshold
    both.tier = CacheTier.ADVANCED
    assert both.threshold == ALL.advanced_threshold
    assert CacheOutcome(plan=_plan(CacheSettings())).threshold is None  # exact only
    advanced = CacheSettings(tiers=frozenset({CacheTier.EXACT, CacheTier.ADVANCED}))
    assert CacheOutcome(plan=_plan(advanced)).threshold == advanced.advanced_threshold
