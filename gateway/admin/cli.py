"""``floopy-admin``: keys, orgs, prompt templates, providers and routes from a shell, straight on
the Redis the gateways use (``FLOOPY_GATEWAY_REDIS__URL``, ``FLOOPY_GATEWAY_REDIS__KEY_PREFIX``).

    floopy-admin seed floopy.toml
    floopy-admin orgs put acme --monthly-requests 100000 --expires-at 2027-01-01T00:00:00Z
    floopy-admin orgs cache acme --tiers exact,semantic --semantic-threshold 0.95
    floopy-admin orgs firewall acme --block-threshold 0.9 --fail-closed
    floopy-admin keys create acme --name ci --permission proxy --permission read
    floopy-admin keys revoke key_0123abcd
    floopy-admin templates put acme greet --message 'system:You help with {{product}}.'
    floopy-admin providers put backup --base-url https://api.groq.com/openai/v1 --api-key-env GROQ
    floopy-admin routes set gpt-4o openai backup/llama-3.1-70b

    floopy-admin keys update key_0123abcd --rate-limit '100;w=60' --no-log-bodies

A key's secret is printed once, by ``keys create``. Exit code 1 with a message on any mistake.
Every change goes through ``AdminService`` like the admin API's, so it is in the audit log too
(the actor is ``cli:<user>``).
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
import typer
from redis.exceptions import RedisError

from gateway.access import Access
from gateway.admin.secrets import new_master_key
from gateway.admin.seed import OrgSeed, PlanSeed, apply_seed, load_seed
from gateway.admin.service import Actor, AdminService, KeyPatch, NewKeyBody, key_view
from gateway.policy.cache import CacheSettings
from gateway.policy.firewall import FailPolicy, FirewallConfig
from gateway.policy.keys import DEFAULT_ORG_RATE_LIMIT, KeyLimits, KeySwitches, Org, Permission
from gateway.policy.templates import TemplateMessage
from gateway.settings import GatewaySettings
from shared.errors import ClientError

__all__ = ["app", "main"]

_T = TypeVar("_T")

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Manage Floopy keys, orgs, templates, routes."
)
orgs = typer.Typer(no_args_is_help=True, help="Orgs and their plans.")
keys = typer.Typer(no_args_is_help=True, help="API keys.")
templates = typer.Typer(no_args_is_help=True, help="Prompt templates (versioned).")
providers = typer.Typer(no_args_is_help=True, help="Providers (gateways follow within seconds).")
routes = typer.Typer(no_args_is_help=True, help="Routing rules (gateways follow within seconds).")
for group, name in ((orgs, "orgs"), (keys, "keys"), (templates, "templates")):
    app.add_typer(group, name=name)
app.add_typer(providers, name="providers")
app.add_typer(routes, name="routes")


def _run(work: Callable[[Access, GatewaySettings], Awaitable[_T]]) -> _T:
    """Run one command against the store; any refusal or outage is one line and exit 1."""
    settings = GatewaySettings()

    async def go() -> _T:
        access = Access.build(settings)
        try:
            return await work(access, settings)
        finally:
            await access.redis.aclose()

    try:
        return asyncio.run(go())
    except ClientError as exc:
        typer.secho(f"error: {exc.message}", err=True, fg="red")
        raise typer.Exit(1) from None
    except (RedisError, OSError) as exc:
        typer.secho(f"error: Redis at {settings.redis.url}: {exc}", err=True, fg="red")
        raise typer.Exit(1) from None


def _service(access: Access, settings: GatewaySettings) -> AdminService:
    return AdminService(access, settings, Actor("cli", getpass.getuser()))


def _print(value: Any) -> None:
    typer.echo(json.dumps(msgspec.to_builtins(value), indent=2, sort_keys=True))


@app.command()
def seed(path: Path) -> None:
    """Apply a config seed file (idempotent; see README "Configuration")."""
    parsed = _run_sync(lambda: load_seed(path))

    async def work(access: Access, _: GatewaySettings) -> dict[str, int]:
        return await apply_seed(
            parsed,
            admin_store=access.admin_store,
            templates=access.templates,
            routing_config=access.routing_config,
            environ=os.environ,
        )

    _print({"applied": _run(work)})


def _run_sync(work: Callable[[], _T]) -> _T:
    try:
        return work()
    except ClientError as exc:
        typer.secho(f"error: {exc.message}", err=True, fg="red")
        raise typer.Exit(1) from None


@app.command("master-key")
def master_key() -> None:
    """Print a new Fernet master key (for FLOOPY_GATEWAY_MASTER_KEY)."""
    typer.echo(new_master_key())


@orgs.command("put")
def org_put(
    org_id: str,
    *,
    name: Annotated[str, typer.Option()] = "",
    rate_limit: Annotated[str, typer.Option(help="e.g. 10000;w=60")] = DEFAULT_ORG_RATE_LIMIT,
    monthly_requests: Annotated[int | None, typer.Option()] = None,
    overage: Annotated[bool, typer.Option("--overage/--no-overage")] = False,
    retention_days: Annotated[int, typer.Option()] = 30,
    expires_at: Annotated[datetime | None, typer.Option(help="ISO 8601, UTC")] = None,
) -> None:
    """Create or replace an org and its plan (its firewall settings are kept)."""
    plan = PlanSeed(
        monthly_requests=monthly_requests,
        overage_allowed=overage,
        retention_days=retention_days,
        expires_at=expires_at,
    )
    seed = _run_sync(lambda: OrgSeed(name=name, rate_limit=rate_limit, plan=plan))

    async def work(access: Access, settings: GatewaySettings) -> Org:
        org = seed.org(org_id, await access.admin_store.get_org(org_id))  # keeps its firewall
        return await _service(access, settings).put_org(org)

    _print(_run(work))


@orgs.command("firewall")
def org_firewall(
    org_id: str,
    *,
    enabled: Annotated[bool | None, typer.Option("--enabled/--disabled")] = None,
    model: Annotated[str | None, typer.Option(help="classifier model ref; '' = default")] = None,
    flag_threshold: Annotated[float | None, typer.Option()] = None,
    block_threshold: Annotated[float | None, typer.Option()] = None,
    fail_closed: Annotated[bool | None, typer.Option("--fail-closed/--fail-open")] = None,
    honour_header: Annotated[bool | None, typer.Option("--honour-header/--ignore-header")] = None,
) -> None:
    """Change an org's firewall settings; options left out keep their current value."""
    given: dict[str, Any] = {
        "enabled": enabled,
        "model": model,
        "flag_threshold": flag_threshold,
        "block_threshold": block_threshold,
        "honour_header": honour_header,
    }
    if fail_closed is not None:
        policy: FailPolicy = "closed" if fail_closed else "open"
        given["fail_policy"] = policy

    async def work(access: Access, settings: GatewaySettings) -> FirewallConfig:
        org = await access.admin_store.get_org(org_id)
        if org is None:
            raise ClientError(f"no org {org_id!r}; create it first (floopy-admin orgs put)")
        before = msgspec.to_builtins(org.firewall)
        try:
            config = msgspec.convert(
                {**before, **{k: v for k, v in given.items() if v is not None}}, FirewallConfig
            )
        except msgspec.ValidationError as exc:
            raise ClientError(f"firewall settings: {exc}") from None
        await access.admin_store.put_org_firewall(org_id, config)
        await _service(access, settings).put_section(
            org_id, "firewall", before, msgspec.to_builtins(config)
        )
        return config

    _print(_run(work))


@orgs.command("cache")
def org_cache(
    org_id: str,
    *,
    tiers: Annotated[str | None, typer.Option(help="e.g. exact,semantic,advanced")] = None,
    ttl_s: Annotated[int | None, typer.Option()] = None,
    max_ttl_s: Annotated[int | None, typer.Option()] = None,
    semantic_threshold: Annotated[float | None, typer.Option()] = None,
    advanced_threshold: Annotated[float | None, typer.Option()] = None,
    advanced_overlap: Annotated[float | None, typer.Option()] = None,
) -> None:
    """Show or change an org's cache settings (options given replace the stored ones)."""
    given = {
        "tiers": [t.strip() for t in tiers.split(",") if t.strip()] if tiers is not None else None,
        "ttl_s": ttl_s,
        "max_ttl_s": max_ttl_s,
        "semantic_threshold": semantic_threshold,
        "advanced_threshold": advanced_threshold,
        "advanced_overlap": advanced_overlap,
    }
    changes = {k: v for k, v in given.items() if v is not None}

    async def work(access: Access, settings: GatewaySettings) -> dict[str, object]:
        org = await access.admin_store.get_org(org_id)
        if org is None:
            raise ClientError(f"no org {org_id!r}; create it first (floopy-admin orgs put)")
        if not changes:
            return org.cache.view()
        try:
            cache = msgspec.convert({**org.cache.view(), **changes}, CacheSettings)
        except msgspec.ValidationError as exc:
            raise ClientError(f"invalid cache settings: {exc}") from None
        await access.admin_store.put_org_cache(org_id, cache)
        await _service(access, settings).put_section(
            org_id, "cache", org.cache.view(), cache.view()
        )
        return cache.view()

    _print(_run(work))


@orgs.command("show")
def org_show(org_id: str) -> None:
    async def work(access: Access, _: GatewaySettings) -> Org | None:
        return await access.admin_store.get_org(org_id)

    found = _run(work)
    if found is None:
        typer.secho(f"error: no org {org_id!r}", err=True, fg="red")
        raise typer.Exit(1)
    _print(found)


@keys.command("create")
def key_create(
    org_id: str,
    *,
    name: Annotated[str, typer.Option()] = "",
    permission: Annotated[list[Permission] | None, typer.Option(help="repeatable")] = None,
    rate_limit: Annotated[str, typer.Option(help="the key's own policy, e.g. 100;w=60")] = "",
    daily_tokens: Annotated[int | None, typer.Option()] = None,
    monthly_tokens: Annotated[int | None, typer.Option()] = None,
    daily_cost_usd: Annotated[float | None, typer.Option()] = None,
    monthly_cost_usd: Annotated[float | None, typer.Option()] = None,
    firewall_flag_threshold: Annotated[float | None, typer.Option()] = None,
    firewall_block_threshold: Annotated[float | None, typer.Option()] = None,
    cache: Annotated[bool, typer.Option("--cache/--no-cache")] = True,
    firewall: Annotated[bool, typer.Option("--firewall/--no-firewall")] = True,
    log_bodies: Annotated[bool, typer.Option("--log-bodies/--no-log-bodies")] = True,
) -> None:
    """Create a key; its secret is printed this once and never again."""
    limits = _run_sync(
        lambda: KeyLimits(
            rate_limit_policy=rate_limit,
            daily_tokens=daily_tokens,
            monthly_tokens=monthly_tokens,
            daily_cost_usd=daily_cost_usd,
            monthly_cost_usd=monthly_cost_usd,
            firewall_flag_threshold=firewall_flag_threshold,
            firewall_block_threshold=firewall_block_threshold,
        )
    )

    async def work(access: Access, settings: GatewaySettings) -> dict[str, Any]:
        if await access.admin_store.get_org(org_id) is None:
            raise ClientError(f"no org {org_id!r}; create it first (floopy-admin orgs put)")
        body = NewKeyBody(
            name=name,
            permissions=frozenset(permission or [Permission.PROXY]),
            limits=limits,
            switches=KeySwitches(cache=cache, firewall=firewall, log_bodies=log_bodies),
        )
        new, key = await _service(access, settings).create_key(org_id, body)
        return {"secret": new.secret, "key": key_view(key)}

    _print(_run(work))


@keys.command("list")
def key_list(org_id: str) -> None:
    async def work(access: Access, _: GatewaySettings) -> list[dict[str, Any]]:
        return [key_view(k) for k in await access.admin_store.list_keys(org_id)]

    _print(_run(work))


@keys.command("revoke")
def key_revoke(key_id: str) -> None:
    """Revoke a key: every gateway worker refuses it within ``key_cache_ttl_s`` seconds."""

    async def work(access: Access, settings: GatewaySettings) -> bool:
        key = await access.admin_store.get_key(key_id)
        if key is None:
            return False
        await _service(access, settings).revoke_key(key)
        return True

    if not _run(work):
        typer.secho(f"error: no key {key_id!r}", err=True, fg="red")
        raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")


_UNSET_HELP = "0 clears the limit"


@keys.command("update")
def key_update(
    key_id: str,
    *,
    name: Annotated[str | None, typer.Option()] = None,
    permission: Annotated[
        list[Permission] | None, typer.Option(help="repeatable; replaces the key's permissions")
    ] = None,
    rate_limit: Annotated[str | None, typer.Option(help="e.g. 100;w=60; '' clears it")] = None,
    daily_tokens: Annotated[int | None, typer.Option(help=_UNSET_HELP)] = None,
    monthly_tokens: Annotated[int | None, typer.Option(help=_UNSET_HELP)] = None,
    daily_cost_usd: Annotated[float | None, typer.Option(help=_UNSET_HELP)] = None,
    monthly_cost_usd: Annotated[float | None, typer.Option(help=_UNSET_HELP)] = None,
    cache: Annotated[bool | None, typer.Option("--cache/--no-cache")] = None,
    firewall: Annotated[bool | None, typer.Option("--firewall/--no-firewall")] = None,
    log_bodies: Annotated[bool | None, typer.Option("--log-bodies/--no-log-bodies")] = None,
) -> None:
    """Change a key's name, permissions, limits or switches (what is not given stays)."""
    limits: dict[str, Any] = {}
    if rate_limit is not None:
        limits["rate_limit_policy"] = rate_limit
    given = {
        "daily_tokens": daily_tokens,
        "monthly_tokens": monthly_tokens,
        "daily_cost_usd": daily_cost_usd,
        "monthly_cost_usd": monthly_cost_usd,
    }
    limits |= {k: (v or None) for k, v in given.items() if v is not None}
    switches = {
        k: v
        for k, v in {"cache": cache, "firewall": firewall, "log_bodies": log_bodies}.items()
        if v is not None
    }
    patch = KeyPatch(
        name=name,
        permissions=frozenset(permission) if permission else None,
        limits=limits or None,
        switches=switches or None,
    )

    async def work(access: Access, settings: GatewaySettings) -> dict[str, Any] | None:
        key = await access.admin_store.get_key(key_id)
        if key is None:
            return None
        if key.revoked:
            raise ClientError(f"key {key_id!r} is revoked")
        return key_view(await _service(access, settings).update_key(key, patch))

    updated = _run(work)
    if updated is None:
        typer.secho(f"error: no key {key_id!r}", err=True, fg="red")
        raise typer.Exit(1)
    _print(updated)


@templates.command("put")
def template_put(
    org_id: str,
    template_id: str,
    message: Annotated[list[str], typer.Option(help="role:content, repeatable, in order")],
) -> None:
    """Add a version of a template ({{name}} marks a variable)."""
    parsed = []
    for item in message:
        role, sep, content = item.partition(":")
        if not sep or not role:
            typer.secho(f"error: --message {item!r} is not role:content", err=True, fg="red")
            raise typer.Exit(1)
        parsed.append(TemplateMessage(role.strip(), content))

    async def work(access: Access, settings: GatewaySettings) -> Any:
        return await _service(access, settings).add_template_version(
            org_id, template_id, tuple(parsed)
        )

    _print(_run(work))


@templates.command("show")
def template_show(org_id: str, template_id: str) -> None:
    async def work(access: Access, _: GatewaySettings) -> Any:
        return await access.templates.versions(org_id, template_id)

    _print(_run(work))


@providers.command("put")
def provider_put(
    name: str,
    *,
    base_url: Annotated[str, typer.Option()],
    kind: Annotated[str, typer.Option(help="openai | azure | anthropic")] = "openai",
    api_key_env: Annotated[str, typer.Option(help="NAME of the variable holding the key")] = "",
    api_key: Annotated[
        str, typer.Option(help="encrypted with FLOOPY_GATEWAY_MASTER_KEY before it is stored")
    ] = "",
    model: Annotated[list[str] | None, typer.Option(help="models it serves, repeatable")] = None,
) -> None:
    async def work(access: Access, settings: GatewaySettings) -> dict[str, Any]:
        provider: dict[str, Any] = {"kind": kind, "base_url": base_url}
        if model:
            provider["models"] = model
        if api_key_env:
            provider["api_key_env"] = api_key_env
        if api_key:
            provider["api_key"] = api_key  # encrypted by the service before it is stored
        return await _service(access, settings).put_provider(name, provider)

    _print(_run(work))


@providers.command("list")
def provider_list() -> None:
    async def work(access: Access, _: GatewaySettings) -> list[dict[str, Any]]:
        return await access.routing_config.providers()

    _print(_run(work))


@routes.command("set")
def route_set(model: str, targets: list[str]) -> None:
    """MODEL → TARGETS tried in order (``provider`` or ``provider/model``)."""

    async def work(access: Access, settings: GatewaySettings) -> None:
        await _service(access, settings).put_route(model, targets)

    _run(work)
    _print({model: targets})


@routes.command("list")
def route_list() -> None:
    async def work(access: Access, _: GatewaySettings) -> dict[str, list[str]]:
        return await access.routing_config.routes()

    _print(_run(work))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
