"""What the console's Settings pages read beside the stores' own listings: who the caller is,
the org's audit log, its usage this month and the routing in force (read permission; an org
admin or a ``read`` key sees its own org, operators every org).

The routing view is what the caller's models route to: names, kinds, model lists and rules for
everyone; base URLs and whether a credential is set for operators only; never a credential.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter

from gateway.access import Access
from gateway.admin.caller import caller
from gateway.admin.service import key_view
from gateway.clients.audit_log import GATEWAY_LOG, AuditLog
from gateway.clients.key_auth import KeyAuthenticator
from gateway.clients.routing_config import RoutingConfigStore
from gateway.policy.keys import Permission, month_period
from gateway.routing_checks import merge_routing
from gateway.settings import GatewaySettings, ProviderSettings

__all__ = ["SettingsApi", "routing_view"]

_PUBLIC_FIELDS = ("name", "kind", "models", "model_prefixes")
_OPERATOR_FIELDS = ("base_url", "timeout_s", "api_key_env", "api_version", "deployments")


def routing_view(
    providers: list[ProviderSettings],
    routes: dict[str, list[str]],
    stored_providers: set[str],
    stored_routes: set[str],
    *,
    operator: bool,
) -> dict[str, Any]:
    """The providers and routes in force, as a caller may see them (pure)."""
    shown = []
    for p in providers:
        row: dict[str, Any] = {f: getattr(p, f) for f in _PUBLIC_FIELDS}
        row["stored"] = p.name in stored_providers
        if operator:
            row |= {f: getattr(p, f) for f in _OPERATOR_FIELDS}
            row["has_credential"] = bool(p.api_key.get_secret_value())
        shown.append(row)
    models = sorted({*routes, *(m for p in providers for m in p.models)})
    return {
        "providers": shown,
        "routes": [
            {"model": model, "targets": targets, "stored": model in stored_routes}
            for model, targets in sorted(routes.items())
        ],
        "models": models,
    }


class SettingsApi(Controller):
    path = "/admin"

    @get("/me", summary="The calling key, its org and what it may change")
    async def me(
        self,
        request: Request[Any, Any, Any],
        key_auth: NamedDependency[KeyAuthenticator],
        settings: NamedDependency[GatewaySettings],
    ) -> dict[str, Any]:
        who = await caller(request, key_auth, settings, Permission.READ)
        admin = Permission.ADMIN in who.key.permissions
        return {
            "key": key_view(who.key),
            "org": msgspec.to_builtins(who.org),
            "operator": who.operator and admin,
            "can_edit": admin,
        }

    @get("/orgs/{org_id:str}/audit", summary="Settings changes, newest first")
    async def audit(  # noqa: PLR0917 - litestar passes them by name
        self,
        request: Request[Any, Any, Any],
        key_auth: NamedDependency[KeyAuthenticator],
        audit_log: NamedDependency[AuditLog],
        settings: NamedDependency[GatewaySettings],
        org_id: FromPath[str],
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        who = await caller(request, key_auth, settings, Permission.READ)
        who.reach(org_id)
        return {"data": await audit_log.entries(org_id, limit)}

    @get("/audit", summary="Gateway-wide changes (providers, routes), newest first; operators")
    async def gateway_audit(
        self,
        request: Request[Any, Any, Any],
        key_auth: NamedDependency[KeyAuthenticator],
        audit_log: NamedDependency[AuditLog],
        settings: NamedDependency[GatewaySettings],
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        who = await caller(request, key_auth, settings)
        who.require_operator()
        return {"data": await audit_log.entries(GATEWAY_LOG, limit)}

    @get("/orgs/{org_id:str}/usage", summary="Requests this UTC month and each key's spend")
    async def usage(
        self,
        request: Request[Any, Any, Any],
        access: NamedDependency[Access],
        settings: NamedDependency[GatewaySettings],
        org_id: FromPath[str],
    ) -> dict[str, Any]:
        who = await caller(request, access.authenticator, settings, Permission.READ)
        who.reach(org_id)
        counters = access.usage_counters
        now_ms = int(time.time() * 1000)
        requests = await counters.requests(org_id, now_ms)
        keys = await access.admin_store.list_keys(org_id)
        spend = {
            k.key_id: msgspec.to_builtins(await counters.usage(k.key_id, now_ms, org_id=org_id))
            for k in keys
        }
        return {"month": month_period(now_ms), "requests": requests, "keys": spend}

    @get("/routing", summary="The providers and routing rules in force (stored over settings)")
    async def routing(
        self,
        request: Request[Any, Any, Any],
        key_auth: NamedDependency[KeyAuthenticator],
        routing_config: NamedDependency[RoutingConfigStore],
        settings: NamedDependency[GatewaySettings],
    ) -> dict[str, Any]:
        who = await caller(request, key_auth, settings, Permission.READ)
        operator = who.operator and Permission.ADMIN in who.key.permissions
        providers = await routing_config.providers()
        routes = await routing_config.routes()
        # from the store, not this worker's current generation: a change just made shows at
        # once, and every worker follows it within ``routing_refresh_s``
        merged = merge_routing(settings, providers, routes)
        view = routing_view(
            merged.provider_list(),
            merged.routes,
            {p["name"] for p in providers},
            set(routes),
            operator=operator,
        )
        return {**view, "editable": operator}
