"""VectorStore against qdrant-client's local mode (the embedded default) and an address where
no Qdrant listens."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from devstack.servers import free_port
from gateway.clients.vector_store import PayloadIndex, VectorStore, point_id
from shared.errors import VectorStoreUnavailableError
from shared.settings import QdrantSettings

INDEXES = (PayloadIndex("org_id", tenant=True), PayloadIndex("created_at_s", "integer"))


@pytest.fixture
async def store() -> AsyncIterator[VectorStore]:
    s = VectorStore.open(QdrantSettings(collection_prefix="t"))
    await s.ensure_collection("things", 3, INDEXES)
    yield s
    await s.aclose()


async def test_ensure_collection_is_idempotent(store: VectorStore) -> None:
    assert await store.ensure_collection("things", 3, INDEXES) == "t_things"


async def test_search_never_crosses_the_tenant_filter(store: VectorStore) -> None:
    await store.upsert("things", "a-1", [1.0, 0.0, 0.0], {"org_id": "a", "created_at_s": 10})
    await store.upsert("things", "b-1", [1.0, 0.0, 0.0], {"org_id": "b", "created_at_s": 10})
    hits = await store.search("things", [1.0, 0.0, 0.0], must={"org_id": "a"}, limit=5)
    assert [h.payload["org_id"] for h in hits] == ["a"]
    assert hits[0].id == point_id("a-1")
    assert hits[0].score == pytest.approx(1.0)
    assert await store.search("things", [1.0, 0.0, 0.0], must={"org_id": "c"}) == []


async def test_threshold_lower_bounds_and_expiry(store: VectorStore) -> None:
    await store.upsert("things", "old", [1.0, 0.0, 0.0], {"org_id": "a", "created_at_s": 10})
    await store.upsert("things", "new", [0.0, 1.0, 0.0], {"org_id": "a", "created_at_s": 20})
    near_old = [0.9, 0.1, 0.0]
    assert len(await store.search("things", near_old, must={"org_id": "a"}, limit=5)) == 2
    strict = await store.search(
        "things", near_old, must={"org_id": "a"}, limit=5, score_threshold=0.9
    )
    assert [h.id for h in strict] == [point_id("old")]
    young = await store.search(
        "things", near_old, must={"org_id": "a"}, at_least={"created_at_s": 15}, limit=5
    )
    assert [h.id for h in young] == [point_id("new")]
    await store.delete_below("things", "created_at_s", 15)
    left = await store.search("things", near_old, must={"org_id": "a"}, limit=5)
    assert [h.id for h in left] == [point_id("new")]


async def test_writing_a_key_twice_overwrites(store: VectorStore) -> None:
    await store.upsert("things", "k", [1.0, 0.0, 0.0], {"org_id": "a", "created_at_s": 1})
    await store.upsert("things", "k", [1.0, 0.0, 0.0], {"org_id": "a", "created_at_s": 2})
    hits = await store.search("things", [1.0, 0.0, 0.0], must={"org_id": "a"}, limit=5)
    assert [(h.id, h.payload["created_at_s"]) for h in hits] == [(point_id("k"), 2)]


async def test_an_unreachable_server_is_our_error() -> None:
    s = VectorStore.open(QdrantSettings(url=f"http://127.0.0.1:{free_port()}", timeout_s=1))
    with pytest.raises(VectorStoreUnavailableError):
        await s.ensure_collection("things", 3, INDEXES)
    await s.aclose()


async def test_a_search_without_every_keyword_reads_every_matching_partition() -> None:
    s = VectorStore.open(QdrantSettings(collection_prefix="p"))
    indexes = (PayloadIndex("org_id", tenant=True), PayloadIndex("model"))
    await s.ensure_collection("parts", 3, indexes)
    assert await s.search("parts", [1.0, 0.0, 0.0], must={"org_id": "a"}) == []
    await s.upsert("parts", "1", [1.0, 0.0, 0.0], {"org_id": "a", "model": "m1"})
    await s.upsert("parts", "2", [0.0, 1.0, 0.0], {"org_id": "a", "model": "m2"})
    await s.upsert("parts", "3", [1.0, 0.0, 0.0], {"org_id": "b", "model": "m1"})
    by_org = await s.search("parts", [0.6, 0.8, 0.0], must={"org_id": "a"}, limit=5)
    assert [h.id for h in by_org] == [point_id("2"), point_id("1")]
    exact = await s.search("parts", [0.6, 0.8, 0.0], must={"org_id": "a", "model": "m1"}, limit=5)
    assert [h.id for h in exact] == [point_id("1")]
    await s.aclose()


async def test_a_collection_without_keyword_fields() -> None:
    s = VectorStore.open(QdrantSettings(collection_prefix="q"))
    await s.ensure_collection("plain", 3)
    assert await s.search("plain", [1.0, 0.0, 0.0], must={}) == []
    await s.upsert("plain", "1", [1.0, 0.0, 0.0], {"n": 1})
    assert [h.payload for h in await s.search("plain", [1.0, 0.0, 0.0], must={"n": 1})] == [
        {"n": 1}
    ]
    await s.aclose()
