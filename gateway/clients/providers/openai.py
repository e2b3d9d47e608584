"""OpenAI-compatible upstream over one aiohttp session per worker.

Why aiohttp and not httpx: DESIGN.md §8, and measured again here (2 cores, wrk at 32
connections, litestar on granian proxying to the fake provider): an ``aiohttp.ClientSession``
proxy served ≈3,200-3,700 req/s against ≈1,650-1,850 req/s for ``httpx.AsyncClient`` over
``httpx_aiohttp.AiohttpTransport`` (and httpx logs every request at INFO). The gateway's target
is 2,000 req/s per worker *with* its own work, so the direct client it is; it stays behind
``ProviderClient``, so nothing else knows.

Invariants: the session is created in ``open`` (on the worker's loop, at start-up) and closed in
``aclose``; non-streamed bodies are forwarded as received; a streamed request gains
``stream_options.include_usage``; every aiohttp failure leaves as a ``ClientError``
(timeouts → 504 GATEWAY_TIMEOUT, anything else → 502 PROVIDER_ERROR).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec

from gateway.clients.providers.base import (
    ChatRequest,
    ProviderClient,
    UpstreamReply,
    UpstreamStream,
)
from gateway.clients.providers.openai_wire import observe_event, read_completion
from gateway.clients.providers.sse import SSESplitter
from gateway.policy.upstream_errors import upstream_error
from gateway.settings import ProviderSettings
from shared.errors import GatewayTimeoutError, ProviderError

__all__ = ["OpenAIProvider", "OpenAIStream"]

_JSON = {"Content-Type": "application/json"}
_STREAM = {"Content-Type": "application/json", "Accept": "text/event-stream"}


class OpenAIProvider(ProviderClient):
    def __init__(self, settings: ProviderSettings) -> None:
        self.name = settings.name
        self._settings = settings
        self._url = settings.base_url.rstrip("/") + "/chat/completions"
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        s = self._settings
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=s.max_connections, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=s.connect_timeout_s, sock_read=s.timeout_s
            ),
            headers={"Authorization": f"Bearer {s.api_key.get_secret_value()}"},
            auto_decompress=False,
        )

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("OpenAIProvider.open() was not awaited at start-up")
        return self._session

    def _timeout(self, exc: BaseException) -> GatewayTimeoutError:
        return GatewayTimeoutError(
            f"{self.name} did not answer within {self._settings.timeout_s:g} s",
            details={"provider": self.name},
        )

    def _failed(self, exc: BaseException) -> ProviderError:
        return ProviderError(
            f"{self.name} could not be reached: {type(exc).__name__}: {exc}",
            details={"provider": self.name},
        )

    async def complete(self, request: ChatRequest) -> UpstreamReply:
        try:
            async with (
                asyncio.timeout(self._settings.timeout_s),
                self.session.post(self._url, data=request.raw, headers=_JSON) as response,
            ):
                body = await response.read()
                status = response.status
                content_type = response.headers.get("Content-Type", "application/json")
        except TimeoutError as exc:
            raise self._timeout(exc) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise self._failed(exc) from exc
        if status >= 400:
            raise upstream_error(self.name, status, body)
        model, usage = read_completion(body)
        return UpstreamReply(status, body, content_type, model=model, usage=usage)

    async def open_stream(self, request: ChatRequest) -> UpstreamStream:
        fields: dict[str, Any] = dict(request.fields or msgspec.json.decode(request.raw))
        options = fields.get("stream_options")
        fields["stream_options"] = {
            **(options if isinstance(options, dict) else {}),
            "include_usage": True,
        }
        try:
            response = await self.session.post(
                self._url, data=msgspec.json.encode(fields), headers=_STREAM
            )
            if response.status >= 400:
                async with response:
                    body = await response.read()
                raise upstream_error(self.name, response.status, body)
        except TimeoutError as exc:
            raise self._timeout(exc) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise self._failed(exc) from exc
        return OpenAIStream(self, response, forward_usage_chunk=request.client_wants_usage)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class OpenAIStream(UpstreamStream):
    def __init__(
        self,
        provider: OpenAIProvider,
        response: aiohttp.ClientResponse,
        *,
        forward_usage_chunk: bool,
    ) -> None:
        super().__init__(response.status)
        self._provider = provider
        self._response = response
        self._forward_usage_chunk = forward_usage_chunk

    async def chunks(self) -> AsyncIterator[bytes]:
        """Each upstream read, minus a usage-only chunk the caller did not ask for."""
        splitter = SSESplitter()
        try:
            async for data in self._response.content.iter_any():
                if not self.first_chunk_ns:
                    self.first_chunk_ns = time.perf_counter_ns()
                events = splitter.feed(data)
                keep = [e for e in events if observe_event(self, e, self._forward_usage_chunk)]
                if len(keep) == 1:
                    yield keep[0]
                elif keep:
                    yield b"".join(keep)
            if splitter.pending:
                yield splitter.pending
        except TimeoutError as exc:
            raise self._provider._timeout(exc) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise self._provider._failed(exc) from exc

    async def aclose(self) -> None:
        if self.completed:
            self._response.release()
        else:
            self._response.close()
