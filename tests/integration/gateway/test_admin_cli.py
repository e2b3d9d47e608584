"""``floopy-admin`` against a real Redis, through typer's runner (the same code as the script)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from redis.asyncio import Redis
from typer.testing import CliRunner

from devstack.servers import RedisServer
from gateway.admin.cli import app
from gateway.admin.secrets import decrypt, new_master_key
from gateway.clients.audit_log import AuditLog
from gateway.clients.key_auth import KeyAuthenticator
from shared.errors import InvalidApiKeyError

pytestmark = pytest.mark.integration


def test_admin_cli_round_trip(redis_server: RedisServer, tmp_path: Path) -> None:
    prefix = f"cli{uuid.uuid4().hex[:8]}"
    master = new_master_key()
    env = {
        "FLOOPY_GATEWAY_REDIS__URL": redis_server.url,
        "FLOOPY_GATEWAY_REDIS__KEY_PREFIX": prefix,
        "FLOOPY_GATEWAY_MASTER_KEY": master,
        "SEEDED_KEY": "sk-floopy-from-env",
    }
    runner = CliRunner()

    def ok(*args: str) -> str:
        result = runner.invoke(app, list(args), env=env)
        assert result.exit_code == 0, result.output
        return result.stdout

    ok("orgs", "put", "acme", "--monthly-requests", "100", "--expires-at", "2030-01-01T00:00:00")
    assert json.loads(ok("orgs", "show", "acme"))["plan"]["monthly_requests"] == 100
    created = json.loads(
        ok("keys", "create", "acme", "--name", "ci", "--permission", "read", "--no-log-bodies")
    )
    secret, key = created["secret"], created["key"]
    assert key["permissions"] == ["read"] and key["switches"]["log_bodies"] is False
    listed = json.loads(ok("keys", "list", "acme"))
    assert [k["key_id"] for k in listed] == [key["key_id"]]
    assert secret not in json.dumps(listed)

    missing_org = runner.invoke(app, ["keys", "create", "nope"], env=env)
    assert missing_org.exit_code == 1 and "no org 'nope'" in missing_org.output
    bad_policy = runner.invoke(app, ["keys", "create", "acme", "--rate-limit", "5"], env=env)
    assert bad_policy.exit_code == 1 and "missing window" in bad_policy.output

    ok("templates", "put", "acme", "greet", "--message", "user:hi {{name}}")
    versions = json.loads(ok("templates", "show", "acme", "greet"))
    assert [v["version"] for v in versions] == [1]

    stored = json.loads(
        ok("providers", "put", "vault", "--base-url", "http://v/v1", "--api-key", "sk-upstream-x")
    )
    assert "sk-upstream-x" not in json.dumps(stored)
    assert decrypt(master, stored["api_key_encrypted"]) == "sk-upstream-x"
    ok("routes", "set", "gpt-4o", "openai", "vault/gpt-4o-mini")
    assert json.loads(ok("routes", "list")) == {"gpt-4o": ["openai", "vault/gpt-4o-mini"]}

    seed = tmp_path / "floopy.toml"
    seed.write_text('[keys.k2]\norg = "acme"\nsecret_env = "SEEDED_KEY"\n')
    assert json.loads(ok("seed", str(seed)))["applied"]["keys"] == 1

    updated = json.loads(
        ok(
            "keys",
            "update",
            key["key_id"],
            "--name",
            "ci2",
            "--rate-limit",
            "5;w=60",
            "--daily-tokens",
            "100",
            "--no-cache",
        )
    )
    assert (updated["name"], updated["limits"]["rate_limit_policy"]) == ("ci2", "5;w=60")
    assert updated["limits"]["daily_tokens"] == 100 and updated["switches"]["cache"] is False
    assert updated["switches"]["log_bodies"] is False and updated["permissions"] == ["read"]
    cleared = json.loads(ok("keys", "update", key["key_id"], "--daily-tokens", "0"))
    assert cleared["limits"]["daily_tokens"] is None
    assert cleared["limits"]["rate_limit_policy"] == "5;w=60"
    bad = runner.invoke(app, ["keys", "update", key["key_id"], "--rate-limit", "7"], env=env)
    assert bad.exit_code == 1 and "missing window" in bad.output
    assert runner.invoke(app, ["keys", "update", "key_nope", "--name", "x"], env=env).exit_code == 1

    ok("keys", "revoke", key["key_id"])
    assert runner.invoke(app, ["keys", "revoke", "key_nope"], env=env).exit_code == 1

    async def check() -> None:
        client = Redis.from_url(redis_server.url)
        store = KeyAuthenticator(client, prefix=prefix)
        try:
            assert (await store.authenticate("sk-floopy-from-env"))[0].key_id == "k2"
            with pytest.raises(InvalidApiKeyError, match="revoked"):
                await store.authenticate(secret)
            entries = await AuditLog(client, prefix=prefix).entries("acme")
            assert [e["action"] for e in entries] == [
                "key.revoke",
                "key.update",
                "key.update",
                "template.version",
                "key.create",
                "org.put",
            ]
            assert {e["actor"]["kind"] for e in entries} == {"cli"}
            assert secret not in json.dumps(entries)
            gateway = await AuditLog(client, prefix=prefix).entries("_gateway")
            assert [e["action"] for e in gateway] == ["route.put", "provider.put"]
            assert "sk-upstream-x" not in json.dumps(gateway)
        finally:
            await client.aclose()

    asyncio.run(check())


def test_admin_cli_refuses_a_bad_provider_or_route_naming_the_field(
    redis_server: RedisServer,
) -> None:
    """The CLI's writes go through the same validator as the admin API's (their shape: the
    workers' environment, which the CLI does not share, is the admin API's part)."""
    prefix = f"cli{uuid.uuid4().hex[:8]}"
    env = {
        "FLOOPY_GATEWAY_REDIS__URL": redis_server.url,
        "FLOOPY_GATEWAY_REDIS__KEY_PREFIX": prefix,
    }
    runner = CliRunner()
    put = ["providers", "put"]
    refused = [
        ([*put, "p", "--base-url", "ftp://files/v1"], "base_url"),
        ([*put, "p", "--base-url", "not a url"], "base_url"),
        ([*put, "p", "--base-url", "http://p/v1", "--kind", "grok"], "kind"),
        ([*put, "p", "--base-url", "http://p/v1", "--api-key-env", "A B"], "api_key_env"),
        ([*put, "a@b", "--base-url", "http://p/v1"], "name"),
        (["routes", "set", "gpt-4o", "/gpt-4o-mini"], "targets"),
    ]
    for args, field in refused:
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 1, (args, result.output)
        assert f": {field}: " in result.output, (args, result.output)
    listed = runner.invoke(app, ["providers", "list"], env=env)
    assert json.loads(listed.stdout) == []
    assert json.loads(runner.invoke(app, ["routes", "list"], env=env).stdout) == {}
