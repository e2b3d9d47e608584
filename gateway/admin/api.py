"""The admin API under ``/admin``: keys, orgs, prompt templates, providers and routes.

Who may do what: every route needs a key with the ``admin`` permission. An admin key manages its
own org (read the org, create, list and revoke keys, add template versions); a key of an org
listed in ``operator_orgs`` manages every org, org plans, providers and routes. Another org's
ids answer 404, as if they did not exist. A new key's secret is in the creation response only.
Provider keys sent in plaintext are encrypted with the master key before they are stored.

Hostile input (issue 10): the guard has authenticated the key and capped the body before a
handler runs; handlers read the body themselves (``_body``), so nesting, bad UTF-8 or a wrong
shape is a 400 from ``decode_json``. Path ids are checked against the one id charset. Providers
and routes are checked on write by what a worker builds at start-up (``check_routing``), and an
``api_key_env`` must start with an allowed prefix. An expired org reads for a grace period and
writes nothing (``check_plan_access``); revoking a key stays allowed.
"""

from __future__ import annotations

import time
from typing import Any, TypeVar

import msgspec
from litestar import Controller, Request, Router, delete, get, post, put
from litestar.params import FromPath

from gateway.admin.secrets import encrypt
from gateway.admin.seed import OrgSeed, check_routing
from gateway.pipeline.auth import bearer_token
from gateway.policy.json_body import decode_json
from gateway.policy.keys import (
    ApiKey,
    KeyLimits,
    KeySwitches,
    Org,
    Permission,
    check_permission,
    check_plan_access,
)
from gateway.policy.templates import TemplateMessage, check_template_id
from gateway.runtime import Runtime
from shared.errors import (
    BadRequestError,
    ForbiddenError,
    InvalidApiKeyError,
    NotFoundError,
)
from shared.redis_keys import check_id

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


async def _body(request: Request[Any, Any, Any], kind: type[_T]) -> _T:
    """The body as ``kind``; read here, after the caller was authenticated, never before."""
    raw = await request.body()
    content = decode_json(lambda b: msgspec.json.decode(b, type=kind, strict=False), raw, "body")
    return content


def _now_ms() -> int:
    return int(time.time() * 1000)


def key_view(key: ApiKey) -> dict[str, Any]:
    """A key as shown to admins: never its hash (a stolen hash list must not help anyone)."""
    shown: dict[str, Any] = msgspec.to_builtins(key)
    shown.pop("key_hash", None)
    shown["permissions"] = sorted(shown["permissions"])
    return shown


class AdminApi(Controller):
    path = "/admin"

    async def _caller(
        self, request: Request[Any, Any, Any], *, write: bool | None = None
    ) -> tuple[Runtime, ApiKey, bool]:
        """``write``: None for a revocation (allowed to an expired org), else read or write."""
        rt: Runtime = request.app.state.runtime
        token = bearer_token(request.headers.get("authorization", ""))
        if token is None:
            raise InvalidApiKeyError("missing API key: send Authorization: Bearer <admin key>")
        key, org = await rt.access.keystore.authenticate(token)
        check_permission(key, Permission.ADMIN)
        if write is not None:
            check_plan_access(org, _now_ms(), write=write)
        return rt, key, org.org_id in rt.settings.operator_orgs

    async def _org_scope(
        self, request: Request[Any, Any, Any], org_id: str, *, write: bool = False
    ) -> Runtime:
        rt, key, operator = await self._caller(request, write=write)
        check_id("org", org_id)
        if not operator and key.org_id != org_id:
            raise NotFoundError(f"no org {org_id!r}")
        return rt

    async def _operator(self, request: Request[Any, Any, Any], *, write: bool = False) -> Runtime:
        rt, _, operator = await self._caller(request, write=write)
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
        result: dict[str, Any] = msgspec.to_builtins(org)
        return result

    @put("/orgs/{org_id:str}")
    async def put_org(
        self, request: Request[Any, Any, Any], org_id: FromPath[str]
    ) -> dict[str, Any]:
        rt = await self._operator(request, write=True)
        check_id("org", org_id)
        seed = await _body(request, OrgSeed)
        org = Org(
            org_id=org_id, name=seed.name, plan=seed.plan.plan(), rate_limit_policy=seed.rate_limit
        )
        await rt.access.keystore.put_org(org)
        result: dict[str, Any] = msgspec.to_builtins(org)
        return result

    @get("/orgs/{org_id:str}/keys")
    async def list_keys(
        self, request: Request[Any, Any, Any], org_id: FromPath[str]
    ) -> dict[str, Any]:
        rt = await self._org_scope(request, org_id)
        return {"data": [key_view(k) for k in await rt.access.keystore.list_keys(org_id)]}

    @post("/orgs/{org_id:str}/keys", status_code=201)
    async def create_key(
        self, request: Request[Any, Any, Any], org_id: FromPath[str]
    ) -> dict[str, Any]:
        rt = await self._org_scope(request, org_id, write=True)
        org = await rt.access.keystore.get_org(org_id)
        if org is None:
            raise NotFoundError(f"no org {org_id!r}")
        check_plan_access(org, _now_ms(), write=True)  # an operator creating in an expired org
        body = await _body(request, NewKeyBody)
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
        key = await rt.access.keystore.get_key(check_id("key", key_id))
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
        versions = await rt.access.templates.versions(org_id, check_template_id(template_id))
        if not versions:
            raise NotFoundError(f"no prompt template {template_id!r}")
        return {"data": msgspec.to_builtins(versions)}

    @post("/orgs/{org_id:str}/templates/{template_id:str}", status_code=201)
    async def add_template_version(
        self,
        request: Request[Any, Any, Any],
        org_id: FromPath[str],
        template_id: FromPath[str],
    ) -> dict[str, Any]:
        rt = await self._org_scope(request, org_id, write=True)
        check_template_id(template_id)
        body = await _body(request, TemplateBody)
        template = await rt.access.templates.put(org_id, template_id, body.messages)
        result: dict[str, Any] = msgspec.to_builtins(template)
        return result

    @get("/providers")
    async def list_providers(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        rt = await self._operator(request)
        return {"data": await rt.access.routing.providers()}

    @put("/providers/{name:str}")
    async def put_provider(
        self, request: Request[Any, Any, Any], name: FromPath[str]
    ) -> dict[str, Any]:
        rt = await self._operator(request, write=True)
        provider = {**await _body(request, dict[str, Any]), "name": name}
        _check_key_env(provider, rt.settings.provider_key_env_prefixes)
        plaintext = provider.pop("api_key", "")
        if plaintext:
            master = rt.settings.master_key.get_secret_value()
            provider["api_key_encrypted"] = encrypt(master, str(plaintext))
        stored = [p for p in await rt.access.routing.providers() if p.get("name") != name]
        check_routing(
            rt.access.base_settings, [*stored, provider], await rt.access.routing.routes()
        )
        await rt.access.routing.put_provider(provider)
        return {"data": provider, "note": "takes effect when the gateway workers restart"}

    @delete("/providers/{name:str}", status_code=200)
    async def delete_provider(
        self, request: Request[Any, Any, Any], name: FromPath[str]
    ) -> dict[str, Any]:
        rt = await self._operator(request, write=True)
        stored = [p for p in await rt.access.routing.providers() if p.get("name") != name]
        check_routing(rt.access.base_settings, stored, await rt.access.routing.routes())
        if not await rt.access.routing.delete_provider(name):
            raise NotFoundError(f"no stored provider {name!r}")
        return {"deleted": name}

    @get("/routes")
    async def list_routes(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        rt = await self._operator(request)
        return {"data": await rt.access.routing.routes()}

    @put("/routes/{model:path}")
    async def put_route(
        self, request: Request[Any, Any, Any], model: FromPath[str]
    ) -> dict[str, Any]:
        rt = await self._operator(request, write=True)
        body = await _body(request, RouteBody)
        routes = {**await rt.access.routing.routes(), model.lstrip("/"): body.targets}
        check_routing(rt.access.base_settings, await rt.access.routing.providers(), routes)
        await rt.access.routing.put_route(model.lstrip("/"), body.targets)
        return {"model": model.lstrip("/"), "targets": body.targets}

    @delete("/routes/{model:path}", status_code=200)
    async def delete_route(
        self, request: Request[Any, Any, Any], model: FromPath[str]
    ) -> dict[str, Any]:
        rt = await self._operator(request, write=True)
        if not await rt.access.routing.delete_route(model.lstrip("/")):
            raise NotFoundError(f"no stored route for {model.lstrip('/')!r}")
        return {"deleted": model.lstrip("/")}


def _check_key_env(provider: dict[str, Any], prefixes: list[str]) -> None:
    env = provider.get("api_key_env")
    if env is None or env == "":
        return
    if not isinstance(env, str) or not any(env.startswith(p) for p in prefixes):
        allowed = ", ".join(f"{p}*" for p in prefixes) or "(none)"
        raise BadRequestError(
            f"api_key_env must name a variable matching {allowed}; or send api_key, which is "
            "stored encrypted"
        )


def admin_router() -> Router:
    return Router(path="/", route_handlers=[AdminApi], include_in_schema=True)
