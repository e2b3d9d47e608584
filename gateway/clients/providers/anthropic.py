"""Anthropic's Messages API behind the OpenAI-shaped ``ProviderClient`` interface.

Invariants (those of ``base.py``, plus): the caller's body is translated by the pure
``gateway.policy.anthropic`` and the answer translated back, so the caller only ever sees OpenAI
JSON and OpenAI SSE; errors keep Anthropic's own error object in ``details`` (through
``upstream_error``); the aiohttp session lives from ``open`` to ``aclose`` on the worker's loop.
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
    TokenUsage,
    UpstreamReply,
    UpstreamStream,
)
from gateway.clients.providers.sse import SSESplitter, event_data
from gateway.policy.anthropic import (
    AnthropicUsage,
    StreamTranslator,
    to_anthropic_request,
    to_openai_response,
)
from gateway.policy.upstream_errors import upstream_error
from gateway.settings import ProviderSettings
from shared.errors import GatewayTimeoutError, ProviderError

__all__ = ["ANTHROPIC_VERSION", "AnthropicProvider", "AnthropicStream", "token_usage"]

ANTHROPIC_VERSION = "2023-06-01"
_decode = msgspec.json.Decoder(dict[str, Any]).decode


def token_usage(usage: AnthropicUsage) -> TokenUsage:
    return TokenUsage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        cached_prompt_tokens=usage.cached_prompt_tokens,
    )


class AnthropicProvider(ProviderClient):
    """``settings.base_url`` is the API root, e.g. ``https://api.anthropic.com``."""

    def __init__(self, settings: ProviderSettings) -> None:
        self.name = settings.name
        self._settings = settings
        self._url = settings.base_url.rstrip("/").removesuffix("/v1") + "/v1/messages"
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        s = self._settings
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=s.max_connections, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=s.connect_timeout_s, sock_read=s.timeout_s
            ),
            headers={
                "x-api-key": s.api_key.get_secret_value(),
                "anthropic-version": ANTHROPIC_VERSION,
                "content-type": "application/json",
            },
        )

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("AnthropicProvider.open() was not awaited at start-up")
        return self._session

    def timeout_error(self) -> GatewayTimeoutError:
        return GatewayTimeoutError(
            f"{self.name} did not answer within {self._settings.timeout_s:g} s",
            details={"provider": self.name},
        )

    def failure(self, exc: BaseException) -> ProviderError:
        return ProviderError(
            f"{self.name} could not be reached: {type(exc).__name__}: {exc}",
            details={"provider": self.name},
        )

    def _body(self, request: ChatRequest, *, stream: bool) -> bytes:
        fields = request.fields if request.fields is not None else _decode(request.raw)
        body = to_anthropic_request(fields, model=request.model)
        body["stream"] = stream
        return msgspec.json.encode(body)

    async def complete(self, request: ChatRequest) -> UpstreamReply:
        data = self._body(request, stream=False)
        try:
            async with (
                asyncio.timeout(self._settings.timeout_s),
                self.session.post(self._url, data=data) as response,
            ):
                body = await response.read()
                status = response.status
        except TimeoutError as exc:
            raise self.timeout_error() from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise self.failure(exc) from exc
        if status >= 400:
            raise upstream_error(self.name, status, body)
        try:
            completion, usage = to_openai_response(_decode(body))
        except (msgspec.DecodeError, AttributeError, TypeError, ValueError) as exc:
            raise ProviderError(
                f"{self.name} sent an answer that is not a Messages response: {exc}",
                details={"provider": self.name},
            ) from exc
        return UpstreamReply(
            status,
            msgspec.json.encode(completion),
            "application/json",
            model=str(completion["model"]),
            usage=token_usage(usage),
        )

    async def open_stream(self, request: ChatRequest) -> UpstreamStream:
        data = self._body(request, stream=True)
        try:
            response = await self.session.post(
                self._url, data=data, headers={"accept": "text/event-stream"}
            )
            if response.status >= 400:
                async with response:
                    body = await response.read()
                raise upstream_error(self.name, response.status, body)
        except TimeoutError as exc:
            raise self.timeout_error() from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise self.failure(exc) from exc
        return AnthropicStream(self, response, include_usage=request.client_wants_usage)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class AnthropicStream(UpstreamStream):
    """Anthropic events in, OpenAI chunks out, one upstream read at a time."""

    def __init__(
        self,
        provider: AnthropicProvider,
        response: aiohttp.ClientResponse,
        *,
        include_usage: bool,
    ) -> None:
        super().__init__(response.status)
        self._provider = provider
        self._response = response
        self.translator = StreamTranslator(include_usage=include_usage)

    async def chunks(self) -> AsyncIterator[bytes]:
        splitter = SSESplitter()
        try:
            async for data in self._response.content.iter_any():
                if not self.first_chunk_ns:
                    self.first_chunk_ns = time.perf_counter_ns()
                out = [line for event in splitter.feed(data) for line in self._translate(event)]
                self._observe()
                if out:
                    yield b"".join(out)
        except TimeoutError as exc:
            raise self._provider.timeout_error() from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise self._provider.failure(exc) from exc

    def _translate(self, event: bytes) -> list[bytes]:
        payload = event_data(event)
        if not payload:
            return []
        try:
            data = _decode(payload)
        except msgspec.DecodeError:
            return []  # not JSON: nothing an OpenAI client could use
        return self.translator.feed(str(data.get("type", "")), data)

    def _observe(self) -> None:
        t = self.translator
        self.model = t.model
        self.usage = token_usage(t.usage) if t.id else None
        self.completed = t.completed
        self.content_parts = t.content_parts
        self.finish_reason = t.finish_reason

    async def aclose(self) -> None:
        if self.completed:
            self._response.release()
        else:
            self._response.close()
