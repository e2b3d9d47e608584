from __future__ import annotations

import uuid

from gateway.context import RequestContext
from gateway.domain import ChatRequest, StageTiming, TokenUsage, UpstreamReply
from gateway.pipeline.record import build_records
from gateway.policy.headers import RequestMeta
from gateway.policy.recording import (
    TRUNCATED_MARK,
    clip_body,
    clip_inputs,
    clip_text,
)
from shared.codec import decode_records, encode_spans
from shared.errors import InvalidApiKeyError, PromptThreatError
from shared.records import RequestSpans, SpanRecord, span_id
from shared.streams import Sink


def _ctx() -> RequestContext:
    ctx = RequestContext(headers={}, started_ns=1_000_000_000, created_at_ms=1_700_000_000_000)
    ctx.org_id, ctx.api_key_id = "org", "key"
    ctx.body = b'{"model":"gpt-4o","messages":[{}]}'
    ctx.chat = ChatRequest(raw=ctx.body, model="gpt-4o")
    ctx.meta = RequestMeta(user_id="u", session_id="s", properties={"tier": "gold"})
    ctx.timings = [StageTiming("auth", 0.1, 0.2), StageTiming("dispatch", 0.5, 4.0)]
    return ctx


def _rows(entry: RequestSpans) -> list[SpanRecord]:
    """The span records the ingester makes of the entry the gateway publishes."""
    return [r for r in decode_records(Sink.SPANS, encode_spans(entry)) if isinstance(r, SpanRecord)]


def test_success_record_carries_everything_known() -> None:
    ctx = _ctx()
    ctx.reply = UpstreamReply(
        200, b'{"ok":1}', "application/json", "gpt-4o-2024", TokenUsage(5, 2, 7, 1)
    )
    ctx.status_code, ctx.response_body = 200, b'{"ok":1}'
    ctx.providers_tried = ["openai"]
    record, entry = build_records(ctx, end_ns=1_006_000_000, body_limit=1000)
    spans = _rows(entry)
    assert record.request_id == ctx.request_id and uuid.UUID(record.request_id)
    assert (record.org_id, record.api_key_id, record.created_at_ms) == (
        "org",
        "key",
        1_700_000_000_000,
    )
    assert (record.model_requested, record.model_used, record.status_code) == (
        "gpt-4o",
        "gpt-4o-2024",
        200,
    )
    assert (record.prompt_tokens, record.completion_tokens, record.total_tokens) == (5, 2, 7)
    assert record.cached_prompt_tokens == 1
    assert record.latency_ms == 6.0
    assert record.stage_latency_ms == {"auth": 0.2, "dispatch": 4.0}
    assert (record.user_id, record.session_id, record.properties) == ("u", "s", {"tier": "gold"})
    assert record.request_body == ctx.body.decode() and record.response_body == '{"ok":1}'
    assert record.providers_tried == ["openai"] and record.error_code == ""
    assert [s.name for s in spans] == ["auth", "dispatch"]
    assert all(s.request_id == ctx.request_id and s.org_id == "org" for s in spans)


def test_span_ids_are_stable_for_the_same_request() -> None:
    ctx = _ctx()
    first = _rows(build_records(ctx, 1_001_000_000, 100)[1])
    again = _rows(build_records(ctx, 1_002_000_000, 100)[1])
    assert [s.span_id for s in first] == [s.span_id for s in again]
    assert len({s.span_id for s in first}) == 2


def test_failure_record_has_the_error() -> None:
    ctx = RequestContext(headers={})
    ctx.error = InvalidApiKeyError("invalid API key")
    ctx.status_code = 401
    record, _ = build_records(ctx, ctx.started_ns + 1000, 100)
    assert (record.status_code, record.error_code) == (401, "INVALID_API_KEY")
    assert record.error_message == "invalid API key"
    assert record.org_id == "" and record.prompt_tokens == 0


def test_bodies_are_clipped_in_the_record_only() -> None:
    assert clip_body(b"abcdef", 3) == "abc" + TRUNCATED_MARK
    assert clip_body("é".encode() * 3, 3) == "é" + TRUNCATED_MARK  # never half a character
    assert clip_body(b"abc", 3) == "abc"


def test_template_inputs_are_clipped_to_the_body_limit() -> None:
    inputs = {"a": "x" * 100, "b": "y" * 100, "c": "z"}
    clipped = clip_inputs(inputs, 150)
    assert clipped["a"] == "x" * 100
    assert clipped["b"] == "y" * 48 + TRUNCATED_MARK
    assert list(clipped) == ["a", "b", TRUNCATED_MARK]
    assert clip_inputs(inputs, 10_000) == inputs
    assert clip_text("abc", 2) == "ab" + TRUNCATED_MARK


def test_firewall_outcome_and_its_child_spans_are_recorded() -> None:
    ctx = _ctx()
    ctx.firewall.verdict, ctx.firewall.score, ctx.firewall.source = "block", 0.97, "classifier"
    ctx.firewall.backend, ctx.firewall.model_ref = "guard", "guard/gpt-4o-mini"
    ctx.firewall.categories, ctx.firewall.tokens = ("prompt_injection",), 42
    ctx.firewall.latency_ms, ctx.firewall.cost_usd = 12.5, 0.0001
    ctx.error = PromptThreatError("blocked")
    ctx.child_spans = [
        StageTiming("firewall.verdict_cache", 0.3, 0.1, attributes={"parent": "firewall"}),
        StageTiming("firewall.classifier", 0.4, 12.5, attributes={"parent": "firewall"}),
    ]
    record, entry = build_records(ctx, end_ns=1_020_000_000, body_limit=1000)
    spans = _rows(entry)
    assert (record.firewall_verdict, record.firewall_score) == ("block", 0.97)
    assert (record.firewall_verdict_source, record.firewall_cached) == ("classifier", False)
    assert (record.firewall_backend, record.firewall_model_ref) == ("guard", "guard/gpt-4o-mini")
    assert record.firewall_categories == ["prompt_injection"]
    assert (record.firewall_tokens, record.firewall_latency_ms) == (42, 12.5)
    assert record.firewall_cost_usd == 0.0001 and record.cost_usd is None
    assert record.error_code == "PROMPT_THREAT_DETECTED"
    names = [s.name for s in spans]
    assert names == ["auth", "dispatch", "firewall.verdict_cache", "firewall.classifier"]
    assert len({s.span_id for s in spans}) == len(spans)
    assert spans[3].attributes == {"parent": "firewall"}


def test_headers_are_recorded_without_credentials_and_omit_headers_blank_one_body() -> None:
    ctx = _ctx()
    ctx.header_items = [
        ("authorization", "Bearer sk-floopy-secret"),
        ("content-type", "application/json"),
        ("x-api-key", "upstream-secret"),
        ("cookie", "sid=1"),
        ("floopy-session-id", "s"),
        ("floopy-omit-request", "true"),
        ("accept", "a"),
        ("accept", "b"),
    ]
    ctx.meta = RequestMeta(omit_request=True)
    ctx.prompt_inputs = {"name": "Ada"}
    ctx.status_code, ctx.response_body = 200, b'{"ok":1}'
    ctx.sent_headers = {"Floopy-Request-Id": ctx.request_id, "Set-Cookie": "x=1"}
    record, _ = build_records(ctx, 1_001_000_000, 1000)
    assert record.request_headers == {
        "content-type": "application/json",
        "floopy-session-id": "s",
        "floopy-omit-request": "true",
        "accept": "a, b",
    }
    assert record.response_headers == {"floopy-request-id": ctx.request_id}
    assert (record.request_body, record.response_body) == ("", '{"ok":1}')
    assert record.bodies_redacted and record.prompt_inputs == {}

    ctx.meta = RequestMeta(omit_response=True)
    record, _ = build_records(ctx, 1_001_000_000, 1000)
    assert record.request_body == ctx.body.decode() and record.response_body == ""
    assert record.prompt_inputs == {"name": "Ada"}


def test_span_ids_are_the_uuid5_of_the_request_and_the_span() -> None:
    for request_id in (str(uuid.uuid4()), "not-a-uuid"):
        ctx = _ctx()
        ctx.request_id = request_id
        ctx.attempts = [StageTiming("provider_attempt", 1.0, 2.0, "ok", {"attempt": "1"})]
        namespace = (
            uuid.UUID(request_id)
            if request_id != "not-a-uuid"
            else uuid.uuid5(uuid.NAMESPACE_OID, request_id)
        )
        expected = [
            str(uuid.uuid5(namespace, name)) for name in ("auth", "dispatch", "provider_attempt#1")
        ]
        spans = _rows(build_records(ctx, 2_000_000_000, 1000)[1])
        assert [s.span_id for s in spans] == expected
    assert span_id(b"\0" * 16, "é€") == str(uuid.uuid5(uuid.UUID(int=0), "é€"))
