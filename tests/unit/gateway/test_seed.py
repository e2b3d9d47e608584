from __future__ import annotations

from pathlib import Path

import pytest

from gateway.admin.secrets import decrypt, encrypt, new_master_key
from gateway.admin.seed import key_hash_of, load_seed, parse_seed
from gateway.policy.keys import Permission, hash_key
from gateway.routing_checks import merge_routing
from gateway.settings import GatewaySettings
from shared.errors import BadRequestError

TOML = """
[orgs.acme]
name = "Acme"
rate_limit = "500;w=60"
[orgs.acme.plan]
monthly_requests = 1000
expires_at = 2030-01-01T00:00:00Z

[keys.key-ci]
org = "acme"
secret_env = "CI_KEY"
permissions = ["proxy", "read"]
limits = { daily_tokens = 5000, rate_limit_policy = "10;w=1" }
switches = { log_bodies = false }

[[templates]]
id = "greet"
org = "acme"
messages = [{ role = "user", content = "hi {{name}}" }]

[[providers]]
name = "backup"
kind = "openai"
base_url = "http://backup/v1"
api_key_env = "BACKUP_KEY"

[routes]
"gpt-4o" = ["openai", "backup/gpt-4o-mini"]
"""


def test_toml_seed(tmp_path: Path) -> None:
    path = tmp_path / "floopy.toml"
    path.write_text(TOML)
    seed = load_seed(path)
    plan = seed.orgs["acme"].plan.plan()
    assert plan.monthly_requests == 1000 and plan.expires_at_ms == 1_893_456_000_000
    key = seed.keys["key-ci"]
    assert key.permissions == {Permission.PROXY, Permission.READ}
    assert key.limits.daily_tokens == 5000 and key.switches.log_bodies is False
    assert key_hash_of("key-ci", key, {"CI_KEY": "sk-floopy-ci"}) == hash_key("sk-floopy-ci")
    assert seed.templates[0].messages[0].content == "hi {{name}}"
    assert seed.routes == {"gpt-4o": ["openai", "backup/gpt-4o-mini"]}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"orgs": {"a": {"plann": {}}}}, "plann"),
        ({"keys": {"k": {"org": "a", "secret": "sk-floopy-x", "permissions": ["root"]}}}, "root"),
        ({"keys": {"k": {"org": "a", "limits": {"rate_limit_policy": "1;w=0"}}}}, "window"),
        ({"providers": [{"name": "p", "api_key": "sk-live"}]}, "plaintext api_key"),
    ],
)
def test_bad_seeds_are_refused_naming_the_problem(raw: dict[str, object], message: str) -> None:
    with pytest.raises(BadRequestError, match=message):
        parse_seed(raw)


def test_key_sources() -> None:
    seed = parse_seed({"keys": {"k": {"org": "a", "hash": "ab" * 32}}}).keys["k"]
    assert key_hash_of("k", seed, {}) == "ab" * 32
    for fields in ({}, {"secret": "sk-floopy-a", "hash": "ab" * 32}, {"secret": "nope"}):
        bad = parse_seed({"keys": {"k": {"org": "a", **fields}}}).keys["k"]
        with pytest.raises(BadRequestError):
            key_hash_of("k", bad, {})


def test_encrypted_provider_key_is_decrypted_into_settings() -> None:
    master = new_master_key()
    token = encrypt(master, "sk-upstream-secret")
    assert "sk-upstream-secret" not in token and decrypt(master, token) == "sk-upstream-secret"
    with pytest.raises(BadRequestError, match="does not decrypt"):
        decrypt(new_master_key(), token)
    settings = GatewaySettings(master_key=master)  # type: ignore[arg-type]
    stored = [{"name": "vault", "base_url": "http://v/v1", "api_key_encrypted": token}]
    merged = merge_routing(settings, stored, {"m": ["vault"]})
    vault = {p.name: p for p in merged.provider_list()}["vault"]
    assert vault.api_key.get_secret_value() == "sk-upstream-secret"
    assert merged.routes == {"m": ["vault"]}
    assert "sk-upstream-secret" not in repr(merged)
    unusable = merge_routing(GatewaySettings(), stored, {})  # no master key: left out, logged
    assert "vault" not in {p.name for p in unusable.provider_list()}
