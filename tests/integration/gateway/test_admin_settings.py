"""The admin API behind the console's Settings, in-process against real Redis and the fake
provider: who may change what (a ``read`` key nothing, an org admin its own org's keys only,
operators providers, routes and plans), key edits that the next request obeys, an audit entry
for every change with no secret in it, and stored routes followed without a restart."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from pydantic import SecretStr
from redis.asyncio import Redis

from devstack.fake_openai import FakeOpenAIThread
from devstack.servers import RedisServer
from gateway.admin.secrets import new_master_key
from gateway.app import create_app
from gateway.clients.routing_config import RoutingConfigStore
from gateway.settings import GatewaySettings, ProviderSettings
from shared.settings import RedisSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

ADMIN, READ, OPS, OTHER = (
    "sk-floopy-set-admin",
    "sk-floopy-set-read",
    "sk-floopy-set-ops",
    "sk-floopy-set-other",
)
UPSTREAM_SECRET = "sk-upstream-very-secret"
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def settings(redis_server: RedisServer, fake: FakeOpenAIThread, tmp_path: Path) -> GatewaySettings:
    seed = {
        "orgs": {"org-a": {"name": "A"}, "org-b": {"name": "B"}, "org-ops": {"name": "Ops"}},
        "keys": {
            "key-admin": {"org": "org-a", "secret": ADMIN, "permissions": ["proxy", "admin"]},
            "key-read": {"org": "org-a", "secret": READ, "permissions": ["read"]},
            "key-ops": {"org": "org-ops", "secret": OPS, "permissions": ["admin"]},
            "key-other": {"org": "org-b", "secret": OTHER},
        },
    }
    config = tmp_path / "floopy.json"
    config.write_text(json.dumps(seed))
    upstream: dict[str, Any] = {"base_url": fake.base_url, "api_key": "sk-up", "timeout_s": 2}
    return GatewaySettings(
        redis=RedisSettings(url=redis_server.url, key_prefix=f"t{uuid.uuid4().hex[:10]}"),
        providers=[
            ProviderSettings(name="primary", **upstream),
            ProviderSettings(name="backup", **upstream),
        ],
        config_file=config,
        operator_orgs=["org-ops"],
        master_key=SecretStr(new_master_key()),
        key_cache_ttl_s=0.2,
        routing_refresh_s=0.2,
    )


@pytest.fixture
async def client(settings: GatewaySettings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(app=create_app(settings)) as test_client:
        yield test_client


async def test_a_read_key_sees_settings_and_changes_nothing(client: AsyncTestClient[Any]) -> None:
    me = (await client.get("/admin/me", headers=auth(READ))).json()
    assert (me["org"]["org_id"], me["can_edit"], me["operator"]) == ("org-a", False, False)
    assert (await client.get("/admin/orgs/org-a/keys", headers=auth(READ))).status_code == 200
    assert (await client.get("/admin/orgs/org-a/audit", headers=auth(READ))).status_code == 200
    refused = [
        await client.post("/admin/orgs/org-a/keys", json={}, headers=auth(READ)),
        await client.patch("/admin/keys/key-admin", json={"name": "x"}, headers=auth(READ)),
        await client.delete("/admin/keys/key-admin", headers=auth(READ)),
        await client.put("/admin/routes/gpt-4o", json={"targets": ["backup"]}, headers=auth(READ)),
    ]
    assert [(r.status_code, r.json()["error"]["code"]) for r in refused] == [(403, "FORBIDDEN")] * 4
    assert (await client.get("/admin/me", headers=auth(OTHER))).status_code == 403  # proxy only


async def test_an_org_admin_cannot_touch_another_org_or_providers(
    client: AsyncTestClient[Any],
) -> None:
    h = auth(ADMIN)
    assert (await client.get("/admin/orgs/org-b", headers=h)).status_code == 404
    assert (await client.get("/admin/orgs/org-b/audit", headers=h)).status_code == 404
    assert (await client.post("/admin/orgs/org-b/keys", json={}, headers=h)).status_code == 404
    patched = await client.patch("/admin/keys/key-other", json={"name": "mine"}, headers=h)
    assert patched.status_code == 404
    put_provider = await client.put("/admin/providers/x", json={"base_url": "http://x"}, headers=h)
    assert put_provider.status_code == 403
    put_route = await client.put("/admin/routes/gpt-4o", json={"targets": ["backup"]}, headers=h)
    assert put_route.status_code == 403
    assert (await client.put("/admin/orgs/org-a", json={}, headers=h)).status_code == 403
    view = (await client.get("/admin/routing", headers=h)).json()
    assert view["editable"] is False
    assert {p["name"] for p in view["providers"]} == {"primary", "backup"}
    assert all("base_url" not in p and "has_credential" not in p for p in view["providers"])
    ops_view = (await client.get("/admin/routing", headers=auth(OPS))).json()
    assert ops_view["editable"] is True and all(p["base_url"] for p in ops_view["providers"])


async def test_key_edits_apply_to_the_next_requests(client: AsyncTestClient[Any]) -> None:
    created = await client.post(
        "/admin/orgs/org-a/keys", json={"name": "ci", "permissions": ["proxy"]}, headers=auth(ADMIN)
    )
    assert created.status_code == 201, created.text
    secret, key_id = created.json()["secret"], created.json()["key"]["key_id"]
    assert (
        await client.post("/v1/chat/completions", json=CHAT, headers=auth(secret))
    ).status_code == 200

    body = {"limits": {"rate_limit_policy": "1;w=3600"}, "switches": {"log_bodies": False}}
    patched = await client.patch(f"/admin/keys/{key_id}", json=body, headers=auth(ADMIN))
    assert patched.status_code == 200, patched.text
    key = patched.json()["key"]
    assert (
        key["limits"]["rate_limit_policy"] == "1;w=3600" and key["switches"]["log_bodies"] is False
    )
    assert key["switches"]["cache"] is True and key["name"] == "ci"  # the rest stays
    await asyncio.sleep(0.3)  # the key cache TTL
    statuses = []
    for _ in range(2):
        r = await client.post("/v1/chat/completions", json=CHAT, headers=auth(secret))
        statuses.append(r.status_code)
    assert statuses == [200, 429]
    assert '"key";q=1;w=3600' in r.headers["ratelimit-policy"]

    bad = [
        {"limits": {"rate_limit_policy": "5"}},
        {"nope": 1},
        {"permissions": []},
        {"switches": {"cache": "maybe"}},
    ]
    for wrong in bad:
        r = await client.patch(f"/admin/keys/{key_id}", json=wrong, headers=auth(ADMIN))
        assert (r.status_code, r.json()["error"]["code"]) == (400, "BAD_REQUEST"), wrong

    await client.patch(f"/admin/keys/{key_id}", json={"permissions": ["read"]}, headers=auth(ADMIN))
    await asyncio.sleep(0.3)
    r = await client.post("/v1/chat/completions", json=CHAT, headers=auth(secret))
    assert r.status_code == 403


async def test_every_change_is_in_the_audit_log_without_secrets(
    client: AsyncTestClient[Any], settings: GatewaySettings
) -> None:
    created = await client.post("/admin/orgs/org-a/keys", json={"name": "k"}, headers=auth(ADMIN))
    secret, key_id = created.json()["secret"], created.json()["key"]["key_id"]
    await client.patch(f"/admin/keys/{key_id}", json={"name": "renamed"}, headers=auth(ADMIN))
    await client.delete(f"/admin/keys/{key_id}", headers=auth(ADMIN))
    ops = auth(OPS)
    provider = {"base_url": "http://127.0.0.1:9/v1", "api_key": UPSTREAM_SECRET}
    assert (
        await client.put("/admin/providers/vault", json=provider, headers=ops)
    ).status_code == 200
    kept = await client.put("/admin/providers/vault", json={"base_url": "http://x/v1"}, headers=ops)
    assert kept.status_code == 200
    assert (
        await client.put("/admin/routes/m1", json={"targets": ["backup"]}, headers=ops)
    ).status_code == 200
    assert (await client.delete("/admin/routes/m1", headers=ops)).status_code == 200
    plan = {"rate_limit": "50;w=60", "plan": {"monthly_requests": 10}}
    assert (await client.put("/admin/orgs/org-a", json=plan, headers=ops)).status_code == 200

    org_a = (await client.get("/admin/orgs/org-a/audit", headers=auth(READ))).json()["data"]
    assert [e["action"] for e in org_a] == ["org.put", "key.revoke", "key.update", "key.create"]
    update = org_a[2]
    assert update["actor"] == {
        "kind": "key",
        "id": "key-admin",
        "org_id": "org-a",
        "name": "key-admin",
    }
    assert (update["before"]["name"], update["after"]["name"]) == ("k", "renamed")
    assert org_a[0]["actor"]["org_id"] == "org-ops"  # an operator changed org-a's plan
    assert org_a[0]["after"]["plan"]["monthly_requests"] == 10
    ops_log = (await client.get("/admin/orgs/org-ops/audit", headers=ops)).json()["data"]
    assert [e["action"] for e in ops_log] == [
        "org.put",
        "route.delete",
        "route.put",
        "provider.put",
        "provider.put",
    ]
    gateway_log = (await client.get("/admin/audit", headers=ops)).json()["data"]
    assert [e["action"] for e in gateway_log] == [a["action"] for a in ops_log[1:]]
    assert (await client.get("/admin/audit", headers=auth(ADMIN))).status_code == 403
    assert ops_log[4]["after"]["api_key_encrypted"] == "[redacted]"
    assert ops_log[3]["after"]["api_key_encrypted"] == "[redacted]"  # kept on an edit
    stored = await RoutingConfigStore(
        Redis.from_url(settings.redis.url), prefix=settings.redis.key_prefix
    ).providers()
    assert next(p for p in stored if p["name"] == "vault")["api_key_encrypted"]
    # nothing secret anywhere in the raw logs
    redis = Redis.from_url(settings.redis.url)
    raw = b""
    try:
        for org in ("org-a", "org-ops", "org-b"):
            key = f"{settings.redis.key_prefix}:audit:{org}"
            raw += b"".join(await redis.lrange(key, 0, -1))
    finally:
        await redis.aclose()
    assert UPSTREAM_SECRET.encode() not in raw and secret.encode() not in raw
    assert b"key_hash" not in raw and b"gAAAA" not in raw  # no hash, no Fernet token


BAD_PROVIDERS: list[tuple[str, dict[str, Any], str]] = [
    ("p", {"base_url": "ftp://files.example/v1"}, "base_url"),
    ("p", {"base_url": "api.example.com/v1"}, "base_url"),
    ("p", {"base_url": 42}, "base_url"),
    ("p", {"base_url": "http://p/v1", "models": "gpt-4o"}, "models"),
    ("p", {"base_url": "http://p/v1", "models": [1, 2]}, "models.0"),
    ("p", {"base_url": "http://p/v1", "timeout_s": "slow"}, "timeout_s"),
    ("p", {"base_url": "http://p/v1", "timeout_s": -1}, "timeout_s"),
    ("p", {"base_url": "http://p/v1", "kind": "grok"}, "kind"),
    ("p", {"base_ulr": "http://p/v1"}, "base_ulr"),
    ("p", {"base_url": "http://p/v1", "api_key_env": "FLOOPY_PROVIDER_KEY_A B"}, "api_key_env"),
    ("p", {"base_url": "http://p/v1", "api_key_env": "HOME"}, "api_key_env"),
    ("p", {"base_url": "http://p/v1", "api_key_env": ["FLOOPY_PROVIDER_KEY_A"]}, "api_key_env"),
    ("p", {"base_url": "http://p/v1", "api_key_encrypted": "not-a-token"}, "api_key_encrypted"),
    ("a@b", {"base_url": "http://p/v1"}, "name"),
]
BAD_ROUTES: list[tuple[str, Any, str]] = [
    ("gpt-4o", {"targets": ["nowhere"]}, "targets"),  # an unknown provider
    ("gpt-4o", {"targets": ["backup", "nowhere/gpt-4o-mini"]}, "targets"),
    ("gpt-4o", {"targets": "backup"}, "targets"),
    ("gpt-4o", {"targets": []}, "targets"),
    ("gpt-4o", {"targets": [""]}, "targets"),
    ("gpt-4o", {"targets": ["/gpt-4o-mini"]}, "targets"),
    ("gpt-4o", {"targets": [7]}, "targets"),
    ("gpt-4o", {"target": ["backup"]}, "target"),
    ("gpt-4o", ["backup"], ""),
]


async def test_bad_providers_and_routes_are_json_400s_naming_the_field(
    client: AsyncTestClient[Any], settings: GatewaySettings
) -> None:
    """Every write is checked before it is stored: a bad one is 400 BAD_REQUEST naming the
    field, and nothing of it reaches the store, the audit log or the routing version."""
    ops = auth(OPS)
    redis = Redis.from_url(settings.redis.url)
    store = RoutingConfigStore(redis, prefix=settings.redis.key_prefix)
    version = await store.version()
    answers = [
        (await client.put(f"/admin/providers/{name}", json=body, headers=ops), field)
        for name, body, field in BAD_PROVIDERS
    ] + [
        (await client.put(f"/admin/routes/{model}", json=body, headers=ops), field)
        for model, body, field in BAD_ROUTES
    ]
    for answer, field in answers:
        what = f"{answer.request.url} {answer.request.content!r}: {answer.text}"
        assert answer.status_code == 400, what
        assert answer.headers["content-type"].startswith("application/json"), what
        error = answer.json()["error"]
        assert error["code"] == "BAD_REQUEST", what
        assert field in error["message"], what
        if field:
            assert error.get("param", field) == field, what
    try:
        assert await store.providers() == []
        assert await store.routes() == {}
        assert await store.version() == version
    finally:
        await redis.aclose()
    audit = (await client.get("/admin/audit", headers=ops)).json()["data"]
    assert audit == []
    # and the gateway still routes as before
    assert await _provider_of_next_request(client) == "primary"


async def _provider_of_next_request(client: AsyncTestClient[Any]) -> str:
    bypass = {**auth(ADMIN), "Floopy-Cache-Enabled": "false"}  # a cache hit calls no provider
    r = await client.post("/v1/chat/completions", json=CHAT, headers=bypass)
    assert r.status_code == 200, r.text
    return str(r.headers["floopy-provider"])


async def _until_provider(client: AsyncTestClient[Any], want: str, timeout_s: float = 5) -> None:
    async with asyncio.timeout(timeout_s):
        while await _provider_of_next_request(client) != want:  # noqa: ASYNC110 - polls workers
            await asyncio.sleep(0.05)


async def test_stored_routes_and_providers_are_followed_without_a_restart(
    client: AsyncTestClient[Any], settings: GatewaySettings, fake: FakeOpenAIThread
) -> None:
    ops = auth(OPS)
    assert await _provider_of_next_request(client) == "primary"
    r = await client.put("/admin/routes/gpt-4o", json={"targets": ["backup"]}, headers=ops)
    assert r.status_code == 200 and "follows" in r.json()["note"]
    await _until_provider(client, "backup")
    third = {"base_url": fake.base_url, "api_key": "sk-up", "models": ["gpt-4o"]}
    assert (await client.put("/admin/providers/third", json=third, headers=ops)).status_code == 200
    await client.put("/admin/routes/gpt-4o", json={"targets": ["third"]}, headers=ops)
    await _until_provider(client, "third")
    view = (await client.get("/admin/routing", headers=ops)).json()
    assert {"model": "gpt-4o", "targets": ["third"], "stored": True} in view["routes"]

    # a stored configuration that cannot route is refused by the workers, which keep serving
    store = RoutingConfigStore(Redis.from_url(settings.redis.url), prefix=settings.redis.key_prefix)
    await store.put_route("gpt-4o", ["nowhere"])
    health: dict[str, Any] = {}
    async with asyncio.timeout(5):
        while not health.get("failures"):
            health = (await client.get("/health", headers=ops)).json()["routing"]
            await asyncio.sleep(0.05)
    assert await _provider_of_next_request(client) == "third"

    assert (await client.delete("/admin/routes/gpt-4o", headers=ops)).status_code == 200
    assert (await client.delete("/admin/providers/third", headers=ops)).status_code == 200
    await _until_provider(client, "primary")  # back to the settings' own order
    assert (await client.get("/health", headers=ops)).json()["routing"]["reloads"] >= 3
