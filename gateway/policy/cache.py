"""What the response cache does with one request (pure: no I/O).

An org's ``CacheSettings`` (stored with the org) choose the tiers, the TTL and its cap, and the
thresholds; the key's ``cache`` switch and the request's ``Floopy-Cache-*`` headers adjust them
per request. ``plan_cache`` turns the three into a ``CachePlan``: which tiers to look up and
write, the TTL of what is written, the oldest entry accepted and the similarity threshold in
force. A header may narrow what the org allows (a shorter max age, a higher threshold, a seed
namespace) but never widen it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

import msgspec

from shared.errors import BadRequestError

if TYPE_CHECKING:
    from gateway.policy.cache_key import RequestKeys

__all__ = [
    "DEFAULT_ADVANCED_THRESHOLD",
    "DEFAULT_OVERLAP_THRESHOLD",
    "DEFAULT_SEMANTIC_THRESHOLD",
    "DEFAULT_TTL_S",
    "MAX_SEED_CHARS",
    "TIER_ORDER",
    "CacheControls",
    "CacheOutcome",
    "CachePlan",
    "CacheSettings",
    "CacheStatus",
    "CacheTier",
    "CachedAnswer",
    "PlannedLookup",
    "cache_headers",
    "decode_answer",
    "encode_answer",
    "parse_max_age",
    "parse_seed",
    "parse_threshold",
    "plan_cache",
]

DEFAULT_TTL_S = 7 * 86_400
MAX_TTL_S = 365 * 86_400
DEFAULT_SEMANTIC_THRESHOLD = 0.98
"""Cosine similarity on multilingual-e5-small, calibrated on ``bench/data/cache_pairs.jsonl``
(``python -m bench.cache_calibrate``; README "Response cache"): precision 0.90, recall 0.62 on
that deliberately hard set. e5-small puts "string to integer" and "integer to string" at 0.9995,
so no threshold makes the whole-prompt tier safe; the advanced tier's verifier is the answer."""
DEFAULT_ADVANCED_THRESHOLD = 0.90
"""The advanced tier's candidate threshold (last user turn only, lower than the semantic one:
the lexical check after it is what keeps false hits out; precision 1.00, recall 0.48 on the
calibration set)."""
DEFAULT_OVERLAP_THRESHOLD = 0.5
"""The advanced tier's verifier: share of content tokens the two last turns have in common."""
MAX_SEED_CHARS = 256


class CacheStatus(StrEnum):
    """As recorded (lower case, what the console and rollups filter on); the response header
    ``Floopy-Cache`` carries the upper-case form."""

    HIT = "hit"
    MISS = "miss"
    BYPASS = "bypass"
    """``Floopy-Cache-Enabled: false``: neither read nor written."""
    DISABLED = "disabled"
    """The key's ``cache`` switch is off, or the org runs no tier."""


class CacheTier(StrEnum):
    EXACT = "exact"
    SEMANTIC = "semantic"
    ADVANCED = "advanced"


TIER_ORDER = (CacheTier.EXACT, CacheTier.SEMANTIC, CacheTier.ADVANCED)


class CacheSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An org's cache settings (``GET /admin/orgs/{org}`` → ``cache``; written with
    ``PUT /admin/orgs/{org}/cache``). Exact only by default: the embedding tiers cost CPU on
    every miss and can serve a near answer, so an org opts in."""

    tiers: frozenset[CacheTier] = frozenset({CacheTier.EXACT})
    ttl_s: int = DEFAULT_TTL_S
    max_ttl_s: int = 30 * 86_400
    """Cap of ``Floopy-Cache-Max-Age`` when it sets the TTL of what a request stores."""
    semantic_threshold: float = DEFAULT_SEMANTIC_THRESHOLD
    advanced_threshold: float = DEFAULT_ADVANCED_THRESHOLD
    advanced_overlap: float = DEFAULT_OVERLAP_THRESHOLD
    advanced_top_k: int = 5

    def __post_init__(self) -> None:
        if not 1 <= self.ttl_s <= self.max_ttl_s <= MAX_TTL_S:
            raise ValueError(f"need 1 <= ttl_s <= max_ttl_s <= {MAX_TTL_S}")
        for name in ("semantic_threshold", "advanced_threshold", "advanced_overlap"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if not 1 <= self.advanced_top_k <= 50:
            raise ValueError("advanced_top_k must be between 1 and 50")

    def view(self) -> dict[str, object]:
        shown: dict[str, object] = msgspec.to_builtins(self)
        shown["tiers"] = [t.value for t in TIER_ORDER if t in self.tiers]
        return shown


class CacheControls(msgspec.Struct, frozen=True):
    """The request's ``Floopy-Cache-*`` headers, parsed (``gateway.policy.headers``)."""

    enabled: bool = True
    max_age_s: int | None = None
    seed: str = ""
    semantic_threshold: float | None = None


class CachePlan(msgspec.Struct, frozen=True):
    status: CacheStatus
    """MISS until a lookup hits; BYPASS or DISABLED when nothing is looked up."""
    tiers: tuple[CacheTier, ...] = ()
    ttl_s: int = DEFAULT_TTL_S
    min_created_at_ms: int = 0
    """Entries created before this are not served (``Floopy-Cache-Max-Age``)."""
    seed: str = ""
    semantic_threshold: float = DEFAULT_SEMANTIC_THRESHOLD
    advanced_threshold: float = DEFAULT_ADVANCED_THRESHOLD
    advanced_overlap: float = DEFAULT_OVERLAP_THRESHOLD
    advanced_top_k: int = 5

    @property
    def active(self) -> bool:
        return bool(self.tiers)


def plan_cache(
    settings: CacheSettings,
    controls: CacheControls,
    *,
    key_switch: bool,
    now_ms: int,
    exact_only: bool = False,
) -> CachePlan:
    """``exact_only``: the endpoint has no prompt to embed (``/v1/embeddings``)."""
    if not key_switch:
        return CachePlan(CacheStatus.DISABLED)
    tiers = tuple(t for t in TIER_ORDER if t in settings.tiers)
    if exact_only:
        tiers = tuple(t for t in tiers if t is CacheTier.EXACT)
    if not tiers:
        return CachePlan(CacheStatus.DISABLED)
    if not controls.enabled:
        return CachePlan(CacheStatus.BYPASS)
    ttl = settings.ttl_s
    oldest = 0
    if controls.max_age_s is not None:
        ttl = max(1, min(controls.max_age_s, settings.max_ttl_s))
        oldest = now_ms - controls.max_age_s * 1000
    threshold = settings.semantic_threshold
    if controls.semantic_threshold is not None:
        threshold = max(threshold, controls.semantic_threshold)
    return CachePlan(
        CacheStatus.MISS,
        tiers,
        ttl_s=ttl,
        min_created_at_ms=oldest,
        seed=controls.seed,
        semantic_threshold=threshold,
        advanced_threshold=max(settings.advanced_threshold, controls.semantic_threshold or 0.0),
        advanced_overlap=settings.advanced_overlap,
        advanced_top_k=settings.advanced_top_k,
    )


class PlannedLookup(msgspec.Struct):
    """The cache stage's plan and keys, made ahead by the limits stage so that the exact
    tier's entry is read in the limits script's round trip (``fetched``; ``entry`` None: no
    entry). Not the outcome yet: a request the limits refuse never reached the cache."""

    plan: CachePlan
    keys: RequestKeys | None
    fetched: bool = False
    entry: bytes | None = None


class CacheOutcome(msgspec.Struct):
    """What the cache stage found and what the write after the response needs; the record's
    ``cache_*`` fields. ``status`` None: the request never reached the cache stage."""

    status: CacheStatus | None = None
    plan: CachePlan | None = None
    tier: CacheTier | None = None
    similarity: float | None = None
    keys: RequestKeys | None = None
    lookup_ms: dict[str, float] = msgspec.field(default_factory=dict)
    error: str = ""
    hit: CachedAnswer | None = None
    vectors: dict[CacheTier, list[float]] = msgspec.field(default_factory=dict)
    """Embeddings made for the lookup, reused by the write of a miss."""
    stream_events: list[bytes] | None = None
    """The SSE bytes a streamed miss sent, kept only when the answer will be stored."""
    ahead: PlannedLookup | None = None

    @property
    def threshold(self) -> float | None:
        """The similarity threshold in force: the tier that hit's, else the first embedding
        tier's; None when only the exact tier ran."""
        plan = self.plan
        if plan is None:
            return None
        if self.tier is CacheTier.ADVANCED:
            return plan.advanced_threshold
        if CacheTier.SEMANTIC in plan.tiers:
            return plan.semantic_threshold
        if CacheTier.ADVANCED in plan.tiers:
            return plan.advanced_threshold
        return None

    def fail_open(self, tier: CacheTier, what: str) -> None:
        note = f"{tier.value}: {what}"
        self.error = f"{self.error}; {note}" if self.error else note


class CachedAnswer(msgspec.Struct, kw_only=True, array_like=True):
    """One stored answer (msgpack, positional: compact in Redis and in Qdrant payloads).

    ``body`` is always a complete JSON answer (a chat.completion, or an embeddings list); a
    streamed miss is stored as the completion its chunks add up to, and replayed as chunks.
    """

    body: bytes
    model: str = ""
    provider: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_prompt_tokens: int = 0
    cost_usd: float | None = None
    created_at_ms: int = 0
    screened_score: float | None = None
    """The firewall's score of the request that stored it; None when it was not screened (then
    a request that must be screened is never answered from this entry)."""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(CachedAnswer)


def encode_answer(answer: CachedAnswer) -> bytes:
    return _encoder.encode(answer)


def decode_answer(raw: bytes) -> CachedAnswer | None:
    """None for bytes that are not an entry of this shape (an older layout): a miss, not an
    error, since the next write replaces it."""
    try:
        return _decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def cache_headers(
    status: CacheStatus, tier: CacheTier | None = None, similarity: float | None = None
) -> dict[str, str]:
    headers = {"Floopy-Cache": status.value.upper()}
    if tier is not None:
        headers["Floopy-Cache-Tier"] = tier.value
    if similarity is not None:
        headers["Floopy-Cache-Similarity"] = f"{similarity:.4f}"
    return headers


# -- header values (``gateway.policy.headers`` calls these) -----------------------------------


def parse_max_age(name: str, value: str) -> int:
    text = value.strip()
    if not text.isdigit() or len(text) > 10:
        raise BadRequestError(f"header {name} must be a whole number of seconds")
    seconds = int(text)
    if not 0 < seconds <= MAX_TTL_S:
        raise BadRequestError(f"header {name} must be between 1 and {MAX_TTL_S} seconds")
    return seconds


def parse_threshold(name: str, value: str) -> float:
    try:
        threshold = float(value.strip())
    except ValueError:
        raise BadRequestError(f"header {name} must be a number between 0 and 1") from None
    if not 0.0 <= threshold <= 1.0:  # also refuses nan
        raise BadRequestError(f"header {name} must be a number between 0 and 1")
    return threshold


def parse_seed(name: str, value: str) -> str:
    if not value or len(value) > MAX_SEED_CHARS or not value.isascii() or not value.isprintable():
        raise BadRequestError(
            f"header {name} must be 1-{MAX_SEED_CHARS} printable ASCII characters"
        )
    return value
