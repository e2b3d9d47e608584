"""The one interface every provider adapter implements, so stages never see a wire format.

Invariants: an adapter turns every failure of its upstream into a ``shared.errors.UpstreamError``
(internal; dispatch maps the one that ends it to the caller's ``ClientError``) with the
provider's own error preserved; nothing else escapes ``complete``/``open_stream``/``chunks``
(but a ``BadRequestError`` for a request the adapter itself cannot send). A stream that was
opened must be closed (``aclose``) whether or not it was read to the end.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator

from gateway.domain import ChatRequest, StreamObservation, UpstreamReply
from shared.errors import BadRequestError

__all__ = ["ProviderClient", "UpstreamStream"]


class UpstreamStream(ABC):
    """An open SSE stream; iterate ``chunks()`` to get the bytes to forward, as they arrive.

    While it is read it fills in ``observed`` (a plain value the request context keeps): model,
    usage, the time of the first event, the assembled text and whether the upstream ended the
    stream properly. The stream itself stays with whoever relays it, never on the context.
    """

    def __init__(self, status_code: int = 200) -> None:
        self.observed = StreamObservation(status_code)

    @property
    def status_code(self) -> int:
        return self.observed.status_code

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
