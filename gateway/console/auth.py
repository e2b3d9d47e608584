"""Who may read: API key → ``Principal`` (org, key) for the read API.

Two sources, one contract (``Authenticator``): the gateway's first-cut static key table
(``GatewaySettings.api_keys``; every static key may read its own org), and issue 3's Redis key
store, where a key needs the ``read`` permission (``admin`` implies it). Either raises
``InvalidApiKeyError`` (401) or ``ForbiddenError`` (403); neither ever returns another org. An
expired org reads for a grace period (``check_plan_access``), then gets SUBSCRIPTION_EXPIRED.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from gateway.console.api import Authenticator, Principal
from gateway.policy.keys import Permission, check_permission, check_plan_access
from gateway.settings import ApiKeyEntry
from shared.errors import InvalidApiKeyError

if TYPE_CHECKING:
    from gateway.clients.keystore import KeyStore

__all__ = ["keystore_keys", "static_keys"]


def static_keys(api_keys: Mapping[str, ApiKeyEntry]) -> Authenticator:
    async def authenticate(token: str) -> Principal:
        entry = api_keys.get(token)
        if entry is None:
            raise InvalidApiKeyError("invalid API key")
        return Principal(org_id=entry.org_id, key_id=entry.key_id)

    return authenticate


def keystore_keys(keystore: KeyStore) -> Authenticator:
    async def authenticate(token: str) -> Principal:
        key, org = await keystore.authenticate(token)
        check_permission(key, Permission.READ)
        check_plan_access(org, int(time.time() * 1000), write=False)
        return Principal(org_id=org.org_id, key_id=key.key_id)

    return authenticate
