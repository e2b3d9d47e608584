"""Who may read: API key → ``Principal`` (org, key) for the read API.

Keys are the key store's (``KeyAuthenticator``), the deprecated static key table included (it is
seeded into the store at start-up, with the ``read`` permission); a key needs ``read``
(``admin`` implies it). It raises ``InvalidApiKeyError`` (401) or ``ForbiddenError`` (403) and
never returns another org. An expired org reads for a grace period (``check_plan_access``),
then gets SUBSCRIPTION_EXPIRED.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from gateway.console.api import Authenticator, Principal
from gateway.policy.keys import Permission, check_permission, check_plan_access

if TYPE_CHECKING:
    from gateway.clients.key_auth import KeyAuthenticator

__all__ = ["reader_keys"]


def reader_keys(authenticator: KeyAuthenticator) -> Authenticator:
    async def authenticate(token: str) -> Principal:
        key, org = await authenticator.authenticate(token)
        check_permission(key, Permission.READ)
        check_plan_access(org, int(time.time() * 1000), write=False)
        return Principal(org_id=org.org_id, key_id=key.key_id)

    return authenticate
