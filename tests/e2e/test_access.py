"""Keys, orgs, limits, templates and the admin API through the official SDK, against one stack:
two gateways (A with 2 granian workers, B with 1) sharing Redis, a fake provider and an ingester.

Every refusal of the error table (README "Errors", docs/architecture.md §5) this part owns is
reproduced with its status, code and headers, and found in ClickHouse with its error code.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypedDict

import httpx
import openai
import pytest

from devstack.servers import ClickHouseServer, RedisServer, free_port
from tests.e2e.harness import API_KEY, ORG_ID, Floopy

pytestmark = pytest.mark.e2e

TTL_S = 1
MODEL = "gpt-4o-mini"
HELLO = [{"role": "user", "content": "hello"}]
ADMIN_KEY = "sk-floopy-e2e-admin"
OPS_KEY = "sk-floopy-e2e-operator"
KEYS: dict[str, tuple[str, dict[str, Any]]] = {
    "key-read": ("sk-floopy-e2e-read", {"permissions": ["read"]}),
    "key-limited": ("sk-floopy-e2e-limited", {"limits": {"rate_limit_policy": "3;w=3600"}}),
    "key-shared": ("sk-floopy-e2e-shared", {"limits": {"rate_limit_policy": "10;w=3600"}}),
    "key-usage": ("sk-floopy-e2e-usage", {"limits": {"daily_tokens": 1}}),
    "key-nobodies": ("sk-floopy-e2e-nobodies", {"switches": {"log_bodies": False}}),
    "key-revoke": ("sk-floopy-e2e-revoke", {}),
    "key-header": ("sk-floopy-e2e-header", {}),
    "key-admin": (ADMIN_KEY, {"permissions": ["admin"]}),
}


def config() -> dict[str, Any]:
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    orgs = {
        ORG_ID: {"name": "e2e"},
        "org-expired": {"plan": {"expires_at": past}},
        "org-quota": {"plan": {"monthly_requests": 2}},
        "org-overage": {"plan": {"monthly_requests": 1, "overage_allowed": True}},
        "org-ops": {"name": "operators"},
    }
    keys: dict[str, Any] = {
        "key-e2e": {"org": ORG_ID, "secret": API_KEY, "permissions": ["proxy", "read"]},
        "key-expired": {"org": "org-expired", "secret": "sk-floopy-e2e-expired"},
        "key-quota": {"org": "org-quota", "secret": "sk-floopy-e2e-quota"},
        "key-overage": {"org": "org-overage", "secret": "sk-floopy-e2e-overage"},
        "key-ops": {"org": "org-ops", "secret": OPS_KEY, "permissions": ["admin"]},
    }
    for key_id, (secret, extra) in KEYS.items():
        keys[key_id] = {"org": ORG_ID, "secret": secret, **extra}
    template = [
        {"role": "system", "content": "You help with {{product}}."},
        {"role": "user", "content": "Greet {{ name }}."},
    ]
    return {
        "orgs": orgs,
        "keys": keys,
        "templates": [{"id": "greet", "org": ORG_ID, "messages": template}],
    }


class _CommonEnv(TypedDict):
    """The environment both gateways of the stack share (a TypedDict: mypy then knows it holds
    none of ``start_gateway``'s own parameters)."""

    FLOOPY_GATEWAY_KEY_CACHE_TTL_S: str
    FLOOPY_GATEWAY_OPERATOR_ORGS: str
    FLOOPY_GATEWAY_CLICKHOUSE__PORT: str
    FLOOPY_GATEWAY_CLICKHOUSE__DATABASE: str


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    clickhouse_server: ClickHouseServer,
) -> Iterator[Floopy]:
    floopy = Floopy(tmp_path_factory.mktemp("access"), redis_server, clickhouse_server)
    floopy.config = config()
    common: _CommonEnv = {
        "FLOOPY_GATEWAY_KEY_CACHE_TTL_S": str(TTL_S),
        "FLOOPY_GATEWAY_OPERATOR_ORGS": '["org-ops"]',
        "FLOOPY_GATEWAY_CLICKHOUSE__PORT": str(clickhouse_server.port),  # the console reads
        "FLOOPY_GATEWAY_CLICKHOUSE__DATABASE": floopy.database,
    }
    floopy.start_provider()
    floopy.start_ingester()
    floopy.start_gateway(workers=2, **common)
    floopy.gateway_b_port = free_port()  # type: ignore[attr-defined]
    floopy.start_gateway(name="gateway-b", port=floopy.gateway_b_port, **common)  # type: ignore[attr-defined]
    yield floopy
    floopy.stop_all()


def sdk(stack: Floopy, key: str, gateway: str = "a") -> openai.OpenAI:
    port = stack.gateway_port if gateway == "a" else stack.gateway_b_port  # type: ignore[attr-defined]
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)


def secret(key_id: str) -> str:
    return KEYS[key_id][0]


def refused(call: Any) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as info:
        call()
    return info.value


def code_of(error: openai.APIStatusError) -> str:
    body = error.response.json()
    return str(body["error"]["code"])


def chat(client: openai.OpenAI, **kwargs: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model=kwargs.pop("model", MODEL), messages=kwargs.pop("messages", HELLO), **kwargs
    )


def logged_error_codes(stack: Floopy, request_ids: list[str]) -> dict[str, tuple[str, int]]:
    rows = stack.query(
        "SELECT request_id, error_code, status_code FROM requests FINAL "
        "WHERE request_id IN %(ids)s",
        {"ids": tuple(request_ids)},
    )
    return {str(r[0]): (str(r[1]), int(r[2])) for r in rows}


def test_error_table_rows_through_the_sdk(stack: Floopy) -> None:
    """One request per refusal; each has its status, code and headers, and its record."""
    seen: dict[str, tuple[str, int]] = {}

    def expect(call: Any, status: int, code: str) -> openai.APIStatusError:
        error = refused(call)
        assert (error.status_code, code_of(error)) == (status, code), error.response.text
        seen[error.response.headers["floopy-request-id"]] = (code, status)
        return error

    client = sdk(stack, API_KEY)
    expect(lambda: chat(client, messages=[]), 400, "BAD_REQUEST")
    no_key = {"Authorization": openai.Omit()}  # the SDK always sends one; drop it
    expect(lambda: chat(client, extra_headers=no_key), 401, "INVALID_API_KEY")
    expect(lambda: chat(sdk(stack, "sk-floopy-unknown")), 401, "INVALID_API_KEY")
    expect(lambda: chat(sdk(stack, secret("key-read"))), 403, "FORBIDDEN")
    expect(lambda: chat(sdk(stack, "sk-floopy-e2e-expired")), 403, "SUBSCRIPTION_EXPIRED")

    limited = sdk(stack, secret("key-limited"))
    first = chat(limited)
    assert first.headers["ratelimit-policy"] == '"org";q=10000;w=60, "key";q=3;w=3600'
    # GCRA with the quota as burst: one unit back every 3600 / 3 = 1200 s
    assert '"key";r=2;t=1200' in first.headers["ratelimit"]
    chat(limited)
    chat(limited)
    error = expect(lambda: chat(limited), 429, "RATE_LIMIT_EXCEEDED")
    assert 1200 - 60 <= int(error.response.headers["retry-after"]) <= 1200
    assert '"key";r=0' in error.response.headers["ratelimit"]

    quota = sdk(stack, "sk-floopy-e2e-quota")
    chat(quota)
    chat(quota)
    expect(lambda: chat(quota), 429, "MONTHLY_LIMIT_EXCEEDED")
    overage = sdk(stack, "sk-floopy-e2e-overage")
    assert [chat(overage).http_response.status_code for _ in range(3)] == [200, 200, 200]

    usage = sdk(stack, secret("key-usage"))
    chat(usage)  # the request that crosses the limit runs: its tokens are known afterwards

    def usage_refused() -> bool:
        """Usage is counted after the response: poll until the counter has reached Redis."""
        try:
            chat(usage)
        except openai.RateLimitError as exc:
            assert code_of(exc) == "USAGE_LIMIT_EXCEEDED", exc.response.text
            seen[exc.response.headers["floopy-request-id"]] = ("USAGE_LIMIT_EXCEEDED", 429)
            return True
        return False

    stack.wait_for(usage_refused, timeout_s=30, what="usage limit to refuse")

    stack.wait_for(
        lambda: len(logged_error_codes(stack, list(seen))) == len(seen),
        what="every refused request's record in ClickHouse",
    )
    assert logged_error_codes(stack, list(seen)) == seen
    assert {code for code, _ in seen.values()} == {
        "BAD_REQUEST",
        "INVALID_API_KEY",
        "FORBIDDEN",
        "SUBSCRIPTION_EXPIRED",
        "RATE_LIMIT_EXCEEDED",
        "MONTHLY_LIMIT_EXCEEDED",
        "USAGE_LIMIT_EXCEEDED",
    }


def test_per_request_policy_header_segments_by_user(stack: Floopy) -> None:
    client = sdk(stack, secret("key-header"))
    policy = {"floopy-ratelimit-policy": "2;w=60;u=request;s=user"}
    alice = {**policy, "floopy-user-id": "alice"}
    chat(client, extra_headers=alice)
    chat(client, extra_headers=alice)
    error = refused(lambda: chat(client, extra_headers=alice))
    assert (error.status_code, code_of(error)) == (429, "RATE_LIMIT_EXCEEDED")
    assert error.response.json()["error"]["limit"] == "request"
    bob = chat(client, extra_headers={**policy, "floopy-user-id": "bob"})
    assert '"request";r=1' in bob.headers["ratelimit"]
    bad = refused(lambda: chat(client, extra_headers={"floopy-ratelimit-policy": "2;w=60;u=x"}))
    assert (bad.status_code, code_of(bad)) == (400, "BAD_REQUEST")
    assert "unit (u)" in bad.message


def test_a_token_policy_is_charged_the_answers_tokens_after_the_response(stack: Floopy) -> None:
    """A token-unit bucket is only checked on admission and charged the answer's tokens once
    the response is out: a quota of one token lets the first request through, then refuses."""
    client = sdk(stack, secret("key-header"))
    headers = {"floopy-ratelimit-policy": "1;w=3600;u=token;s=user", "floopy-user-id": "tok"}

    def ask(n: int) -> Any:
        return chat(
            client, messages=[{"role": "user", "content": f"count {n}"}], extra_headers=headers
        )

    first = ask(0)
    assert first.parse().usage.total_tokens >= 1
    assert '"request";r=1' in first.headers["ratelimit"]
    admitted = 1
    for n in range(1, 50):  # the charge lands a batch later (the usage recorder's drain)
        try:
            ask(n)
        except openai.APIStatusError as error:
            assert (error.status_code, code_of(error)) == (429, "RATE_LIMIT_EXCEEDED")
            assert error.response.json()["error"]["limit"] == "request"
            break
        admitted += 1
        time.sleep(0.05)
    else:
        pytest.fail("the answers' tokens were never charged to the token bucket")
    assert admitted <= 5


def test_prompt_template_renders_from_inputs_and_is_recorded(stack: Floopy) -> None:
    client = sdk(stack, API_KEY)
    inputs = {"product": "Floopy", "name": "Ada"}
    raw = chat(
        client,
        messages=[],
        extra_headers={"floopy-prompt-id": "greet"},
        extra_body={"inputs": inputs},
    )
    request_id = raw.headers["floopy-request-id"]
    assert raw.parse().choices[0].message.content

    for body, needle in [
        ({"product": "Floopy"}, "missing input 'name'"),
        ({**inputs, "nmae": "x"}, "no variable 'nmae'"),
    ]:
        error = refused(
            lambda body=body: chat(
                client,
                messages=[],
                extra_headers={"floopy-prompt-id": "greet@1"},
                extra_body={"inputs": body},
            )
        )
        assert (error.status_code, code_of(error)) == (400, "BAD_REQUEST")
        assert needle in error.response.json()["error"]["message"]
    unknown = refused(lambda: chat(client, messages=[], extra_headers={"floopy-prompt-id": "nope"}))
    assert "unknown prompt template 'nope'" in unknown.response.json()["error"]["message"]

    def row() -> tuple[Any, ...]:
        found = stack.query(
            "SELECT prompt_id, prompt_version, prompt_input_keys, prompt_input_values, "
            "request_body FROM requests FINAL WHERE request_id = %(id)s",
            {"id": request_id},
        )
        return found[0]

    stack.wait_for(lambda: bool(row()), what="the templated request's record")
    prompt_id, version, keys, values, body = row()
    assert (prompt_id, version) == ("greet", 1)
    assert dict(zip(keys, values, strict=True)) == inputs
    assert '"inputs"' in body  # the caller's body as sent


def test_body_logging_off_blanks_bodies(stack: Floopy) -> None:
    raw = chat(sdk(stack, secret("key-nobodies")))
    request_id = raw.headers["floopy-request-id"]

    def row() -> list[tuple[Any, ...]]:
        return stack.query(
            "SELECT request_body, response_body, bodies_redacted, total_tokens "
            "FROM requests FINAL WHERE request_id = %(id)s",
            {"id": request_id},
        )

    stack.wait_for(lambda: bool(row()), what="the record")
    request_body, response_body, redacted, tokens = row()[0]
    assert (request_body, response_body, redacted) == ("", "", 1) and tokens > 0


def test_rate_limit_holds_across_two_gateways(stack: Floopy) -> None:
    """Limit 10 per hour, 16 requests at once spread over both gateways: exactly 10 pass."""
    clients = [sdk(stack, secret("key-shared"), g) for g in ("a", "b")]

    def one(i: int) -> tuple[int, str]:
        try:
            return chat(clients[i % 2]).http_response.status_code, ""
        except openai.APIStatusError as exc:
            return exc.status_code, exc.response.headers.get("retry-after", "")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(16)))
    assert sorted(status for status, _ in results) == [200] * 10 + [429] * 6
    # GCRA with the whole quota as burst: one unit comes back every 3600 / 10 = 360 s after
    # the burst began, so each refusal says a little under 360 s.
    retry_after = [int(r) for status, r in results if status == 429]
    assert all(360 - 60 <= r <= 360 for r in retry_after), retry_after


def test_admin_api_and_revocation_reach_every_worker(stack: Floopy) -> None:
    admin = httpx.Client(
        base_url=stack.gateway_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    created = admin.post(f"/admin/orgs/{ORG_ID}/keys", json={"name": "ci"})
    assert created.status_code == 201, created.text
    new_secret = created.json()["secret"]
    assert "key_hash" not in created.json()["key"]
    assert chat(sdk(stack, new_secret, "b")).http_response.status_code == 200
    listed = admin.get(f"/admin/orgs/{ORG_ID}/keys").json()["data"]
    assert created.json()["key"]["key_id"] in {k["key_id"] for k in listed}
    assert admin.get("/admin/orgs/org-quota").status_code == 404  # another org: not disclosed
    assert admin.put("/admin/routes/gpt-4o", json={"targets": ["openai"]}).status_code == 403
    as_proxy = httpx.get(
        f"{stack.gateway_url}/admin/orgs/{ORG_ID}",
        headers={"Authorization": f"Bearer {secret('key-header')}"},
    )
    assert (as_proxy.status_code, as_proxy.json()["error"]["code"]) == (403, "FORBIDDEN")
    as_reader = httpx.get(  # read may see its org's settings, not change them
        f"{stack.gateway_url}/admin/orgs/{ORG_ID}", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert as_reader.status_code == 200
    ops = httpx.Client(base_url=stack.gateway_url, headers={"Authorization": f"Bearer {OPS_KEY}"})
    assert ops.put("/admin/routes/gpt-4o", json={"targets": ["openai"]}).status_code == 200
    assert ops.get("/admin/routes").json()["data"] == {"gpt-4o": ["openai"]}

    revoked = secret("key-revoke")
    for gateway in ("a", "b"):  # every worker has the key cached
        for _ in range(6):
            chat(sdk(stack, revoked, gateway))
    assert admin.delete("/admin/keys/key-revoke").status_code == 200
    revoked_at = time.monotonic()
    for gateway in ("a", "b"):

        def rejected(gateway: str = gateway) -> bool:
            try:
                chat(sdk(stack, revoked, gateway))
            except openai.AuthenticationError:
                return True
            return False

        stack.wait_for(rejected, timeout_s=10, what=f"revocation on gateway {gateway}")
    elapsed = time.monotonic() - revoked_at
    # The documented bound is the cache TTL; after it, every worker of both gateways refuses.
    time.sleep(max(0.0, TTL_S - elapsed) + 0.2)
    statuses = []
    for gateway in ("a", "a", "a", "a", "a", "a", "b", "b"):
        statuses.append(refused(lambda g=gateway: chat(sdk(stack, revoked, g))).status_code)
    assert statuses == [401] * 8


def test_fail_open_when_redis_is_down(
    tmp_path: Path,
    redis_factory: Any,
    clickhouse_server: ClickHouseServer,
) -> None:
    redis = redis_factory()
    floopy = Floopy(tmp_path, redis, clickhouse_server)
    # /health shows its counters to an operator's admin key only
    floopy.config["keys"]["key-ops"] = {"org": ORG_ID, "secret": OPS_KEY, "permissions": ["admin"]}
    floopy.start_provider()
    floopy.start_gateway(
        FLOOPY_GATEWAY_KEY_CACHE_TTL_S=str(TTL_S),
        FLOOPY_GATEWAY_PUBLISHER__FLUSH_DEADLINE_S="0.5",  # Redis stays down: do not wait at exit
        FLOOPY_GATEWAY_OPERATOR_ORGS=f'["{ORG_ID}"]',
    )
    ops = {"Authorization": f"Bearer {OPS_KEY}"}
    try:
        client = sdk(floopy, API_KEY)
        assert "floopy-ratelimit-status" not in chat(client).headers
        assert "access" in httpx.get(f"{floopy.gateway_url}/health", headers=ops).json()
        redis.stop()
        time.sleep(TTL_S + 0.2)  # the key's cache entry is stale: the key store cannot answer
        raw = chat(client)
        assert raw.http_response.status_code == 200
        assert raw.headers["floopy-ratelimit-status"] == "unavailable"
        health = httpx.get(f"{floopy.gateway_url}/health", headers=ops).json()
        assert health["access"]["rate_limit_fail_open"] >= 1
        assert health["access"]["key_cache"]["stale_answers"] >= 1
        unknown = refused(lambda: chat(sdk(floopy, "sk-floopy-never-seen")))
        # an unknown key is never let through: the gateway cannot check it, and says so
        assert (unknown.status_code, code_of(unknown)) == (502, "PROVIDER_ERROR")
        assert "key store" in unknown.message
    finally:
        floopy.stop_all()


def test_console_reads_need_the_read_permission(stack: Floopy) -> None:
    """The console authenticates with the same key store: ``read`` (or ``admin``) may read."""
    url = f"{stack.gateway_url}/console/api/requests"

    def get(key: str) -> httpx.Response:
        return httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    proxy_only = get(secret("key-limited"))
    assert (proxy_only.status_code, proxy_only.json()["error"]["code"]) == (403, "FORBIDDEN")
    assert get("sk-floopy-unknown").status_code == 401
    chat(sdk(stack, secret("key-header")))  # a row of the org to find
    stack.wait_for(lambda: get(secret("key-read")).json()["data"] != [], what="console rows")
    ids = tuple(row["request_id"] for row in get(secret("key-read")).json()["data"])
    orgs = stack.query(
        "SELECT DISTINCT org_id FROM requests FINAL WHERE request_id IN %(ids)s", {"ids": ids}
    )
    assert orgs == [(ORG_ID,)]  # only its own org's rows, though other orgs have some
    assert get(ADMIN_KEY).status_code == 200
