"""Every settings change, whoever makes it (the admin API, the console through it, or
``floopy-admin``), goes through ``AdminService``: it makes the change through the stores and
then writes the audit entry (who, what, when, before and after, redacted).

Who may do what is decided before (``gateway.admin.api`` checks the caller's key and org); this
module only does and records. One service per actor, built per call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from gateway.admin.secrets import encrypt
from gateway.clients.audit_log import GATEWAY_LOG
from gateway.policy.keys import ApiKey, KeyLimits, KeySwitches, NewKey, Org, Permission
from gateway.policy.redaction import redact
from gateway.policy.templates import TemplateMessage
from gateway.routing_checks import check_routing
from shared.errors import BadRequestError, NotFoundError

if TYPE_CHECKING:
    from gateway.access import Access
    from gateway.settings import GatewaySettings

__all__ = [
    "Actor",
    "AdminService",
    "KeyPatch",
    "NewKeyBody",
    "key_view",
    "patched_key",
    "to_struct",
]


_T = TypeVar("_T")


def to_struct(data: Any, kind: type[_T]) -> _T:
    """``data`` (JSON-like) as ``kind``; a mismatch is a 400 naming the field."""
    try:
        return msgspec.convert(data, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise BadRequestError(f"invalid body: {exc}") from None


class NewKeyBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str = ""
    permissions: frozenset[Permission] = frozenset({Permission.PROXY})
    limits: KeyLimits = KeyLimits()
    switches: KeySwitches = KeySwitches()


class KeyPatch(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``PATCH /admin/keys/{key_id}``: what is given changes, the rest stays. ``limits`` and
    ``switches`` are merged field by field (``null`` clears a limit)."""

    name: str | None = None
    permissions: frozenset[Permission] | None = None
    limits: dict[str, Any] | None = None
    switches: dict[str, bool] | None = None


def patched_key(key: ApiKey, patch: KeyPatch) -> ApiKey:
    """``key`` with ``patch`` applied (pure; raises BadRequestError for a bad field)."""
    if patch.permissions is not None and not patch.permissions:
        raise BadRequestError("a key needs at least one permission (revoke it instead)")
    limits = key.limits
    if patch.limits is not None:
        limits = to_struct({**msgspec.to_builtins(key.limits), **patch.limits}, KeyLimits)
    switches = key.switches
    if patch.switches is not None:
        switches = to_struct({**msgspec.to_builtins(key.switches), **patch.switches}, KeySwitches)
    return msgspec.structs.replace(
        key,
        name=key.name if patch.name is None else patch.name,
        permissions=key.permissions if patch.permissions is None else patch.permissions,
        limits=limits,
        switches=switches,
    )


def key_view(key: ApiKey) -> dict[str, Any]:
    """A key as shown to admins: never its hash (a stolen hash list must not help anyone)."""
    shown: dict[str, Any] = msgspec.to_builtins(key)
    shown.pop("key_hash", None)
    shown["permissions"] = sorted(shown["permissions"])
    return shown


@dataclass(frozen=True)
class Actor:
    """Who acts: an admin key (``kind="key"``) or a shell user of ``floopy-admin``
    (``kind="cli"``, trusted like an operator: it holds the Redis credentials)."""

    kind: str
    id: str
    org_id: str = ""
    name: str = ""

    def view(self) -> dict[str, str]:
        return {"kind": self.kind, "id": self.id, "org_id": self.org_id, "name": self.name}


class AdminService:
    def __init__(
        self,
        access: Access,
        settings: GatewaySettings,
        actor: Actor,
        clock: Callable[[], float] = time.time,
        *,
        check_against: GatewaySettings | None = None,
    ) -> None:
        """``check_against``: the worker's own settings (before stored routing is merged in);
        given, every provider and route write is checked by building what a worker builds
        from it (``check_routing``) before it is stored. The CLI, whose environment need not
        be the workers', passes none."""
        self._access = access
        self._settings = settings
        self._actor = actor
        self._clock = clock
        self._check_against = check_against

    async def _audit(
        self,
        action: str,
        target: str,
        orgs: Iterable[str],
        before: Any = None,
        after: Any = None,
        *,
        operators_only: bool = False,
    ) -> None:
        entry = {
            "at_ms": int(self._clock() * 1000),
            "actor": self._actor.view(),
            "action": action,
            "target": target,
            "before": redact(before),
            "after": redact(after),
        }
        org_ids = {o for o in (*orgs, self._actor.org_id) if o}
        if operators_only:  # providers and routes: the gateway-wide log and every operator org's
            org_ids.update({GATEWAY_LOG, *self._settings.operator_orgs})
        await self._access.audit.append(entry, org_ids)

    # -- keys -------------------------------------------------------------------------------

    async def create_key(self, org_id: str, body: NewKeyBody) -> tuple[NewKey, ApiKey]:
        if await self._access.admin_store.get_org(org_id) is None:
            raise NotFoundError(f"no org {org_id!r}")
        new, key = await self._access.admin_store.create_key(
            org_id,
            name=body.name,
            permissions=body.permissions,
            limits=body.limits,
            switches=body.switches,
        )
        await self._audit("key.create", f"key:{key.key_id}", [org_id], None, key_view(key))
        return new, key

    async def update_key(self, key: ApiKey, patch: KeyPatch) -> ApiKey:
        updated = patched_key(key, patch)
        stored = await self._access.admin_store.put_key(updated)
        await self._audit(
            "key.update", f"key:{key.key_id}", [key.org_id], key_view(key), key_view(stored)
        )
        return stored

    async def revoke_key(self, key: ApiKey) -> None:
        await self._access.admin_store.revoke_key(key.key_id)
        after = await self._access.admin_store.get_key(key.key_id)
        await self._audit(
            "key.revoke",
            f"key:{key.key_id}",
            [key.org_id],
            key_view(key),
            key_view(after) if after else None,
        )

    # -- orgs and templates -----------------------------------------------------------------

    async def put_org(self, org: Org) -> Org:
        before = await self._access.admin_store.get_org(org.org_id)
        await self._access.admin_store.put_org(org)
        await self._audit(
            "org.put",
            f"org:{org.org_id}",
            [org.org_id],
            msgspec.to_builtins(before) if before else None,
            msgspec.to_builtins(org),
        )
        return org

    async def add_template_version(
        self, org_id: str, template_id: str, messages: tuple[TemplateMessage, ...]
    ) -> Any:
        template = await self._access.templates.put(org_id, template_id, messages)
        await self._audit(
            "template.version",
            f"template:{template_id}",
            [org_id],
            None,
            msgspec.to_builtins(template),
        )
        return template

    # -- providers and routes (operators) ---------------------------------------------------

    async def _check(
        self,
        providers: list[dict[str, Any]] | None = None,
        routes: dict[str, list[str]] | None = None,
    ) -> None:
        """The stored routing after a write (``providers``/``routes`` as they would be), built
        as a worker builds it; a 400 when it could not be used."""
        if self._check_against is None:
            return
        routing_config = self._access.routing_config
        check_routing(
            self._check_against,
            providers if providers is not None else await routing_config.providers(),
            routes if routes is not None else await routing_config.routes(),
        )

    async def _stored_provider(self, name: str) -> dict[str, Any] | None:
        return next(
            (p for p in await self._access.routing_config.providers() if p["name"] == name), None
        )

    async def put_provider(self, name: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Store a provider; a plaintext ``api_key`` is encrypted first. An edit that sends no
        credential keeps the stored one (credentials are entered once, never shown again)."""
        provider = {**fields, "name": name}
        plaintext = provider.pop("api_key", "")
        before = await self._stored_provider(name)
        if plaintext:
            master = self._settings.master_key.get_secret_value()
            if not master:
                raise BadRequestError(
                    "set FLOOPY_GATEWAY_MASTER_KEY to store a provider key (or use api_key_env)"
                )
            provider["api_key_encrypted"] = encrypt(master, str(plaintext))
        elif before and not provider.get("api_key_env") and not provider.get("api_key_encrypted"):
            for kept in ("api_key_encrypted", "api_key_env"):
                if before.get(kept):
                    provider[kept] = before[kept]
        others = [p for p in await self._access.routing_config.providers() if p.get("name") != name]
        await self._check(providers=[*others, provider])
        await self._access.routing_config.put_provider(provider)
        await self._audit(
            "provider.put", f"provider:{name}", [], before, provider, operators_only=True
        )
        return provider

    async def delete_provider(self, name: str) -> None:
        before = await self._stored_provider(name)
        others = [p for p in await self._access.routing_config.providers() if p.get("name") != name]
        await self._check(providers=others)
        if not await self._access.routing_config.delete_provider(name):
            raise NotFoundError(f"no stored provider {name!r}")
        await self._audit(
            "provider.delete", f"provider:{name}", [], before, None, operators_only=True
        )

    async def put_route(self, model: str, targets: list[str]) -> None:
        routes = await self._access.routing_config.routes()
        before = routes.get(model)
        await self._check(routes={**routes, model: targets})
        await self._access.routing_config.put_route(model, targets)
        await self._audit("route.put", f"route:{model}", [], before, targets, operators_only=True)

    async def delete_route(self, model: str) -> None:
        before = (await self._access.routing_config.routes()).get(model)
        if not await self._access.routing_config.delete_route(model):
            raise NotFoundError(f"no stored route for {model!r}")
        await self._audit("route.delete", f"route:{model}", [], before, None, operators_only=True)

    async def put_section(self, org_id: str, section: str, before: Any, after: Any) -> None:
        """Record a change of an org's settings section (cache, firewall) made by its store."""
        await self._audit(f"{section}.put", f"org:{org_id}", [org_id], before, after)
