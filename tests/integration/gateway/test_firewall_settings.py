"""An org's firewall settings and a key's thresholds: admin API, ``floopy-admin`` and the seed,
against a real Redis (the app in-process through litestar's test client)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from pydantic import SecretStr
from redis.asyncio import Redis
from typer.testing import CliRunner

from devstack.servers import RedisServer
from gateway.admin.cli import app as admin_cli
from gateway.admin.seed import apply_seed, parse_seed
from gateway.app import create_app
from gateway.clients.admin_store import AdminStore
from gateway.clients.routing_config import RoutingConfigStore
from gateway.clients.templates import TemplateStore
from gateway.policy.firewall import FirewallConfig
from gateway.settings import GatewaySettings, ProviderSettings
from shared.settings import RedisSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ADMIN = {"Authorization": "Bearer sk-floopy-fw-admin"}
OPERATOR = {"Authorization": "Bearer sk-floopy-fw-operator"}
SEED: dict[str, Any] = {
    "orgs": {
        "acme": {"name": "Acme", "firewall": {"block_threshold": 0.9, "honour_header": False}},
        "other": {"name": "Other"},
        "ops": {"name": "Operators"},
    },
    "keys": {
        "key-admin": {"org": "acme", "secret": "sk-floopy-fw-admin", "permissions": ["admin"]},
        "key-ops": {"org": "ops", "secret": "sk-floopy-fw-operator", "permissions": ["admin"]},
        "key-loose": {
            "org": "acme",
            "secret": "sk-floopy-fw-loose",
            "limits": {"firewall_flag_threshold": 0.7, "firewall_block_threshold": 0.95},
        },
    },
}


@pytest.fixture
def settings(redis_server: RedisServer, tmp_path: Path) -> GatewaySettings:
    seed = tmp_path / "floopy.json"
    seed.write_text(json.dumps(SEED))
    return GatewaySettings(
        redis=RedisSettings(url=redis_server.url, key_prefix=f"t{uuid.uuid4().hex[:10]}"),
        provider=ProviderSettings(base_url="http://127.0.0.1:9/v1", api_key=SecretStr("sk-up")),
        config_file=seed,
        operator_orgs=["ops"],
    )


@pytest.fixture
async def client(settings: GatewaySettings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(app=create_app(settings)) as test_client:
        yield test_client


async def test_firewall_settings_through_the_admin_api(client: AsyncTestClient[Any]) -> None:
    org = (await client.get("/admin/orgs/acme", headers=ADMIN)).json()
    assert org["firewall"] == {
        "enabled": True,
        "model": "",
        "flag_threshold": 0.5,
        "block_threshold": 0.9,
        "fail_policy": "open",
        "honour_header": False,
    }
    keys = (await client.get("/admin/orgs/acme/keys", headers=ADMIN)).json()["data"]
    loose = next(k for k in keys if k["key_id"] == "key-loose")
    assert loose["limits"]["firewall_block_threshold"] == 0.95

    wanted = {"model": "anthropic/claude-3-5-haiku-latest", "fail_policy": "closed"}
    put = await client.put("/admin/orgs/acme/firewall", json=wanted, headers=ADMIN)
    assert put.status_code == 200, put.text
    shown = (await client.get("/admin/orgs/acme", headers=ADMIN)).json()["firewall"]
    assert shown == {**msgspec.to_builtins(FirewallConfig()), **wanted}
    audit = (await client.get("/admin/orgs/acme/audit", headers=ADMIN)).json()["data"]
    assert audit[0]["action"] == "firewall.put" and audit[0]["after"] == shown
    assert audit[0]["before"]["block_threshold"] == 0.9

    for bad in ({"flag_threshold": 0.9, "block_threshold": 0.5}, {"block_threshold": 2}):
        refused = await client.put("/admin/orgs/acme/firewall", json=bad, headers=ADMIN)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "BAD_REQUEST"
    unknown = await client.put("/admin/orgs/acme/firewall", json={"nope": 1}, headers=ADMIN)
    assert unknown.status_code == 400
    elsewhere = await client.put("/admin/orgs/other/firewall", json={}, headers=ADMIN)
    assert elsewhere.status_code == 404  # another org's settings: not disclosed
    missing = await client.put("/admin/orgs/ghost/firewall", json={}, headers=OPERATOR)
    assert missing.status_code == 404

    # an operator replacing the org's plan keeps its firewall settings
    plan = {"name": "Acme", "plan": {"monthly_requests": 5}}
    assert (await client.put("/admin/orgs/acme", json=plan, headers=OPERATOR)).status_code == 200
    after = (await client.get("/admin/orgs/acme", headers=ADMIN)).json()
    assert after["plan"]["monthly_requests"] == 5 and after["firewall"] == shown


def test_cli_changes_what_it_is_given_and_the_seed_keeps_what_it_omits(
    settings: GatewaySettings,
) -> None:
    env = {
        "FLOOPY_GATEWAY_REDIS__URL": settings.redis.url,
        "FLOOPY_GATEWAY_REDIS__KEY_PREFIX": settings.redis.key_prefix,
    }
    runner = CliRunner()

    def ok(*args: str) -> dict[str, Any]:
        result = runner.invoke(admin_cli, list(args), env=env)
        assert result.exit_code == 0, result.output
        parsed: dict[str, Any] = json.loads(result.stdout)
        return parsed

    ok("orgs", "put", "acme", "--name", "Acme")
    config = ok("orgs", "firewall", "acme", "--block-threshold", "0.7", "--fail-closed")
    assert (config["block_threshold"], config["fail_policy"], config["flag_threshold"]) == (
        0.7,
        "closed",
        0.5,
    )
    assert ok("orgs", "firewall", "acme", "--disabled")["block_threshold"] == 0.7
    assert ok("orgs", "put", "acme", "--name", "Acme 2")["firewall"]["enabled"] is False
    bad = runner.invoke(admin_cli, ["orgs", "firewall", "acme", "--flag-threshold", "0.9"], env=env)
    assert bad.exit_code == 1 and "above" in bad.output

    asyncio.run(_seed_keeps_the_firewall(settings))


async def _seed_keeps_the_firewall(settings: GatewaySettings) -> None:
    redis = Redis.from_url(settings.redis.url)
    try:
        prefix = settings.redis.key_prefix
        admin_store = AdminStore(redis, prefix=prefix)
        await apply_seed(
            parse_seed({"orgs": {"acme": {"name": "Acme 3"}}}),
            admin_store=admin_store,
            templates=TemplateStore(redis, prefix=prefix),
            routing_config=RoutingConfigStore(redis, prefix=prefix),
            environ={},
        )
        org = await admin_store.get_org("acme")
        assert org is not None and org.name == "Acme 3"
        assert (org.firewall.enabled, org.firewall.block_threshold) == (False, 0.7)
    finally:
        await redis.aclose()
