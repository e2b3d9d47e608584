"""Stage 1: who is calling. First cut: a static table of Floopy keys from the settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.errors import InvalidApiKeyError

if TYPE_CHECKING:
    from gateway.context import RequestContext
    from gateway.runtime import Runtime

__all__ = ["bearer_token", "run"]


def bearer_token(authorization: str) -> str | None:
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def run(ctx: RequestContext, rt: Runtime) -> None:
    token = bearer_token(ctx.headers.get("authorization", ""))
    if token is None:
        raise InvalidApiKeyError("missing API key: send Authorization: Bearer <your Floopy key>")
    entry = rt.settings.api_keys.get(token)
    if entry is None:
        raise InvalidApiKeyError("invalid API key")
    ctx.org_id = entry.org_id
    ctx.api_key_id = entry.key_id
