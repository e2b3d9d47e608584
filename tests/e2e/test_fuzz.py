"""Hostile input, generated: a few hundred malformed requests (Hypothesis, derandomized and
bounded, so every run sends the same ones) against a running gateway across
``/v1/chat/completions``, ``/console/api/*`` and ``/admin/*``. Whatever is sent: no 5xx, every
error a JSON body of the error table, the worker alive, and a valid request still 200."""

from __future__ import annotations

import string
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack.servers import ClickHouseServer, RedisServer
from tests.e2e.harness import Floopy
from tests.e2e.hostile import HELLO, KEY_A, KEY_ACME, KEY_OPS, running

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_state: dict[str, Any] = {}


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    clickhouse_server: ClickHouseServer,
) -> Iterator[Floopy]:
    with (
        running(tmp_path_factory.mktemp("fuzz"), redis_server, clickhouse_server) as floopy,
        httpx.Client(base_url=floopy.gateway_url, timeout=30) as client,
    ):
        _state["client"] = client
        yield floopy


# -- what is sent -----------------------------------------------------------------------------

_text = st.text(max_size=40)
_header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=60,
).map(lambda text: text.strip(" \t"))  # what h11 lets a client send
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
_message = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["user", "assistant", "system", "tool", "developer"]) | _text,
        "content": _json,
        "tool_calls": _json,
        "name": _json,
    },
)
_chat_body = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["gpt-4o-mini", "claude-3-5-haiku-latest", "private-only"])
        | _text,
        "messages": st.lists(_message, max_size=3) | _json,
        "stream": _json,
        "n": _json,
        "stop": _json,
        "tools": _json,
        "inputs": _json,
        "stream_options": _json,
        "max_tokens": _json,
    },
)


def _encoded(value: Any) -> bytes:
    return msgspec.json.encode(value)


_raw_body = st.one_of(
    _chat_body.map(_encoded),
    _json.map(_encoded),
    st.binary(max_size=200),
    # valid JSON cut short, or with bytes that are not UTF-8 inside
    _chat_body.map(_encoded).flatmap(lambda b: st.integers(0, len(b)).map(lambda i: b[:i])),
    _chat_body.map(_encoded).map(lambda b: b.replace(b'"', b'"\xff', 1)),
)
_floopy_headers = st.dictionaries(
    st.sampled_from(
        [
            "floopy-ratelimit-policy",
            "floopy-user-id",
            "floopy-session-id",
            "floopy-session-path",
            "floopy-prompt-id",
            "floopy-property-x",
            "content-type",
        ]
    ),
    _header_text,
    max_size=3,
)
_id = st.text(alphabet=string.ascii_letters + string.digits + ":/%._-@ é", max_size=20)
_query_value = st.one_of(
    _text,
    st.sampled_from(["²", "--1", "1e400", "NaN", "-0", "9" * 40, "true", "Infinity"]),
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
)
_query = st.dictionaries(
    st.sampled_from(
        [
            "start", "end", "cursor", "limit", "sort", "order", "model", "status",
            "property", "min_latency_ms", "max_latency_ms", "min_cost_usd", "q", "bucket",
            "group_by", "user_id",
        ]
    ),
    _query_value,
    max_size=4,
)  # fmt: skip
_console_path = st.one_of(
    st.sampled_from(
        ["/requests", "/sessions", "/users", "/properties", "/metrics", "/properties/x/series"]
    ),
    _id.map(lambda i: f"/requests/{i}"),
    _id.map(lambda i: f"/sessions/{i}"),
    _id.map(lambda i: f"/users/{i}"),
    _id.map(lambda i: f"/properties/{i}"),
)
_admin_path = st.one_of(
    _id.map(lambda i: f"/admin/orgs/{i}"),
    _id.map(lambda i: f"/admin/orgs/{i}/keys"),
    _id.map(lambda i: f"/admin/orgs/acme/templates/{i}"),
    _id.map(lambda i: f"/admin/keys/{i}"),
    _id.map(lambda i: f"/admin/providers/{i}"),
    _id.map(lambda i: f"/admin/routes/{i}"),
    st.sampled_from(["/admin/orgs/acme/keys", "/admin/providers", "/admin/routes"]),
)


# -- what must hold ---------------------------------------------------------------------------


def _check(response: httpx.Response) -> None:
    what = f"{response.request.method} {response.request.url} -> {response.status_code}"
    assert response.status_code < 500, f"{what}: {response.text[:300]}"
    if response.status_code >= 400:
        assert response.headers.get("content-type", "").startswith("application/json"), what
        error = response.json()["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str), what


def _send(method: str, path: str, **kwargs: Any) -> None:
    client: httpx.Client = _state["client"]
    _check(client.request(method, path, **kwargs))


@FUZZ
@given(body=_raw_body, headers=_floopy_headers)
def test_chat_completions(stack: Floopy, body: bytes, headers: dict[str, str]) -> None:
    sent = {"content-type": "application/json", **headers, "authorization": f"Bearer {KEY_A}"}
    encoded = {k: v.encode("latin-1") for k, v in sent.items()}
    _send("POST", "/v1/chat/completions", content=body, headers=encoded)


@FUZZ
@given(path=_console_path, query=_query)
def test_console_api(stack: Floopy, path: str, query: dict[str, str]) -> None:
    _send("GET", "/console/api" + path, params=query, headers={"authorization": f"Bearer {KEY_A}"})


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    path=_admin_path,
    body=_raw_body,
    key=st.sampled_from([KEY_OPS, KEY_ACME, "sk-floopy-nobody", ""]),
)
def test_admin(stack: Floopy, method: str, path: str, body: bytes, key: str) -> None:
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    _send(
        method, path, content=body if method in ("POST", "PUT", "PATCH") else None, headers=headers
    )


def test_the_worker_is_alive_and_serves(stack: Floopy) -> None:
    """After the fuzz tests above (pytest runs a module's tests in order)."""
    assert stack.processes["gateway"].poll() is None
    response = httpx.post(
        f"{stack.gateway_url}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": HELLO},
        headers={"authorization": f"Bearer {KEY_A}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    health = httpx.get(
        f"{stack.gateway_url}/health", headers={"authorization": f"Bearer {KEY_OPS}"}
    ).json()
    assert health["errors"]["unexpected"] == 0
