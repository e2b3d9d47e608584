"""Qdrant, for every collection of vectors the gateway keeps (the semantic cache, the
firewall's verdict cache): one client per worker, one way to create a collection, search, write
and prune it, and one place where qdrant-client's exceptions become ours.

Invariants:
- A Qdrant server when ``QdrantSettings.url`` is set; otherwise qdrant-client's local mode in
  this process (in memory, or in ``path``). Local mode is per process: two gateway workers do not
  see each other's vectors, and it searches by brute force on the event loop's thread, so its
  cost grows with the collection (README, "Qdrant").
- Tenant isolation is a ``must`` filter on an indexed payload field (``tenant_field``), marked
  ``is_tenant`` so a server co-locates each tenant's points; it is never left to the vectors.
- Every call has a deadline; any failure is ``VectorStoreUnavailableError`` and the caller fails
  open.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from qdrant_client import AsyncQdrantClient, models

from shared.errors import VectorStoreUnavailableError
from shared.settings import QdrantSettings

__all__ = ["Hit", "PayloadIndex", "VectorStore", "point_id"]

log = logging.getLogger(__name__)

Scalar = str | int | bool


@dataclass(frozen=True, slots=True)
class PayloadIndex:
    """A payload field searched by filter. ``tenant``: the field that partitions the
    collection by org (``is_tenant`` on servers that support it)."""

    field: str
    kind: Literal["keyword", "integer", "float", "bool"] = "keyword"
    tenant: bool = False


@dataclass(frozen=True, slots=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any]


def point_id(key: str) -> str:
    """A stable point id from any string key (Qdrant ids are UUIDs or unsigned ints), so writing
    the same entry twice overwrites it instead of adding a near-duplicate."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, key))


def _schema(index: PayloadIndex) -> Any:
    if index.kind == "keyword":
        return models.KeywordIndexParams(
            type=models.KeywordIndexType.KEYWORD, is_tenant=index.tenant
        )
    return {
        "integer": models.PayloadSchemaType.INTEGER,
        "float": models.PayloadSchemaType.FLOAT,
        "bool": models.PayloadSchemaType.BOOL,
    }[index.kind]


def _filter(
    must: Mapping[str, Scalar], at_least: Mapping[str, float] | None = None
) -> models.Filter:
    conditions: list[Any] = [
        models.FieldCondition(key=k, match=models.MatchValue(value=v)) for k, v in must.items()
    ]
    conditions += [
        models.FieldCondition(key=k, range=models.Range(gte=v)) for k, v in (at_least or {}).items()
    ]
    return models.Filter(must=conditions)


class VectorStore:
    """One worker's handle on Qdrant; collection names are ``<prefix>_<name>``."""

    def __init__(self, client: AsyncQdrantClient, settings: QdrantSettings) -> None:
        self.client = client
        self.settings = settings
        self.local = not settings.url

    @classmethod
    def open(cls, settings: QdrantSettings) -> VectorStore:
        if settings.url:
            client = AsyncQdrantClient(
                url=settings.url,
                api_key=settings.api_key or None,
                timeout=max(1, round(settings.timeout_s)),
                check_compatibility=False,  # no version probe at start-up: the server may be late
            )
        else:
            client = AsyncQdrantClient(
                location=None if settings.path else ":memory:", path=settings.path or None
            )
        return cls(client, settings)

    def collection(self, name: str) -> str:
        return f"{self.settings.collection_prefix}_{name}"

    async def _call(self, what: str, coro: Any) -> Any:
        try:
            return await asyncio.wait_for(coro, self.settings.timeout_s)
        except TimeoutError as exc:
            raise VectorStoreUnavailableError(
                f"qdrant {what}: no answer in {self.settings.timeout_s}s"
            ) from exc
        except VectorStoreUnavailableError:
            raise
        except Exception as exc:  # qdrant-client raises transport-specific types (httpx, grpc)
            raise VectorStoreUnavailableError(f"qdrant {what}: {exc}") from exc

    async def ensure_collection(
        self, name: str, dimensions: int, indexes: Sequence[PayloadIndex] = ()
    ) -> str:
        """Create the collection and its payload indexes unless they exist; safe to run from
        every worker at once (a concurrent creator's "already exists" is success)."""
        full = self.collection(name)
        if not await self._call("collection_exists", self.client.collection_exists(full)):
            try:
                await self._call(
                    "create_collection",
                    self.client.create_collection(
                        full,
                        vectors_config=models.VectorParams(
                            size=dimensions, distance=models.Distance.COSINE
                        ),
                    ),
                )
            except VectorStoreUnavailableError as exc:
                if "already exists" not in str(exc):
                    raise
        if self.local:
            return full  # local mode searches by brute force: payload indexes do nothing there
        for index in indexes:
            await self._call(
                "create_payload_index",
                self.client.create_payload_index(full, index.field, field_schema=_schema(index)),
            )
        return full

    async def search(
        self,
        name: str,
        vector: Sequence[float],
        *,
        must: Mapping[str, Scalar],
        at_least: Mapping[str, float] | None = None,
        limit: int = 1,
        score_threshold: float | None = None,
    ) -> list[Hit]:
        """Nearest points whose payload matches every ``must`` value (and every ``at_least``
        lower bound), best first."""
        response = await self._call(
            "query_points",
            self.client.query_points(
                self.collection(name),
                query=list(vector),
                query_filter=_filter(must, at_least),
                limit=limit,
                score_threshold=score_threshold,
                with_payload=True,
            ),
        )
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in response.points]

    async def payload(self, name: str, key: str) -> dict[str, Any] | None:
        """The payload of the point written under ``key``, if there is one (no vector math:
        an exact repeat is found without embedding it)."""
        points = await self._call(
            "retrieve",
            self.client.retrieve(self.collection(name), [point_id(key)], with_payload=True),
        )
        return dict(points[0].payload or {}) if points else None

    async def upsert(
        self, name: str, key: str, vector: Sequence[float], payload: Mapping[str, Any]
    ) -> None:
        point = models.PointStruct(id=point_id(key), vector=list(vector), payload=dict(payload))
        await self._call(
            "upsert", self.client.upsert(self.collection(name), points=[point], wait=False)
        )

    async def delete_below(self, name: str, field: str, value: float) -> None:
        """Delete every point whose numeric ``field`` is below ``value`` (expiry by created-at:
        Qdrant has no TTL)."""
        selector = models.FilterSelector(
            filter=models.Filter(
                must=[models.FieldCondition(key=field, range=models.Range(lt=value))]
            )
        )
        await self._call("delete", self.client.delete(self.collection(name), selector))

    async def aclose(self) -> None:
        try:
            await self.client.close()
        except Exception as exc:  # noqa: BLE001 - closing must not mask the shutdown
            log.warning("closing qdrant client: %s", exc)
