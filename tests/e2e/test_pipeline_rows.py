"""Issue 2, item 1: a request made with the openai SDK lands as one row in ClickHouse with its
tokens, latency stages, user, session and custom properties, and its spans."""

from __future__ import annotations

import pytest

from tests.e2e.harness import ORG_ID, Floopy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

HEADERS = {
    "floopy-user-id": "user-alice-001",
    "floopy-session-id": "sess-alice-a1b2c3",
    "floopy-session-name": "math-tutoring",
    "floopy-session-path": "/dashboard/math",
    "floopy-property-usertier": "premium",
    "floopy-property-industry": "education",
}

ROW_SQL = """
SELECT org_id, stream, model_requested, status_code, prompt_tokens, completion_tokens,
       total_tokens, user_id, session_id, session_name, session_path,
       property_keys, property_values, stage_names, latency_ms, time_to_first_token_ms,
       response_body
FROM requests FINAL WHERE request_id = %(id)s
"""


def _row(floopy: Floopy, request_id: str) -> dict[str, object]:
    floopy.wait_for(lambda: bool(floopy.query(ROW_SQL, {"id": request_id})), what="the row")
    names = [
        "org_id",
        "stream",
        "model",
        "status",
        "prompt",
        "completion",
        "total",
        "user",
        "session",
        "session_name",
        "session_path",
        "pkeys",
        "pvalues",
        "stages",
        "latency",
        "ttft",
        "response_body",
    ]
    rows = floopy.query(ROW_SQL, {"id": request_id})
    assert len(rows) == 1
    return dict(zip(names, rows[0], strict=True))


def _spans(floopy: Floopy, request_id: str) -> list[str]:
    rows = floopy.query(
        "SELECT name FROM spans FINAL WHERE request_id = %(id)s ORDER BY start_offset_ms",
        {"id": request_id},
    )
    return [r[0] for r in rows]


def _check_common(row: dict[str, object]) -> None:
    assert row["org_id"] == ORG_ID
    assert row["status"] == 200
    assert row["user"] == "user-alice-001"
    assert row["session"] == "sess-alice-a1b2c3"
    assert row["session_name"] == "math-tutoring"
    assert row["session_path"] == "/dashboard/math"
    props = dict(zip(row["pkeys"], row["pvalues"], strict=True))  # type: ignore[call-overload]
    assert props == {"usertier": "premium", "industry": "education"}
    assert isinstance(row["prompt"], int) and row["prompt"] > 0
    assert isinstance(row["completion"], int) and row["completion"] > 0
    assert row["total"] == row["prompt"] + row["completion"]
    assert "dispatch" in row["stages"]  # type: ignore[operator]
    assert isinstance(row["latency"], float) and row["latency"] > 0


def test_non_streaming_request_becomes_one_row_with_spans(floopy: Floopy) -> None:
    raw = floopy.sdk().chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Hello"}], extra_headers=HEADERS
    )
    completion = raw.parse()
    request_id = raw.headers["floopy-request-id"]
    row = _row(floopy, request_id)
    _check_common(row)
    assert row["stream"] == 0
    assert row["model"] == "gpt-4o"
    assert completion.usage is not None
    assert row["prompt"] == completion.usage.prompt_tokens
    assert row["completion"] == completion.usage.completion_tokens
    assert completion.choices[0].message.content is not None
    assert completion.choices[0].message.content in str(row["response_body"])
    floopy.wait_for(lambda: "dispatch" in _spans(floopy, request_id), what="spans")
    spans = _spans(floopy, request_id)
    assert "auth" in spans and "dispatch" in spans
    assert len(spans) == len(set(spans))


def test_streaming_request_becomes_one_row_with_usage(floopy: Floopy) -> None:
    with floopy.sdk().chat.completions.with_streaming_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Stream please"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=HEADERS,
    ) as response:
        request_id = response.headers["floopy-request-id"]
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = [c.usage for c in chunks if c.usage is not None]
    assert text and len(usage) == 1
    row = _row(floopy, request_id)
    _check_common(row)
    assert row["stream"] == 1
    assert row["prompt"] == usage[0].prompt_tokens
    assert row["completion"] == usage[0].completion_tokens
    assert isinstance(row["ttft"], float) and 0 < row["ttft"] <= row["latency"]  # type: ignore[operator]


def test_failed_request_is_logged_with_its_error_code(floopy: Floopy) -> None:
    import openai

    with pytest.raises(openai.AuthenticationError) as info:
        floopy.sdk(api_key="sk-wrong").chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
    request_id = info.value.response.headers["floopy-request-id"]
    rows_sql = "SELECT status_code, error_code FROM requests FINAL WHERE request_id = %(id)s"
    floopy.wait_for(lambda: bool(floopy.query(rows_sql, {"id": request_id})), what="error row")
    assert floopy.query(rows_sql, {"id": request_id}) == [(401, "INVALID_API_KEY")]
