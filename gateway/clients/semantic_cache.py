"""The semantic and advanced tiers' vectors in Qdrant (through ``VectorStore``).

Invariants:
- One collection per tier, shared by every org; every search has ``must`` filters on the org
  (the tenant field), the model, the cache seed and a hash of everything but the prompt text
  (``params_hash``; ``prefix_hash`` for the advanced tier, which also pins the conversation
  before the last user turn). Isolation is the filter, never the vectors.
- A point holds no answer: it names the exact tier's entry (``key_hash``), read from Redis under
  the *asking* org's key. So an answer expires with its Redis TTL, and a point can only ever
  lead to an answer of the org that asks.
- Points carry ``created_at_ms`` and ``expires_at_ms``; Qdrant has no TTL, so ``prune`` deletes
  expired points (the ingester's hourly job against a server; each gateway worker's own
  hourly task in local mode, where nothing else can reach its vectors).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.clients.vector_store import Hit, PayloadIndex, VectorStore
from gateway.policy.cache import CacheTier

__all__ = ["COLLECTIONS", "SemanticCache"]

_COMMON = (
    PayloadIndex("org_id", tenant=True),
    PayloadIndex("model"),
    PayloadIndex("seed"),
)
_TIMES = (PayloadIndex("created_at_ms", "integer"), PayloadIndex("expires_at_ms", "integer"))
COLLECTIONS: Mapping[CacheTier, tuple[str, str, tuple[PayloadIndex, ...]]] = {
    CacheTier.SEMANTIC: (
        "cache_semantic",
        "params_hash",
        (*_COMMON, PayloadIndex("params_hash"), *_TIMES),
    ),
    CacheTier.ADVANCED: (
        "cache_advanced",
        "prefix_hash",
        (*_COMMON, PayloadIndex("prefix_hash"), *_TIMES),
    ),
}
"""Tier → (collection, the hash field it filters on, payload indexes)."""


class SemanticCache:
    """Collection names end with the embedder's dimensions (``cache_semantic_384``): vectors of
    two embedders are never compared, and switching embedders starts an empty cache instead of
    failing every write."""

    def __init__(self, store: VectorStore) -> None:
        self.store = store
        self._names: dict[CacheTier, str] = {}

    async def open(self, dimensions: int) -> None:
        for tier, (name, _, indexes) in COLLECTIONS.items():
            self._names[tier] = f"{name}_{dimensions}"
            await self.store.ensure_collection(self._names[tier], dimensions, indexes)

    async def search(
        self,
        tier: CacheTier,
        vector: list[float],
        *,
        scope: Mapping[str, str],
        threshold: float,
        limit: int,
        oldest_ms: int,
    ) -> list[Hit]:
        """``scope``: org_id, model, seed and the tier's hash field, all required."""
        return await self.store.search(
            self._names[tier],
            vector,
            must=dict(scope),
            at_least={"created_at_ms": float(oldest_ms)} if oldest_ms else None,
            limit=limit,
            score_threshold=threshold,
        )

    async def put(
        self,
        tier: CacheTier,
        vector: list[float],
        *,
        scope: Mapping[str, str],
        key_hash: str,
        created_at_ms: int,
        expires_at_ms: int,
        text: str = "",
    ) -> None:
        payload: dict[str, Any] = {
            **scope,
            "key_hash": key_hash,
            "created_at_ms": created_at_ms,
            "expires_at_ms": expires_at_ms,
        }
        if text:
            payload["text"] = text
        await self.store.upsert(self._names[tier], f"{scope['org_id']}:{key_hash}", vector, payload)

    async def prune(self, now_ms: int) -> None:
        for name in self._names.values():
            await self.store.delete_below(name, "expires_at_ms", float(now_ms))
