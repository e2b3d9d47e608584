"""Every Redis key the gateway builds for keys, orgs, usage, templates, limits, breakers,
routing config, the audit log and the response cache, in one place; and the one charset of the
ids that go into them.

Invariants:
- Org, key and template ids are 1-128 characters of ``A-Z a-z 0-9 _ . -`` (``ID_CHARSET``),
  checked when an id is written (admin API, CLI, config seed) and when one comes from a caller
  (paths, ``floopy-prompt-id``). No id holds ``:``, the separator, so ``org:<id>`` of one org is
  never a prefix of another org's keys (issue 10: ``acme`` read ``acme:eu``'s templates).
- Key hashes are SHA-256 hex; provider names are checked by the provider validation.
- Stream names and the retention hash, shared with the ingester, are in ``shared.streams``; the
  outage spool's markers (per spool volume, not per org) in ``gateway.clients.outage_spool``.
"""

from __future__ import annotations

import re

from shared.errors import BadRequestError

__all__ = ["ID_CHARSET", "MAX_ID_CHARS", "RedisKeys", "check_id", "is_id"]

MAX_ID_CHARS = 128
ID_CHARSET = "A-Z a-z 0-9 _ . -"
_ID = re.compile(r"[A-Za-z0-9_.\-]{1,128}")


def is_id(value: str) -> bool:
    return _ID.fullmatch(value) is not None


def check_id(kind: str, value: str) -> str:
    """``value`` if it is a valid id, else a 400 naming ``kind`` (org, key, prompt template)."""
    if not is_id(value):
        shown = value if len(value) <= 64 else value[:64] + "…"
        raise BadRequestError(
            f"{kind} id {shown!r} must be 1-{MAX_ID_CHARS} characters of {ID_CHARSET}"
        )
    return value


class RedisKeys:
    """Key names under one prefix (``FLOOPY_GATEWAY_REDIS__KEY_PREFIX``)."""

    def __init__(self, prefix: str = "floopy") -> None:
        self.prefix = prefix

    def org(self, org_id: str) -> str:
        return f"{self.prefix}:org:{org_id}"

    @property
    def org_prefix(self) -> str:
        """``org(id)`` is this plus the id (the auth script appends the key's org id)."""
        return f"{self.prefix}:org:"

    def org_keys(self, org_id: str) -> str:
        return f"{self.prefix}:org:{org_id}:keys"

    def api_key(self, key_hash: str) -> str:
        return f"{self.prefix}:key:{key_hash}"

    def key_id(self, key_id: str) -> str:
        return f"{self.prefix}:keyid:{key_id}"

    @property
    def key_last_used(self) -> str:
        """Hash key id → when it last authenticated a request (ms)."""
        return f"{self.prefix}:key_last_used"

    def audit(self, log: str) -> str:
        """An org's audit log (a list), or the gateway-wide one (``_gateway``)."""
        return f"{self.prefix}:audit:{log}"

    def org_requests(self, org_id: str, month: str) -> str:
        return f"{self.prefix}:usage:org:{org_id}:req:{month}"

    def key_usage(self, key_id: str, period: str) -> str:
        """``period``: ``d:<yyyymmdd>`` or ``m:<yyyymm>``."""
        return f"{self.prefix}:usage:key:{key_id}:{period}"

    def template(self, org_id: str, template_id: str) -> str:
        return f"{self.prefix}:tpl:{org_id}:{template_id}"

    def rate_limit(self, org_id: str, rest: str) -> str:
        return f"{self.prefix}:rl:{org_id}:{rest}"

    def rate_limit_segments(self, org_id: str) -> str:
        """The org's live per-segment buckets (a sorted set scored by expiry), for the cap."""
        return f"{self.prefix}:rl-segments:{org_id}"

    def response_cache(self, org_id: str, key_hash: str) -> str:
        """One exact-tier answer; the org in the name as well as in the hash."""
        return f"{self.prefix}:cache:{org_id}:{key_hash}"

    def breaker(self, scope: str) -> str:
        return f"{self.prefix}:breaker:{scope}"

    @property
    def providers(self) -> str:
        return f"{self.prefix}:providers"

    @property
    def routes(self) -> str:
        return f"{self.prefix}:routes"

    @property
    def routing_version(self) -> str:
        """Bumped by every provider or route write: workers follow changes by polling it."""
        return f"{self.prefix}:routing:version"
