"""The one interface every provider adapter implements, so stages never see a wire format.

Invariants: an adapter turns every failure of its upstream into a ``shared.errors.ClientError``
(``BadRequestError``, ``ProviderError`` or ``GatewayTimeoutError``) with the provider's own error
preserved in ``details``; nothing else escapes ``complete``/``open_stream``. A stream that was
opened must be closed (``aclose``) whether or not it was read to the end.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec

from shared.errors import BadRequestError

__all__ = ["ChatRequest", "ProviderClient", "TokenUsage", "UpstreamReply", "UpstreamStream"]


@dataclass(frozen=True, slots=True)
class TokenUsage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_prompt_tokens: int = 0


@dataclass(slots=True)
class ChatRequest:
    """A validated chat-completions request: the caller's bytes and what was read of them."""

    raw: bytes
    model: str
    stream: bool = False
    client_wants_usage: bool = False
    """The caller itself set ``stream_options.include_usage``."""
    fields: dict[str, Any] | None = None
    """The decoded body, when a stage needed all of it (streams do, to ask for usage)."""

    def for_model(self, model: str) -> ChatRequest:
        """The same request for another model (a routing target); the body is re-encoded only
        when the model changes."""
        if model == self.model:
            return self
        fields = dict(self.fields if self.fields is not None else msgspec.json.decode(self.raw))
        fields["model"] = model
        return ChatRequest(
            raw=msgspec.json.encode(fields),
            model=model,
            stream=self.stream,
            client_wants_usage=self.client_wants_usage,
            fields=fields,
        )


@dataclass(slots=True)
class UpstreamReply:
    """A complete (non-streamed) successful answer, passed to the caller byte for byte."""

    status_code: int
    body: bytes
    content_type: str
    model: str = ""
    usage: TokenUsage | None = None


class UpstreamStream(ABC):
    """An open SSE stream; iterate ``chunks()`` to get the bytes to forward, as they arrive.

    While it is read it fills in what the record needs: model, usage, the time of the first
    event, the assembled text and whether the upstream ended the stream properly.
    """

    def __init__(self, status_code: int = 200) -> None:
        self.status_code = status_code
        self.model = ""
        self.usage: TokenUsage | None = None
        self.first_chunk_ns = 0
        """``time.perf_counter_ns()`` when the first event arrived (0: none yet)."""
        self.completed = False
        self.content_parts: list[str] = []
        self.finish_reason = ""

    @abstractmethod
    def chunks(self) -> AsyncIterator[bytes]: ...

    @abstractmethod
    async def aclose(self) -> None: ...


class ProviderClient(ABC):
    """One upstream provider; one instance per worker, opened at start-up, closed at shutdown."""

    name: str

    @abstractmethod
    async def open(self) -> None:
        """Create the HTTP client, on the worker's event loop."""

    @abstractmethod
    async def complete(self, request: ChatRequest) -> UpstreamReply: ...

    @abstractmethod
    async def open_stream(self, request: ChatRequest) -> UpstreamStream:
        """Send the request and wait for the status line; errors before the first byte raise."""

    async def embed(self, request: ChatRequest) -> UpstreamReply:
        """``POST /v1/embeddings``; a provider whose API has none says so (400)."""
        raise BadRequestError(
            f"provider {self.name!r} does not serve embeddings (model {request.model!r})"
        )

    async def list_models(self) -> list[str]:
        """The models the upstream itself lists (``GET /models``); empty when it has no such
        list (then the settings' lists are all the gateway knows)."""
        return []

    @abstractmethod
    async def aclose(self) -> None: ...
