"""Who is calling the admin API, and what they may reach (shared by its controllers)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from litestar import Request

from gateway.clients.key_auth import KeyAuthenticator
from gateway.pipeline.auth import bearer_token
from gateway.policy.keys import ApiKey, Org, Permission, check_permission, check_plan_access
from gateway.settings import GatewaySettings
from shared.errors import ForbiddenError, InvalidApiKeyError, NotFoundError
from shared.redis_keys import check_id

__all__ = ["Caller", "caller"]


@dataclass(frozen=True)
class Caller:
    key: ApiKey
    org: Org
    operator: bool

    def reach(self, org_id: str) -> None:
        """Another org's ids answer 404 unless the caller is an operator; an id outside the
        charset is a 400."""
        check_id("org", org_id)
        if not self.operator and self.key.org_id != org_id:
            raise NotFoundError(f"no org {org_id!r}")

    def require_operator(self) -> None:
        if not self.operator:
            raise ForbiddenError("only an operator org's admin key may do this")


async def caller(
    request: Request[Any, Any, Any],
    key_auth: KeyAuthenticator,
    settings: GatewaySettings,
    need: Permission = Permission.ADMIN,
    *,
    write: bool | None = False,
) -> Caller:
    """``write``: an expired org reads for a grace period and writes nothing
    (``check_plan_access``); None skips the check (revoking a key stays allowed).
    ``settings``: the worker's own (its ``operator_orgs``)."""
    token = bearer_token(request.headers.get("authorization", ""))
    if token is None:
        raise InvalidApiKeyError("missing API key: send Authorization: Bearer <admin key>")
    key, org = await key_auth.authenticate(token)
    check_permission(key, need)
    if write is not None:
        check_plan_access(org, int(time.time() * 1000), write=write)
    return Caller(key, org, org.org_id in settings.operator_orgs)
