"""Stage 1: who is calling. The key store answers from a per-worker cache (``key_cache_ttl_s``)
or one Redis round trip; then the key must have the proxy permission and its org a live plan.

The org and key ids are set before the checks, so a refused request's record says whose it was.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from gateway.policy.keys import Permission, check_permission, check_plan
from shared.errors import InvalidApiKeyError, ProviderError

if TYPE_CHECKING:
    from gateway.clients.key_auth import KeyAuthenticator
    from gateway.context import RequestContext

__all__ = ["bearer_token", "run"]

log = logging.getLogger(__name__)


def bearer_token(authorization: str) -> str | None:
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def run(ctx: RequestContext, authenticator: KeyAuthenticator) -> None:
    token = bearer_token(ctx.headers.get("authorization", ""))
    if token is None:
        raise InvalidApiKeyError("missing API key: send Authorization: Bearer <your Floopy key>")
    try:
        key, org = await authenticator.authenticate(token)
    except (RedisError, OSError) as exc:
        # Known keys are answered from the stale cache; only a key never seen lands here.
        log.warning("key store unreachable while authenticating (%s: %s)", type(exc).__name__, exc)
        raise ProviderError("the key store is unreachable; retry shortly") from exc
    ctx.api_key, ctx.org = key, org
    ctx.org_id, ctx.api_key_id = org.org_id, key.key_id
    check_permission(key, Permission.PROXY)
    check_plan(org, ctx.created_at_ms)
