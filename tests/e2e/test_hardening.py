"""Issue 10, hardening against abuse: each attack of the issue against a running gateway (real
granian, Redis, ClickHouse, fake providers; the official SDK where a client is involved), and
what the gateway must answer now. Records are read from the Redis stream the gateway writes."""

from __future__ import annotations

import concurrent.futures
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any, cast

import httpx
import openai
import pytest
from redis import Redis

from devstack.servers import ClickHouseServer, RedisServer, free_port
from tests.e2e.harness import Floopy
from tests.e2e.hostile import (
    BODY_TIMEOUT_S,
    HELLO,
    IN_FLIGHT_CAP,
    KEY_A,
    KEY_ACME,
    KEY_B,
    KEY_EXPIRED,
    KEY_LAPSED,
    KEY_OPS,
    KEY_SEG,
    SEGMENT_CAP,
    error_code,
    raw_request,
    read_response,
    records,
    running,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    clickhouse_server: ClickHouseServer,
) -> Iterator[Floopy]:
    with running(tmp_path_factory.mktemp("hardening"), redis_server, clickhouse_server) as floopy:
        yield floopy


def sdk(stack: Floopy, key: str) -> openai.OpenAI:
    return stack.sdk(key, max_retries=0)


def http(stack: Floopy, key: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=stack.gateway_url, headers=headers, timeout=20)


def refused(call: Any) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as info:
        call()
    return info.value


def _head(path: str, length: int, key: str | None = None, method: str = "POST") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: x", "Content-Type: application/json"]
    lines += [f"Content-Length: {length}"] + ([f"Authorization: Bearer {key}"] if key else [])
    return "".join(f"{line}\r\n" for line in lines).encode()


# -- 1. no body is read before authentication, every body is capped -------------------------


def test_admin_answers_before_reading_an_unauthenticated_body(stack: Floopy) -> None:
    """A body announced, 1 KiB of it sent, no key: the answer comes without the rest (the
    framework used to read and parse a 256 MiB body before the handler checked the key)."""
    for announced, expected in (
        (200_000, (401, "INVALID_API_KEY")),
        (256 * 2**20, (413, "BAD_REQUEST")),
    ):
        head = _head("/admin/orgs/org-a/keys", announced)
        status, headers, body = raw_request(stack.gateway_port, head, b"{" * 1024, timeout_s=5)
        assert (status, error_code(body)) == expected
        assert headers["content-type"].startswith("application/json")


def test_admin_and_console_bodies_are_capped(stack: Floopy) -> None:
    head = _head("/admin/orgs/acme/keys", 2**20, KEY_ACME)
    status, _, body = raw_request(stack.gateway_port, head, b"{}", timeout_s=5)
    assert (status, error_code(body)) == (413, "BAD_REQUEST")
    # a chunked body has no length to refuse: it is cut where it crosses the cap
    with http(stack, KEY_ACME) as client:
        big = iter([b'{"name": "' + b"x" * 300_000 + b'"}'])
        response = client.post("/admin/orgs/acme/keys", content=big)
    assert (response.status_code, response.json()["error"]["code"]) == (413, "BAD_REQUEST")


# -- 2. slow bodies: a read deadline and a per-client in-flight cap --------------------------


def test_slow_bodies_do_not_stall_health_or_other_orgs(stack: Floopy) -> None:
    """300 connections of one key each announce 100,000 bytes and send 10 (granian's own limit
    is 128 in flight here, so without the cap they would hold every slot): beyond the cap they
    are refused at once, the held ones time out, and /health and another org still answer."""
    head = _head("/v1/chat/completions", 100_000, KEY_A)
    socks = []
    for _ in range(300):
        sock = socket.create_connection(("127.0.0.1", stack.gateway_port), timeout=15)
        sock.sendall(head + b"\r\n" + b'{"model": ')
        socks.append(sock)
    try:
        started = time.monotonic()
        assert httpx.get(f"{stack.gateway_url}/health", timeout=5).status_code == 200
        other = sdk(stack, KEY_B).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=HELLO
        )
        assert other.http_response.status_code == 200
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(read_response, socks))
        waited = time.monotonic() - started
    finally:
        for sock in socks:
            sock.close()
    statuses = sorted(status for status, _, _ in answers)
    assert statuses.count(429) >= 300 - IN_FLIGHT_CAP
    assert set(statuses) == {408, 429}
    assert all(error_code(body) in ("BAD_REQUEST", "RATE_LIMIT_EXCEEDED") for *_, body in answers)
    assert (
        waited < 15 * BODY_TIMEOUT_S
    )  # the held ones were let go, not kept until the client quits


def test_a_client_gone_mid_body_is_recorded_as_a_bad_request(stack: Floopy) -> None:
    """Half a body, then the socket closes: the request still has its one record, a 400 (the
    client's doing), not an unexpected error of ours."""
    before = set(records(stack))
    head = _head("/v1/chat/completions", 10_000, KEY_ACME)
    with socket.create_connection(("127.0.0.1", stack.gateway_port), timeout=5) as sock:
        sock.sendall(head + b"\r\n" + b'{"model": ')
        time.sleep(0.3)

    def new_records() -> list[Any]:
        return [r for rid, r in records(stack).items() if rid not in before]

    stack.wait_for(lambda: bool(new_records()), timeout_s=30, what="the request's record")
    time.sleep(0.5)  # a second record would come with the first
    (record,) = new_records()
    assert (record.status_code, record.error_code) == (400, "BAD_REQUEST")
    assert "disconnected" in record.error_message


# -- 3. token estimation: capped, off the loop ------------------------------------------------


def test_a_huge_prompt_without_usage_is_estimated_within_the_cap(stack: Floopy) -> None:
    """'a b ' tokenizes to about one token per two characters, the character rule gives one per
    four: the record shows that only the first 64 Ki characters went through the tokenizer."""
    prompt = "a b " * 800_000  # 3.2 M characters
    raw = sdk(stack, KEY_A).chat.completions.with_raw_response.create(
        model="fake-no-usage", messages=[{"role": "user", "content": prompt}]
    )
    request_id = raw.headers["floopy-request-id"]
    stack.wait_for(lambda: request_id in records(stack), timeout_s=30, what="the record")
    record = records(stack)[request_id]
    assert record.tokens_estimated
    assert len(prompt) // 4 < record.prompt_tokens < len(prompt) // 4 + 40_000
    # meanwhile the worker kept answering
    assert httpx.get(f"{stack.gateway_url}/health", timeout=5).status_code == 200


# -- 4. breakers: one org's failures do not turn another away --------------------------------


def test_one_orgs_failures_never_open_the_provider_for_another(stack: Floopy) -> None:
    for _ in range(4):  # 503s the provider answers to org B's requests, retried once each
        error = refused(
            lambda: sdk(stack, KEY_B).chat.completions.create(
                model="fake-status-503", messages=HELLO
            )
        )
        assert error.status_code == 502
    # org B is turned away from that provider for the cool-down (its own breaker) ...
    error = refused(
        lambda: sdk(stack, KEY_B).chat.completions.create(
            model="gpt-4o-mini",
            messages=HELLO,
            extra_headers={"Floopy-Cache-Enabled": "false"},  # a cache hit needs no provider
        )
    )
    assert "every circuit breaker is open" in error.message
    # ... org A is not, and the provider-wide breaker stays closed
    for _ in range(3):
        raw = sdk(stack, KEY_A).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=HELLO
        )
        assert raw.http_response.status_code == 200
    health = httpx.get(f"{stack.gateway_url}/health/providers", timeout=5).json()
    assert {p["name"]: p["state"] for p in health["providers"]}["openai"] == "closed"


# -- 5. per-segment rate-limit buckets are bounded ---------------------------------------------


def test_segment_buckets_are_capped_per_org_and_expire_when_full(stack: Floopy) -> None:
    client = sdk(stack, KEY_SEG)
    policy = "1;w=2678400;s=user"
    statuses = []
    for _ in range(SEGMENT_CAP + 15):
        headers = {"floopy-ratelimit-policy": policy, "floopy-user-id": uuid.uuid4().hex}
        try:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=HELLO, extra_headers=headers
            )
            statuses.append(200)
        except openai.APIStatusError as exc:
            assert exc.response.json()["error"]["limit"] == "segments"
            statuses.append(exc.status_code)
    assert statuses == [200] * SEGMENT_CAP + [429] * 15
    redis = Redis.from_url(stack.redis.url)
    try:
        buckets = list(redis.scan_iter(match=f"{stack.tag}:rl:org-seg:*/user:*", count=1000))
        assert len(buckets) == SEGMENT_CAP
        # a bucket of 10 per minute after one request is full again in 6 s: it lives that long
        headers = {"floopy-ratelimit-policy": "10;w=60;s=user", "floopy-user-id": "u-ttl"}
        redis.delete(*redis.scan_iter(match=f"{stack.tag}:rl-segments:org-seg"))
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, extra_headers=headers)
        [bucket] = redis.scan_iter(match=f"{stack.tag}:rl:org-seg:*:10/60/*u-ttl")
        assert 0 < cast(int, redis.pttl(bucket)) <= 7_000
    finally:
        redis.close()


# -- 6. model names; every record field clipped; the record survives a failed response -------


@pytest.mark.parametrize(
    ("model", "why"),
    [
        ("m" * (3 * 2**20), "over 256"),
        ("fake-模型", "visible ASCII"),
        ("fake-\r\nx", "visible ASCII"),
        ("fake-\x00", "visible ASCII"),
    ],
)
def test_bad_model_names_are_400(stack: Floopy, model: str, why: str) -> None:
    error = refused(lambda: sdk(stack, KEY_A).chat.completions.create(model=model, messages=HELLO))
    assert error.status_code == 400 and why in error.message
    request_id = error.response.headers["floopy-request-id"]
    stack.wait_for(lambda: request_id in records(stack), timeout_s=20, what="the record")
    assert len(records(stack)[request_id].model_requested) <= 256 + len("…[truncated]")


def test_a_provider_model_name_unfit_for_a_header_still_answers_and_records(stack: Floopy) -> None:
    """The route sends the provider ``fake-模型``, which it echoes back: the answer used to be a
    502 without a record (the header could not be encoded after dispatch), usage uncharged."""
    redis = Redis.from_url(stack.redis.url)
    try:
        usage_keys = f"{stack.tag}:usage:key:key-a:d:*"
        before = sum(
            int(cast(bytes | None, redis.hget(k, "tokens")) or 0)
            for k in redis.scan_iter(match=usage_keys)
        )
        raw = sdk(stack, KEY_A).chat.completions.with_raw_response.create(
            model="unicode-route", messages=HELLO
        )
        assert raw.http_response.status_code == 200
        assert raw.headers["floopy-model"] == "fake-"
        request_id = raw.headers["floopy-request-id"]
        stack.wait_for(lambda: request_id in records(stack), timeout_s=20, what="the record")
        record = records(stack)[request_id]
        assert (record.status_code, record.model_used) == (200, "fake-模型")

        def charged() -> bool:
            keys = list(redis.scan_iter(match=usage_keys))
            return sum(int(cast(bytes | None, redis.hget(k, "tokens")) or 0) for k in keys) > before

        stack.wait_for(charged, timeout_s=20, what="the usage charged")
    finally:
        redis.close()


# -- 7. malformed input is a JSON 400 (the fuzz test covers the rest) -------------------------


def test_listed_malformed_inputs_are_json_400s(stack: Floopy) -> None:
    deep = b'{"model": "gpt-4o-mini", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    bad_utf8 = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "\xff"}]}'
    chat = [
        deep,
        bad_utf8,
        b'{"model": "gpt\xff", "messages": [{"role": "user", "content": "x"}]}',
        *(
            b'{"model": "claude-3-5-haiku-latest", "messages": [{"role": "user", "content": "x"}], '
            + extra
            + b"}"
            for extra in (
                b'"n": "x"',
                b'"n": [1]',
                b'"n": 1e400',
                b'"stop": 5',
                b'"tools": 5',
            )
        ),
        b'{"model": "claude-3-5-haiku-latest", "messages": '
        b'[{"role": "assistant", "tool_calls": 5}]}',
    ]
    with http(stack, KEY_A) as client:
        for body in chat:
            response = client.post(
                "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
            )
            assert response.status_code == 400, (body[:80], response.text[:200])
            assert response.json()["error"]["code"] == "BAD_REQUEST"
        for query in (
            "start=²",
            "start=--1",
            "end=1e400",
            "cursor=TmFO",  # "NaN"
            "cursor=WzFlNDAwLCAiYSJd",  # [1e400, "a"]
            "cursor=W3RydWUsICJhIl0",  # [true, "a"]
            "cursor=Wzk5OTk5OTk5OTk5OTk5OTk5OTk5OTksICJhIl0",  # a number past Int64
        ):
            response = client.get(f"/console/api/requests?{query}")
            assert response.status_code == 400, (query, response.text[:200])
            assert response.json()["error"]["code"] == "BAD_REQUEST"
    with http(stack, KEY_ACME) as client:
        for body in (b"[" * 5000 + b"]" * 5000, b'{"name": "\xff"}'):
            response = client.post(
                "/admin/orgs/acme/keys", content=body, headers={"content-type": "application/json"}
            )
            assert response.status_code == 400 and response.json()["error"]["code"] == "BAD_REQUEST"
    # tool-call arguments given as an object are accepted (the Anthropic input they become)
    arguments = {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}
    ]}  # fmt: skip
    raw = sdk(stack, KEY_A).chat.completions.with_raw_response.create(
        model="claude-3-5-haiku-latest",
        messages=[{"role": "user", "content": "x"}, arguments, {"role": "user", "content": "y"}],  # type: ignore[list-item]
    )
    assert raw.http_response.status_code == 200


def test_unknown_routes_and_methods_have_their_codes(stack: Floopy) -> None:
    with http(stack) as client:
        missing = client.get("/v2/nothing")
        wrong = client.get("/v1/chat/completions")
        also_wrong = client.put("/v1/embeddings", json={})
        options = client.options("/v1/chat/completions")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "NOT_FOUND")
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (405, "METHOD_NOT_ALLOWED")
    assert (also_wrong.status_code, also_wrong.json()["error"]["code"]) == (
        405,
        "METHOD_NOT_ALLOWED",
    )
    assert wrong.headers["allow"] == "OPTIONS, POST"
    assert (options.status_code, options.headers["allow"]) == (204, "OPTIONS, POST")


# -- 8. providers and routes are checked on write; provider allow-lists --------------------


def test_admin_cannot_exfiltrate_a_secret_or_brick_the_next_start(stack: Floopy) -> None:
    with http(stack, KEY_OPS) as client:
        leak = client.put(
            "/admin/providers/x",
            json={"base_url": "http://attacker/v1", "api_key_env": "FLOOPY_GATEWAY_MASTER_KEY"},
        )
        assert leak.status_code == 400 and "api_key_env" in leak.json()["error"]["message"]
        brick = client.put("/admin/routes/m", json={"targets": ["no-such-provider"]})
        assert brick.status_code == 400 and "unknown provider" in brick.json()["error"]["message"]
        unset = client.put("/admin/providers/y", json={"api_key_env": "FLOOPY_PROVIDER_KEY_NOPE"})
        assert unset.status_code == 400
        good = client.put(
            "/admin/providers/extra",
            json={"base_url": "http://127.0.0.1:9/v1", "api_key_env": "FLOOPY_PROVIDER_KEY_EXTRA",
                  "models": ["extra-only"]},
        )  # fmt: skip
        assert good.status_code == 200, good.text
        assert client.put("/admin/routes/m", json={"targets": ["extra"]}).status_code == 200
        # a provider a route still names cannot go
        assert client.delete("/admin/providers/extra").status_code == 400
        assert client.get("/admin/routes").json()["data"]["m"] == ["extra"]
    # what was accepted starts: a new gateway on the same Redis comes up healthy
    stack.start_gateway(
        name="gateway-restart", port=free_port(), FLOOPY_PROVIDER_KEY_EXTRA="sk-extra"
    )
    stack.stop("gateway-restart")


def test_a_provider_with_an_org_allow_list_serves_those_orgs_only(stack: Floopy) -> None:
    ok = sdk(stack, KEY_A).chat.completions.with_raw_response.create(
        model="private/gpt-4o-mini", messages=HELLO
    )
    assert ok.headers["floopy-provider"] == "private"
    for model in ("private/gpt-4o-mini", "private-only"):
        error = refused(
            lambda m=model: sdk(stack, KEY_B).chat.completions.create(model=m, messages=HELLO)
        )
        assert error.status_code == 400 and "not available" in error.message


# -- 9. ids: one charset, no reach into another org's keys ----------------------------------


def test_ids_with_separators_are_refused(stack: Floopy) -> None:
    with http(stack, KEY_OPS) as ops:
        created = ops.put("/admin/orgs/acme:eu", json={"name": "eu"})
        assert created.status_code == 400 and "A-Z a-z 0-9" in created.json()["error"]["message"]
    with http(stack, KEY_ACME) as acme:
        message = [{"role": "user", "content": "hi"}]
        bad = acme.post("/admin/orgs/acme/templates/eu:secret", json={"messages": message})
        assert bad.status_code == 400
        assert acme.get("/admin/orgs/acme/templates/eu:secret").status_code == 400
        assert acme.get("/admin/orgs/acme/templates").json() == {"data": []}
    # what an older version let in stays out of reach: a template under "acme:eu"
    redis = Redis.from_url(stack.redis.url)
    try:
        redis.hset(f"{stack.tag}:tpl:acme:eu:secret", mapping={"latest": 1, "v1": "{}"})
    finally:
        redis.close()
    with http(stack, KEY_ACME) as acme:
        assert acme.get("/admin/orgs/acme/templates").json() == {"data": []}


# -- 10. expired orgs: reads for a grace period, no writes --------------------------------------


def test_an_expired_org_reads_for_a_while_and_writes_nothing(stack: Floopy) -> None:
    with http(stack, KEY_EXPIRED) as client:
        assert client.get("/admin/orgs/org-expired").status_code == 200
        assert client.get("/console/api/requests").status_code == 200
        key = client.post("/admin/orgs/org-expired/keys", json={"name": "new"})
        template = client.post(
            "/admin/orgs/org-expired/templates/t",
            json={"messages": [{"role": "user", "content": "x"}]},
        )
        for response in (key, template):
            assert response.status_code == 403
            assert response.json()["error"]["code"] == "SUBSCRIPTION_EXPIRED"
    with http(stack, KEY_OPS) as ops:  # not through an operator either
        response = ops.post("/admin/orgs/org-expired/keys", json={"name": "new"})
        assert response.json()["error"]["code"] == "SUBSCRIPTION_EXPIRED"
    with http(stack, KEY_LAPSED) as client:  # 40 days: past the 30-day grace
        for response in (client.get("/console/api/requests"), client.get("/admin/orgs/org-lapsed")):
            assert response.json()["error"]["code"] == "SUBSCRIPTION_EXPIRED"


# -- 11. /health public liveness, counters behind an operator key; console headers ------------


def test_health_counters_need_an_operator_key(stack: Floopy) -> None:
    assert set(httpx.get(f"{stack.gateway_url}/health").json()) == {"status", "redis"}
    with http(stack, KEY_A) as tenant:
        assert set(tenant.get("/health").json()) == {"status", "redis"}
    with http(stack, KEY_OPS) as ops:
        health = ops.get("/health").json()
    assert {"publisher", "access", "errors", "guard"} <= set(health)
    assert health["guard"]["refused_in_flight"] >= 0


def test_console_pages_carry_security_headers(stack: Floopy) -> None:
    for path in ("/console", "/console/static/app.js"):
        headers = httpx.get(f"{stack.gateway_url}{path}").headers
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert "'unsafe-inline'" not in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"


def test_the_worker_survived(stack: Floopy) -> None:
    """Last in the module: nothing above killed or wedged the worker."""
    raw = sdk(stack, KEY_A).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO
    )
    assert raw.http_response.status_code == 200
    assert stack.processes["gateway"].poll() is None
