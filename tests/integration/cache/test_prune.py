"""Expired semantic-cache points are deleted: by each worker in local mode
(``SemanticCache.prune``), by the ingester's job against a server (``prune_expired``, run here
against qdrant-client's local mode, which speaks the same client API)."""

from __future__ import annotations

import pytest
from qdrant_client import AsyncQdrantClient, models

from gateway.clients.semantic_cache import SemanticCache
from gateway.clients.vector_store import VectorStore
from gateway.policy.cache import CacheTier
from ingester.cache_prune import prune_expired
from shared.settings import QdrantSettings

pytestmark = pytest.mark.integration

SCOPE = {"org_id": "o", "model": "m", "seed": "", "params_hash": "p"}


async def test_worker_prunes_its_expired_points() -> None:
    store = VectorStore.open(QdrantSettings(collection_prefix="t"))
    cache = SemanticCache(store)
    try:
        await cache.open(3)
        for key, expires in (("old", 1_000), ("new", 10_000)):
            await cache.put(
                CacheTier.SEMANTIC,
                [1.0, 0.0, 0.0],
                scope=SCOPE,
                key_hash=key,
                created_at_ms=0,
                expires_at_ms=expires,
            )
        await cache.prune(5_000)
        hits = await cache.search(
            CacheTier.SEMANTIC, [1.0, 0.0, 0.0], scope=SCOPE, threshold=0.5, limit=5, oldest_ms=0
        )
        assert [h.payload["key_hash"] for h in hits] == ["new"]
    finally:
        await store.aclose()


async def test_ingester_job_prunes_every_cache_collection() -> None:
    client = AsyncQdrantClient(location=":memory:")
    params = models.VectorParams(size=2, distance=models.Distance.COSINE)
    for name in ("f_cache_semantic_2", "f_cache_advanced_2", "f_verdicts_2"):
        await client.create_collection(name, vectors_config=params)
        await client.upsert(
            name,
            points=[
                models.PointStruct(id=i, vector=[1.0, float(i)], payload={"expires_at_ms": e})
                for i, e in ((1, 1_000), (2, 9_000))
            ],
        )
    pruned = await prune_expired(client, "f", 5_000)
    assert sorted(pruned) == ["f_cache_advanced_2", "f_cache_semantic_2"]
    for name, left in (("f_cache_semantic_2", 1), ("f_cache_advanced_2", 1), ("f_verdicts_2", 2)):
        assert (await client.count(name)).count == left
    await client.close()
