"""The admin API under ``/admin``: keys, orgs, prompt templates, providers and routes.

Who may do what: every route needs a key with the ``admin`` permission. An admin key manages its
own org (read the org, create, list and revoke keys, add template versions); a key of an org
listed in ``operator_orgs`` manages every org, org plans, providers and routes. Another org's
ids answer 404, as if they did not exist. A new key's secret is in the creation response only.
Provider keys sent in plaintext are encrypted with the master key before they are stored.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from litestar import Controller, Request, Router, delete, get, post, put
from litestar.params import FromPath, JSONBody

from gateway.admin.secrets import encrypt
from gateway.admin.seed import OrgSeed
from gateway.pipeline.auth import bearer_token
from gateway.policy.cache import CacheSettings
from gateway.policy.keys import (
    ApiKey,
    KeyLimits,
    KeySwitches,
    Org,
    Permission,
    check_permission,
)
from gateway.policy.templates import TemplateMessage
from gateway.runtime import Runtime
from shared.errors import (
    BadRequestError,
    ForbiddenError,
    InvalidApiKeyError,
    NotFoundError,
)

__all__ = ["admin_router"]

_T = TypeVar("_T")


class NewKeyBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str = ""
    permissions: frozenset[Permission] = frozenset({Permission.PROXY})
    limits: KeyLimits = KeyLimits()
    switches: KeySwitches = KeySwitches()


class TemplateBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    messages: tuple[TemplateMessage, ...]


class RouteBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    targets: list[str]


def _convert(data: Any, kind: type[_T]) -> _T:
    try:
        return msgspec.convert(data, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise BadRequestError(f"invalid body: {exc}") from None


def org_view(org: Org) -> dict[str, Any]:
    shown: dict[str, Any] = msgspec.to_builtins(org)
    shown["cache"] = org.cache.view()
    return shown


def key_view(key: ApiKey) -> dict[str, Any]:
    """A key as shown to admins: never its hash (a stolen hash list must not help anyone)."""
    shown: dict[str, Any] = msgspec.to_builtins(key)
    shown.pop("key_hash", None)
    shown["permissions"] = sorted(shown["permissions"])
    return shown


class AdminApi(Controller):
    path = "/admin"

    async def _caller(self, request: Request[Any, Any, Any]) -> tuple[Runtime, ApiKey, bool]:
        rt: Runtime = request.app.state.runtime
        token = bearer_token(request.headers.get("authorization", ""))
        if token is None:
            raise InvalidApiKeyError("missing API key: send Authorization: Bearer <admin key>")
        key, org = await rt.access.keystore.authenticate(token)
        check_permission(key, Permission.ADMIN)
        return rt, key, org.org_id in rt.settings.operator_orgs

    async def _org_scope(self, request: Request[Any, Any, Any], org_id: str) -> Runtime:
        rt, key, operator = await self._caller(request)
        if not operator and key.org_id != org_id:
            raise NotFoundError(f"no org {org_id!r}")
        return rt

    async def _operator(self, request: Request[Any, Any, Any]) -> Runtime:
        rt, _, operator = await self._caller(request)
        if not operator:
            raise ForbiddenError("only an operator org's admin key may do this")
        return rt

    @get("/orgs/{org_id:str}")
    async def get_org(
        self, request: Request[Any, Any, Any], org_id: FromPath[str]
    ) -> dict[str, Any]:
        rt = await self._org_scope(request, org_id)
        org = await rt.access.keystore.get_org(org_id)
        if org is None:
            raise NotFoundError(f"no org {org_id!r}")
        return org_view(org)

    @put("/orgs/{org_id:str}/cache")
    async def put_org_cache(
        self, request: Request[Any, Any, Any], org_id: FromPath[str], data: JSONBody[dict[str, Any]]
    ) -> dict[str, Any]:
        """Partial: the fields sent replace the stored ones. The org's own admin key may."""
        rt = await self._org_scope(request, org_id)
        org = await rt.access.keystore.get_org(org_id)
        if org is None:
            raise NotFoundError(f"no org {org_id!r}")
        cache = _convert({**org.cache.view(), **data}, CacheSettings)
        await rt.access.keystore.put_org_cache(org_id, cache)
        return {"org_id": org_id, "cache": cache.view()}

    @put("/orgs/{org_id:str}")
    async def put_org(
        self, request: Request[Any, Any, Any], org_id: FromPath[str], data: JSONBody[dict[str, Any]]
    ) -> dict[str, Any]:
        rt = await self._operator(request)
        seed = _convert(data, OrgSeed)
        org = Org(
            org_id=org_id, name=seed.name, plan=seed.plan.plan(), rate_limit_policy=seed.rate_limit
        )
        await rt.access.keystore.put_org(org)
        stored = await rt.access.keystore.get_org(org_id)
        return org_view(stored or org)

    @get("/orgs/{org_id:str}/keys")
    async def list_keys(
        self, request: Request[Any, Any, Any], org_id: FromPath[str]
    ) -> dict[str, Any]:
        rt = await self._org_scope(request, org_id)
        return {"data": [key_view(k) for k in await rt.access.keystore.list_keys(org_id)]}

    @post("/orgs/{org_id:str}/keys", status_code=201)
    async def create_key(
        self, request: Request[Any, Any, Any], org_id: FromPath[str], data: JSONBody[dict[str, Any]]
    ) -> dict[str, Any]:
        rt = await self._org_scope(request, org_id)
        if await rt.access.keystore.get_org(org_id) is None:
            raise NotFoundError(f"no org {org_id!r}")
        body = _convert(data, NewKeyBody)
        new, key = await rt.access.keystore.create_key(
            org_id,
            name=body.name,
            permissions=body.permissions,
            limits=body.limits,
            switches=body.switches,
        )
        return {"secret": new.secret, "key": key_view(key)}

    @delete("/keys/{key_id:str}", status_code=200)
    async def revoke_key(
        self, request: Request[Any, Any, Any], key_id: FromPath[str]
    ) -> dict[str, Any]:
        rt, caller, operator = await self._caller(request)
        key = await rt.access.keystore.get_key(key_id)
        if key is None or (not operator and key.org_id != caller.org_id):
            raise NotFoundError(f"no key {key_id!r}")
        await rt.access.keystore.revoke_key(key_id)
        return {"key_id": key_id, "revoked": True}

    @get("/orgs/{org_id:str}/templates")
    async def list_templates(
        self, request: Request[Any, Any, Any], org_id: FromPath[str]
    ) -> dict[str, Any]:
        rt = await self._org_scope(request, org_id)
        return {"data": await rt.access.templates.list_ids(org_id)}

    @get("/orgs/{org_id:str}/templates/{template_id:str}")
    async def template_versions(
        self, request: Request[Any, Any, Any], org_id: FromPath[str], template_id: FromPath[str]
    ) -> dict[str, Any]:
        rt = await self._org_scope(request, org_id)
        versions = await rt.access.templates.versions(org_id, template_id)
        if not versions:
            raise NotFoundError(f"no prompt template {template_id!r}")
        return {"data": msgspec.to_builtins(versions)}

    @post("/orgs/{org_id:str}/templates/{template_id:str}", status_code=201)
    async def add_template_version(
        self,
        request: Request[Any, Any, Any],
        org_id: FromPath[str],
        template_id: FromPath[str],
        data: JSONBody[dict[str, Any]],
    ) -> dict[str, Any]:
        rt = await self._org_scope(request, org_id)
        body = _convert(data, TemplateBody)
        template = await rt.access.templates.put(org_id, template_id, body.messages)
        result: dict[str, Any] = msgspec.to_builtins(template)
        return result

    @get("/providers")
    async def list_providers(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        rt = await self._operator(request)
        return {"data": await rt.access.routing.providers()}

    @put("/providers/{name:str}")
    async def put_provider(
        self, request: Request[Any, Any, Any], name: FromPath[str], data: JSONBody[dict[str, Any]]
    ) -> dict[str, Any]:
        rt = await self._operator(request)
        provider = {**data, "name": name}
        plaintext = provider.pop("api_key", "")
        if plaintext:
            master = rt.settings.master_key.get_secret_value()
            provider["api_key_encrypted"] = encrypt(master, str(plaintext))
        await rt.access.routing.put_provider(provider)
        return {"data": provider, "note": "takes effect when the gateway workers restart"}

    @delete("/providers/{name:str}", status_code=200)
    async def delete_provider(
        self, request: Request[Any, Any, Any], name: FromPath[str]
    ) -> dict[str, Any]:
        rt = await self._operator(request)
        if not await rt.access.routing.delete_provider(name):
            raise NotFoundError(f"no stored provider {name!r}")
        return {"deleted": name}

    @get("/routes")
    async def list_routes(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        rt = await self._operator(request)
        return {"data": await rt.access.routing.routes()}

    @put("/routes/{model:path}")
    async def put_route(
        self, request: Request[Any, Any, Any], model: FromPath[str], data: JSONBody[dict[str, Any]]
    ) -> dict[str, Any]:
        rt = await self._operator(request)
        body = _convert(data, RouteBody)
        await rt.access.routing.put_route(model.lstrip("/"), body.targets)
        return {"model": model.lstrip("/"), "targets": body.targets}

    @delete("/routes/{model:path}", status_code=200)
    async def delete_route(
        self, request: Request[Any, Any, Any], model: FromPath[str]
    ) -> dict[str, Any]:
        rt = await self._operator(request)
        if not await rt.access.routing.delete_route(model.lstrip("/")):
            raise NotFoundError(f"no stored route for {model.lstrip('/')!r}")
        return {"deleted": model.lstrip("/")}


def admin_router() -> Router:
    return Router(path="/", route_handlers=[AdminApi], include_in_schema=True)
