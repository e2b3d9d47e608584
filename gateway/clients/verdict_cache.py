"""The firewall's verdict cache: earlier unsafe verdicts in Qdrant, searched by embedding.

Invariants:
- One collection (``<collection_prefix>_firewall_verdicts``, cosine), created on first use if
  missing (and again after a failure), payload indexes on ``org_id`` (the tenant) and
  ``score``. Creating it lazily keeps a Qdrant outage at start-up from disabling the cache.
- Every search is filtered on the caller's ``org_id`` (a ``must`` filter, never a score boost),
  so one org's verdicts never decide another org's request.
- Only unsafe verdicts (flagged or blocked) are stored, and a search returns only points whose
  stored score blocks under the thresholds of the request at hand: a hit always means "block".
- One point per (org, text), keyed by the text's SHA-256: an exact repeat is found by key
  without embedding it (``exact``); a text judged again overwrites its point.
- Every failure of the embedder or of Qdrant leaves as ``EmbeddingUnavailableError`` or
  ``VectorStoreUnavailableError``; the stage fails open to the classifier.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.clients.embeddings import Embedder
from gateway.clients.vector_store import PayloadIndex, VectorStore
from shared.errors import EmbeddingUnavailableError

__all__ = ["COLLECTION", "CachedVerdict", "VerdictCache"]

COLLECTION = "firewall_verdicts"


@dataclass(frozen=True, slots=True)
class CachedVerdict:
    score: float
    categories: tuple[str, ...]
    model_ref: str
    similarity: float


class VerdictCache:
    def __init__(self, store: VectorStore, embedder: Embedder, similarity: float) -> None:
        self.store = store
        self.embedder = embedder
        self.similarity = similarity
        self._ready = False

    async def _ensure(self) -> None:
        if not self._ready:
            await self.store.ensure_collection(
                COLLECTION,
                self.embedder.dimensions,
                (PayloadIndex("org_id", tenant=True), PayloadIndex("score", "float")),
            )
            self._ready = True

    async def exact(self, org_id: str, text: str, *, min_score: float) -> CachedVerdict | None:
        """An earlier verdict on exactly this text whose score is at least ``min_score``."""
        await self._ensure()
        payload = await self.store.payload(COLLECTION, _key(org_id, text), must={"org_id": org_id})
        if payload is None or float(payload.get("score", 0.0)) < min_score:
            return None
        return _verdict(payload, similarity=1.0)

    async def embed(self, text: str) -> list[float]:
        embeddings = await self.embedder.embed([text])
        if not embeddings.vectors:
            raise EmbeddingUnavailableError("the embedder returned no vector")
        return embeddings.vectors[0]

    async def lookup(
        self, org_id: str, vector: Sequence[float], *, min_score: float
    ) -> CachedVerdict | None:
        """The most similar earlier verdict of ``org_id`` at or above ``similarity`` whose
        score is at least ``min_score``, if any."""
        await self._ensure()
        hits = await self.store.search(
            COLLECTION,
            vector,
            must={"org_id": org_id},
            at_least={"score": min_score},
            limit=1,
            score_threshold=self.similarity,
        )
        return _verdict(hits[0].payload, hits[0].score) if hits else None

    async def save(
        self,
        org_id: str,
        text: str,
        vector: Sequence[float],
        *,
        score: float,
        categories: Sequence[str],
        model_ref: str,
    ) -> None:
        await self._ensure()
        await self.store.upsert(
            COLLECTION,
            _key(org_id, text),
            vector,
            {
                "org_id": org_id,
                "score": score,
                "categories": list(categories),
                "model_ref": model_ref,
                "created_at_ms": int(time.time() * 1000),
            },
        )


def _key(org_id: str, text: str) -> str:
    return f"{org_id}\n{hashlib.sha256(text.encode()).hexdigest()}"


def _verdict(payload: dict[str, Any], similarity: float) -> CachedVerdict:
    return CachedVerdict(
        score=float(payload.get("score", 1.0)),
        categories=tuple(str(c) for c in payload.get("categories", [])),
        model_ref=str(payload.get("model_ref", "")),
        similarity=similarity,
    )
