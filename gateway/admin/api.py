"""The admin API under ``/admin``: keys, orgs, prompt templates, providers and routes, and the
audit log of every change (the console's Settings pages use this API and nothing else).

Who may do what: reading an org's settings (``GET``) needs ``read`` (``admin`` implies it);
changing them needs ``admin``. An admin key manages its own org (create, edit and revoke keys,
add template versions); a key of an org listed in ``operator_orgs`` manages every org, org
plans, providers and routes. Another org's ids answer 404, as if they did not exist. A new
key's secret is in the creation response only. Provider keys sent in plaintext are encrypted
with the master key before they are stored. Every change goes through ``AdminService``, which
writes the audit entry.

Hostile input (issue 10): the guard has authenticated the key and capped the body before a
handler runs. Path ids are checked against the one id charset (``shared.redis_keys``). Provider
and route writes are checked by ``gateway.routing_checks``: their shape (a 400 naming the field),
then what a worker builds from them (``check_routing``, in the service); an ``api_key_env`` must
start with an allowed prefix. An expired org reads for a grace period and writes nothing
(``check_plan_access``); revoking a key stays allowed.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from litestar import Controller, Request, Router, delete, get, patch, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from gateway.access import Access
from gateway.admin.caller import Caller, caller
from gateway.admin.seed import OrgSeed
from gateway.admin.service import (
    Actor,
    AdminService,
    KeyPatch,
    NewKeyBody,
    key_view,
    to_struct,
)
from gateway.admin.settings_api import SettingsApi
from gateway.clients.admin_store import AdminStore
from gateway.clients.key_auth import KeyAuthenticator
from gateway.clients.routing_config import RoutingConfigStore
from gateway.clients.templates import TemplateStore
from gateway.clients.usage_counters import UsageCounters
from gateway.policy.cache import CacheSettings
from gateway.policy.firewall import FirewallConfig
from gateway.policy.keys import ApiKey, Org, Permission, check_plan_access
from gateway.policy.templates import TemplateMessage, check_template_id
from gateway.routing_checks import check_key_env
from gateway.settings import GatewaySettings
from shared.errors import (
    BadRequestError,
    NotFoundError,
)
from shared.redis_keys import check_id

__all__ = ["admin_router"]


class TemplateBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    messages: tuple[TemplateMessage, ...]


class RouteBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    targets: list[str]


def org_view(org: Org) -> dict[str, Any]:
    shown: dict[str, Any] = msgspec.to_builtins(org)
    shown["cache"] = org.cache.view()
    return shown


class AdminApi(Controller):
    """Every handler is handed the stores it uses (``key_auth`` authenticates the caller;
    ``settings`` are the worker's own, before stored routing is merged in)."""

    path = "/admin"

    async def _acting(
        self,
        request: Request[Any, Any, Any],
        access: Access,
        settings: GatewaySettings,
        *,
        org_id: str | None = None,
        operator: bool = False,
        write: bool | None = True,
    ) -> tuple[AdminService, Caller]:
        """An admin key's service (who acts is recorded in the audit log), the caller
        authenticated once: the org it reaches (``org_id``), operators only (``operator``),
        then whether its plan lets it write (``write``; None: no plan check, revoking stays
        allowed). Provider and route writes are checked against the worker's own settings."""
        who = await caller(
            request, access.authenticator, settings, write=None if write is None else False
        )
        if operator:
            who.require_operator()
        if org_id is not None:
            who.reach(org_id)
        if write:
            check_plan_access(who.org, int(time.time() * 1000), write=True)
        key = who.key
        actor = Actor("key", key.key_id, key.org_id, key.name)
        return AdminService(access, settings, actor, check_against=settings), who

    async def _key_of_caller_org(
        self,
        request: Request[Any, Any, Any],
        access: Access,
        settings: GatewaySettings,
        key_id: str,
        *,
        write: bool | None = True,
    ) -> tuple[AdminService, ApiKey]:
        service, who = await self._acting(request, access, settings, write=write)
        key = await access.admin_store.get_key(check_id("key", key_id))
        if key is None or (not who.operator and key.org_id != who.key.org_id):
            raise NotFoundError(f"no key {key_id!r}")
        return service, key

    @get("/orgs/{org_id:str}")
    async def get_org(
        self,
        request: Request[Any, Any, Any],
        key_auth: NamedDependency[KeyAuthenticator],
        admin_store: NamedDependency[AdminStore],
        settings: NamedDependency[GatewaySettings],
        org_id: FromPath[str],
    ) -> dict[str, Any]:
        (await caller(request, key_auth, settings, Permission.READ)).reach(org_id)
        org = await admin_store.get_org(org_id)
        if org is None:
            raise NotFoundError(f"no org {org_id!r}")
        return org_view(org)

    @put("/orgs/{org_id:str}/cache")
    async def put_org_cache(
        self,
        request: Request[Any, Any, Any],
        access: NamedDependency[Access],
        settings: NamedDependency[GatewaySettings],
        org_id: FromPath[str],
        data: JSONBody[dict[str, Any]],
    ) -> dict[str, Any]:
        """Partial: the fields sent replace the stored ones. The org's own admin key may."""
        service, _ = await self._acting(request, access, settings, org_id=org_id)
        org = await access.admin_store.get_org(org_id)
        if org is None:
            raise NotFoundError(f"no org {org_id!r}")
        cache = to_struct({**org.cache.view(), **data}, CacheSettings)
        await access.admin_store.put_org_cache(org_id, cache)
        await service.put_section(org_id, "cache", org.cache.view(), cache.view())
        return {"org_id": org_id, "cache": cache.view()}

    @put("/orgs/{org_id:str}")
    async def put_org(
        self,
        request: Request[Any, Any, Any],
        access: NamedDependency[Access],
        settings: NamedDependency[GatewaySettings],
        org_id: FromPath[str],
        data: JSONBody[dict[str, Any]],
    ) -> dict[str, Any]:
        service, _ = await self._acting(request, access, settings, operator=True)
        check_id("org", org_id)
        seed = to_struct(data, OrgSeed)
        org = seed.org(org_id, await access.admin_store.get_org(org_id))  # keeps its firewall
        await service.put_org(org)
        stored = await access.admin_store.get_org(org_id)
        return org_view(stored or org)

    @put("/orgs/{org_id:str}/firewall")
    async def put_firewall(
        self,
        request: Request[Any, Any, Any],
        access: NamedDependency[Access],
        settings: NamedDependency[GatewaySettings],
        org_id: FromPath[str],
        data: JSONBody[dict[str, Any]],
    ) -> dict[str, Any]:
        """The whole ``firewall`` object (fields left out take their defaults); the org's
        own admin key or an operator's. Every worker applies it within ``key_cache_ttl_s``."""
        service, _ = await self._acting(request, access, settings, org_id=org_id)
        config = to_struct(data, FirewallConfig)
        current = await access.admin_store.get_org(org_id)
        if current is None or not await access.admin_store.put_org_firewall(org_id, config):
            raise NotFoundError(f"no org {org_id!r}")
        after: dict[str, Any] = msgspec.to_builtins(config)
        await service.put_section(org_id, "firewall", msgspec.to_builtins(current.firewall), after)
        return after

    @get("/orgs/{org_id:str}/keys")
    async def list_keys(  # noqa: PLR0917 - litestar passes them by name
        self,
        request: Request[Any, Any, Any],
        key_auth: NamedDependency[KeyAuthenticator],
        admin_store: NamedDependency[AdminStore],
        usage_counters: NamedDependency[UsageCounters],
        settings: NamedDependency[GatewaySettings],
        org_id: FromPath[str],
    ) -> dict[str, Any]:
        (await caller(request, key_auth, settings, Permission.READ)).reach(org_id)
        keys = await admin_store.list_keys(org_id)
        last_used = await usage_counters.last_used([k.key_id for k in keys])
        return {"data": [{**key_view(k), "last_used_ms": last_used.get(k.key_id)} for k in keys]}

    @post("/orgs/{org_id:str}/keys", status_code=201)
    async def create_key(
        self,
        request: Request[Any, Any, Any],
        access: NamedDependency[Access],
        settings: NamedDependency[GatewaySettings],
        org_id: FromPath[str],
        data: JSONBody[dict[str, Any]],
    ) -> dict[str, Any]:
        service, _ = await self._acting(request, access, settings, org_id=org_id)
        org = await access.admin_store.get_org(org_id)
        if org is not None:  # an operator creating a key in an expired org: refused too
            check_plan_access(org, int(time.time() * 1000), write=True)
        new, key = await service.create_key(org_id, to_struct(data, NewKeyBody))
        return {"secret": new.secret, "key": key_view(key)}

    @patch("/keys/{key_id:str}")
    async def update_key(
        self,
        request: Request[Any, Any, Any],
        access: NamedDependency[Access],
        settings: NamedDependency[GatewaySettings],
        key_id: FromPath[str],
        data: JSONBody[dict[str, Any]],
    ) -> dict[str, Any]:
        """Change a key's name, permissions, limits or switches; every worker follows within
        the key cache TTL."""
        service, key = await self._key_of_caller_org(request, access, settings, key_id)
        if key.revoked:
            raise BadRequestError(f"key {key_id!r} is revoked")
        updated = await service.update_key(key, to_struct(data, KeyPatch))
        return {"key": key_view(updated)}

    @delete("/keys/{key_id:str}", status_code=200)
    async def revoke_key(
        self,
        request: Request[Any, Any, Any],
        access: NamedDependency[Access],
        settings: NamedDependency[GatewaySettings],
        key_id: FromPath[str],
    ) -> dict[str, Any]:
        service, key = await self._key_of_caller_org(request, access, settings, key_id, write=None)
        await service.revoke_key(key)
        return {"key_id": key_id, "revoked": True}

    @get("/orgs/{org_id:str}/templates")
    async def list_templates(
        self,
        request: Request[Any, Any, Any],
        key_auth: NamedDependency[KeyAuthenticator],
        templates: NamedDependency[TemplateStore],
        settings: NamedDependency[GatewaySettings],
        org_id: FromPath[str],
    ) -> dict[str, Any]:
        (await caller(request, key_auth, settings, Permission.READ)).reach(org_id)
        return {"data": await templates.list_ids(org_id)}

    @get("/orgs/{org_id:str}/templates/{template_id:str}")
    async def template_versions(  # noqa: PLR0917 - litestar passes them by name
        self,
        request: Request[Any, Any, Any],
        key_auth: NamedDependency[KeyAuthenticator],
        templates: NamedDependency[TemplateStore],
        settings: NamedDependency[GatewaySettings],
        org_id: FromPath[str],
        template_id: FromPath[str],
    ) -> dict[str, Any]:
        (await caller(request, key_auth, settings, Permission.READ)).reach(org_id)
        versions = await templates.versions(org_id, check_template_id(template_id))
        if not versions:
            raise NotFoundError(f"no prompt template {template_id!r}")
        return {"data": msgspec.to_builtins(versions)}

    @post("/orgs/{org_id:str}/templates/{template_id:str}", status_code=201)
    async def add_template_version(  # noqa: PLR0917 - litestar passes them by name
        self,
        request: Request[Any, Any, Any],
        access: NamedDependency[Access],
        settings: NamedDependency[GatewaySettings],
        org_id: FromPath[str],
        template_id: FromPath[str],
        data: JSONBody[dict[str, Any]],
    ) -> dict[str, Any]:
        service, _ = await self._acting(request, access, settings, org_id=org_id)
        check_template_id(template_id)
        body = to_struct(data, TemplateBody)
        template = await service.add_template_version(org_id, template_id, body.messages)
        result: dict[str, Any] = msgspec.to_builtins(template)
        return result

    @get("/providers")
    async def list_providers(
        self,
        request: Request[Any, Any, Any],
        key_auth: NamedDependency[KeyAuthenticator],
        routing_config: NamedDependency[RoutingConfigStore],
        settings: NamedDependency[GatewaySettings],
    ) -> dict[str, Any]:
        (await caller(request, key_auth, settings)).require_operator()
        return {"data": await routing_config.providers()}

    @put("/providers/{name:str}")
    async def put_provider(
        self,
        request: Request[Any, Any, Any],
        access: NamedDependency[Access],
        settings: NamedDependency[GatewaySettings],
        name: FromPath[str],
        data: JSONBody[dict[str, Any]],
    ) -> dict[str, Any]:
        service, _ = await self._acting(request, access, settings, operator=True)
        check_key_env(data, settings.provider_key_env_prefixes)
        provider = await service.put_provider(name, data)
        shown = {k: v for k, v in provider.items() if k != "api_key_encrypted"}
        return {"data": shown, "note": _followed_note(settings)}

    @delete("/providers/{name:str}", status_code=200)
    async def delete_provider(
        self,
        request: Request[Any, Any, Any],
        access: NamedDependency[Access],
        settings: NamedDependency[GatewaySettings],
        name: FromPath[str],
    ) -> dict[str, Any]:
        service, _ = await self._acting(request, access, settings, operator=True)
        await service.delete_provider(name)
        return {"deleted": name}

    @get("/routes")
    async def list_routes(
        self,
        request: Request[Any, Any, Any],
        key_auth: NamedDependency[KeyAuthenticator],
        routing_config: NamedDependency[RoutingConfigStore],
        settings: NamedDependency[GatewaySettings],
    ) -> dict[str, Any]:
        (await caller(request, key_auth, settings)).require_operator()
        return {"data": await routing_config.routes()}

    @put("/routes/{model:path}")
    async def put_route(
        self,
        request: Request[Any, Any, Any],
        access: NamedDependency[Access],
        settings: NamedDependency[GatewaySettings],
        model: FromPath[str],
        data: JSONBody[dict[str, Any]],
    ) -> dict[str, Any]:
        service, _ = await self._acting(request, access, settings, operator=True)
        body = to_struct(data, RouteBody)
        await service.put_route(model.lstrip("/"), body.targets)
        return {
            "model": model.lstrip("/"),
            "targets": body.targets,
            "note": _followed_note(settings),
        }

    @delete("/routes/{model:path}", status_code=200)
    async def delete_route(
        self,
        request: Request[Any, Any, Any],
        access: NamedDependency[Access],
        settings: NamedDependency[GatewaySettings],
        model: FromPath[str],
    ) -> dict[str, Any]:
        service, _ = await self._acting(request, access, settings, operator=True)
        await service.delete_route(model.lstrip("/"))
        return {"deleted": model.lstrip("/")}


def _followed_note(settings: GatewaySettings) -> str:
    return f"every gateway worker follows within about {settings.routing_refresh_s:g} s"


def admin_router() -> Router:
    return Router(path="/", route_handlers=[AdminApi, SettingsApi], include_in_schema=True)
