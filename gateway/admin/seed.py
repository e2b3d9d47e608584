"""The declarative config seed (``floopy.toml``, or the same shape in ``.json``), for GitOps-style
deployments: orgs, keys, prompt templates, providers and routes. See README "Configuration".

Applying a seed is idempotent, so every gateway worker applies it at start-up and the CLI can
apply it again at any time (``floopy-admin seed floopy.toml``):

- orgs, providers and routes it declares are written as declared (the file is their truth);
- keys are written as declared, except that a revoked key stays revoked (a leaked key must not
  come back because a worker restarted); a key is given by its plaintext (dev stacks, tests),
  by ``secret_env`` (the name of an environment variable holding it) or by its SHA-256 ``hash``;
  only the hash is stored;
- a template gets a new version only when its messages differ from its latest version.

Provider credentials are ``api_key_env`` (a variable name) or ``api_key_encrypted`` (Fernet, see
``gateway.admin.secrets``); a plaintext ``api_key`` in the file is refused.
"""

from __future__ import annotations

import json
import logging
import re
import time
import tomllib
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.policy.cache import CacheSettings
from gateway.policy.firewall import FirewallConfig
from gateway.policy.keys import (
    DEFAULT_ORG_RATE_LIMIT,
    ApiKey,
    KeyLimits,
    KeySwitches,
    Org,
    Permission,
    Plan,
    hash_key,
    looks_like_key,
)
from gateway.policy.templates import TemplateMessage
from gateway.routing_checks import check_provider, check_route
from shared.errors import BadRequestError

if TYPE_CHECKING:
    from gateway.clients.admin_store import AdminStore
    from gateway.clients.routing_config import RoutingConfigStore
    from gateway.clients.templates import TemplateStore
    from gateway.settings import ApiKeyEntry

__all__ = [
    "Seed",
    "apply_seed",
    "load_seed",
    "parse_seed",
    "seed_from_api_keys",
]

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class PlanSeed(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    monthly_requests: int | None = None
    overage_allowed: bool = False
    retention_days: int = 30
    expires_at: datetime | None = None

    def plan(self) -> Plan:
        expires = None if self.expires_at is None else int(self.expires_at.timestamp() * 1000)
        return Plan(
            monthly_requests=self.monthly_requests,
            overage_allowed=self.overage_allowed,
            retention_days=self.retention_days,
            expires_at_ms=expires,
        )


class OrgSeed(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str = ""
    rate_limit: str = DEFAULT_ORG_RATE_LIMIT
    plan: PlanSeed = PlanSeed()
    cache: CacheSettings | None = None
    """None: keep what the org has (set through ``PUT /admin/orgs/{org}/cache``)."""
    firewall: FirewallConfig | None = None
    """None: keep what the org has (set through ``PUT /admin/orgs/{org}/firewall``)."""

    def org(self, org_id: str, current: Org | None) -> Org:
        """The org as declared; settings it does not declare are kept from ``current``."""
        firewall = self.firewall or (current.firewall if current else FirewallConfig())
        cache = self.cache or (current.cache if current else CacheSettings())
        return Org(
            org_id=org_id,
            name=self.name,
            plan=self.plan.plan(),
            rate_limit_policy=self.rate_limit,
            firewall=firewall,
            cache=cache,
        )


class KeySeed(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    org: str
    secret: str = ""
    secret_env: str = ""
    hash: str = ""
    name: str = ""
    permissions: frozenset[Permission] = frozenset({Permission.PROXY})
    limits: KeyLimits = KeyLimits()
    switches: KeySwitches = KeySwitches()
    revoked: bool = False


class TemplateSeed(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: str
    org: str
    messages: tuple[TemplateMessage, ...]


class Seed(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    orgs: dict[str, OrgSeed] = {}
    keys: dict[str, KeySeed] = {}
    templates: list[TemplateSeed] = []
    providers: list[dict[str, Any]] = []
    routes: dict[str, list[str]] = {}


def load_seed(path: Path) -> Seed:
    """Read and validate a seed file; any mistake is a BadRequestError naming the place."""
    try:
        text = path.read_text()
        raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as exc:
        raise BadRequestError(f"cannot read config file {path}: {exc}") from None
    return parse_seed(raw, str(path))


def parse_seed(raw: Mapping[str, Any], where: str = "config") -> Seed:
    try:
        seed = msgspec.convert(raw, Seed, strict=False)
    except msgspec.ValidationError as exc:
        raise BadRequestError(f"{where}: {exc}") from None
    try:
        for provider in seed.providers:
            check_provider(provider)
        for model, targets in seed.routes.items():
            check_route(model, targets)
    except BadRequestError as exc:
        raise BadRequestError(f"{where}: {exc.message}", details=exc.details) from None
    return seed


def key_hash_of(key_id: str, seed: KeySeed, environ: Mapping[str, str]) -> str:
    given = [bool(seed.secret), bool(seed.secret_env), bool(seed.hash)]
    if sum(given) != 1:
        raise BadRequestError(f"key {key_id!r}: give exactly one of secret, secret_env, hash")
    if seed.hash:
        if not _SHA256.match(seed.hash):
            raise BadRequestError(f"key {key_id!r}: hash must be 64 lower-case hex digits")
        return seed.hash
    secret = seed.secret or environ.get(seed.secret_env, "")
    if not secret:
        raise BadRequestError(f"key {key_id!r}: environment variable {seed.secret_env} is unset")
    if not looks_like_key(secret):
        raise BadRequestError(f"key {key_id!r}: a Floopy key is sk-floopy-<1-128 of A-Za-z0-9_->")
    return hash_key(secret)


def seed_from_api_keys(api_keys: Mapping[str, ApiKeyEntry]) -> Seed:
    """The deprecated ``FLOOPY_GATEWAY_API_KEYS`` table as a seed: its orgs with defaults, its
    keys with the proxy and read permissions (what a static key could do)."""
    keys = {
        entry.key_id: KeySeed(
            org=entry.org_id,
            secret=secret,
            permissions=frozenset({Permission.PROXY, Permission.READ}),
        )
        for secret, entry in api_keys.items()
    }
    return Seed(orgs={e.org_id: OrgSeed() for e in api_keys.values()}, keys=keys)


async def apply_seed(
    seed: Seed,
    *,
    admin_store: AdminStore,
    templates: TemplateStore,
    routing_config: RoutingConfigStore,
    environ: Mapping[str, str],
    keep_orgs: bool = False,
) -> dict[str, int]:
    """Write what the seed declares; returns how many of each kind were applied.

    ``keep_orgs``: leave an existing org as it is (the deprecated key table only knows org ids,
    and must not reset a plan someone configured)."""
    now_ms = int(time.time() * 1000)
    for org_id, org in seed.orgs.items():
        current = await admin_store.get_org(org_id)
        if keep_orgs and current is not None:
            continue
        await admin_store.put_org(org.org(org_id, current), with_settings=True)
    for key_id, key in seed.keys.items():
        await admin_store.put_key(
            ApiKey(
                key_id=key_id,
                key_hash=key_hash_of(key_id, key, environ),
                org_id=key.org,
                name=key.name or key_id,
                hint="seed",
                created_at_ms=now_ms,
                permissions=key.permissions,
                limits=key.limits,
                switches=key.switches,
                revoked=key.revoked,
                revoked_at_ms=now_ms if key.revoked else 0,
            )
        )
    for template in seed.templates:
        await templates.put(template.org, template.id, template.messages, only_if_changed=True)
    for provider in seed.providers:
        await routing_config.put_provider(provider)
    for model, targets in seed.routes.items():
        await routing_config.put_route(model, targets)
    return {
        "orgs": len(seed.orgs),
        "keys": len(seed.keys),
        "templates": len(seed.templates),
        "providers": len(seed.providers),
        "routes": len(seed.routes),
    }
