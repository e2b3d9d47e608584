"""Every Redis key Floopy builds, in one place: the gateway's keys, orgs, usage, templates,
limits, breakers, routing config, audit log, response cache and outage-spool offsets; the
streams and the retention hash it shares with the ingester; the ingester's arq queue. And the
one charset of the ids that go into them. No other module writes a key name.

Invariants:
- Org, key and template ids are 1-128 characters of ``A-Z a-z 0-9 _ . -`` (``ID_CHARSET``),
  checked when an id is written (admin API, CLI, config seed) and when one comes from a caller
  (paths, ``floopy-prompt-id``). No id holds ``:``, the separator, so ``org:<id>`` of one org is
  never a prefix of another org's keys (issue 10: ``acme`` read ``acme:eu``'s templates).
- Key hashes are SHA-256 hex; provider names are checked by the provider validation.
- Every key starts with the prefix (``FLOOPY_GATEWAY_REDIS__KEY_PREFIX``, the ingester's
  ``FLOOPY_INGESTER_REDIS__KEY_PREFIX``; both ``floopy`` by default), so one ``SCAN`` shows
  them all and two deployments can share one Redis.
- A sink has ``stream_shards`` streams: shard 0 is ``<p>:stream:<sink>`` (the name from before
  shards existed), shard i > 0 is ``<p>:stream:<sink>:<i>`` (``shared.streams.shard_of`` picks
  the shard).
- Redis Cluster (``cluster=True``): the keys the limits script takes together — the org's
  rate-limit buckets and segment set, its monthly request counter, its keys' usage counters —
  carry the org id as a hash tag (``{acme}``), so they share one slot. On one node the names
  are the untagged ones they always were (an upgrade keeps this month's counters).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from shared.errors import BadRequestError

if TYPE_CHECKING:
    from shared.streams import Sink

__all__ = [
    "ID_CHARSET",
    "MAX_ID_CHARS",
    "RedisKeys",
    "check_id",
    "is_id",
    "retention_key",
    "segments_beside",
    "stream_key",
    "stream_keys",
]

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


def stream_key(sink: Sink, prefix: str = "floopy", shard: int = 0) -> str:
    base = f"{prefix}:stream:{sink.value}"
    return base if shard == 0 else f"{base}:{shard}"


def stream_keys(sink: Sink, prefix: str, shards: int) -> list[str]:
    """Every shard's stream of ``sink``, shard 0 first."""
    return [stream_key(sink, prefix, shard) for shard in range(shards)]


def retention_key(prefix: str = "floopy") -> str:
    """Hash org id → days of raw logs its plan keeps: written by the gateway whenever an org is
    stored, read by the ingester's retention job (which owns the raw tables)."""
    return f"{prefix}:org-retention"


def segments_beside(request_counter: str) -> str:
    """The segment set the limits script is handed when the caller names none (no segmented
    bucket): beside the org's request counter, so it shares the counter's hash slot."""
    return f"{request_counter}:segments"


class RedisKeys:
    """Key names under one prefix (``FLOOPY_GATEWAY_REDIS__KEY_PREFIX``)."""

    def __init__(self, prefix: str = "floopy", *, cluster: bool = False) -> None:
        self.prefix = prefix
        self.cluster = cluster

    def _slot_org(self, org_id: str) -> str:
        """The org as it appears in keys used together: a hash tag on a cluster."""
        return f"{{{org_id}}}" if self.cluster else org_id

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
        return f"{self.prefix}:usage:org:{self._slot_org(org_id)}:req:{month}"

    def key_usage(self, key_id: str, period: str, *, org_id: str = "") -> str:
        """``period``: ``d:<yyyymmdd>`` or ``m:<yyyymm>``. On a cluster the key's org is
        needed (its hash tag): ``<p>:usage:key:{acme}:<key_id>:<period>``."""
        if self.cluster:
            if not org_id:
                raise ValueError("usage keys on a Redis Cluster need the key's org")
            return f"{self.prefix}:usage:key:{self._slot_org(org_id)}:{key_id}:{period}"
        return f"{self.prefix}:usage:key:{key_id}:{period}"

    def usage_seen(self, org_id: str, origin: str, block: int) -> str:
        """A bitmap of the usage entries of one gateway process (``origin``) for one org that
        Redis has counted, one bit per entry number, a block of entry numbers per key: so a
        batch sent twice (its answer lost, then spooled) is counted once."""
        return f"{self.prefix}:usage:seen:{self._slot_org(org_id)}:{origin}:{block}"

    def template(self, org_id: str, template_id: str) -> str:
        return f"{self.prefix}:tpl:{org_id}:{template_id}"

    def rate_limit(self, org_id: str, rest: str) -> str:
        return f"{self.prefix}:rl:{self._slot_org(org_id)}:{rest}"

    def rate_limit_segments(self, org_id: str) -> str:
        """The org's live per-segment buckets (a sorted set scored by expiry), for the cap."""
        return f"{self.prefix}:rl-segments:{self._slot_org(org_id)}"

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

    def publish_fence(self, stream: str, publisher: str, epoch: int) -> str:
        """The highest sequence number of ``publisher``'s records of ``epoch`` that ``stream``
        took (``gateway.clients.publisher``); hash-tagged with the stream's name so that one
        script call may touch both on a cluster."""
        return f"{self.prefix}:publish-fence:{{{stream}}}:{publisher}:{epoch}"

    def spool_offset(self, volume_id: str, file_name: str) -> str:
        """How far a gateway outage-spool file was drained into the streams (per spool volume,
        not per org: the workers of one host share it)."""
        return f"{self.prefix}:gateway-spool:{volume_id}:{file_name}"

    @property
    def arq_queue(self) -> str:
        """The ingester's arq job queue (its cron jobs)."""
        return f"{self.prefix}:arq:queue"

    def arq_health(self, consumer: str) -> str:
        """One ingester replica's arq health check."""
        return f"{self.prefix}:arq:health:{consumer}"
