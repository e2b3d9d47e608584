"""Anthropic's Messages API behind the OpenAI-shaped ``ProviderClient`` interface.

Invariants (those of ``base.py``, plus): the caller's body is translated by the pure
``gateway.policy.anthropic`` and the answer translated back, so the caller only ever sees OpenAI
JSON and OpenAI SSE; errors keep Anthropic's own error object (``UpstreamError``, through
``upstream_error``); HTTP goes through ``gateway.clients.upstream_http.UpstreamHTTP``, whose
client lives from ``open`` to ``aclose`` on the worker's loop.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec

from gateway.clients.providers.base import ProviderClient, UpstreamStream
from gateway.clients.upstream_http import UpstreamHTTP
from gateway.domain import ChatRequest, TokenUsage, UpstreamReply
from gateway.policy.anthropic import (
    AnthropicUsage,
    StreamTranslator,
    to_anthropic_request,
    to_openai_response,
)
from gateway.policy.json_body import decode_json
from gateway.policy.sse import SSESplitter, event_data
from gateway.settings import ProviderSettings
from shared.errors import UpstreamError

__all__ = ["ANTHROPIC_VERSION", "AnthropicProvider", "AnthropicStream", "token_usage"]

ANTHROPIC_VERSION = "2023-06-01"
_decode = msgspec.json.Decoder(dict[str, Any]).decode
_JSON = {"content-type": "application/json"}
_STREAM = {"content-type": "application/json", "accept": "text/event-stream"}


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
        self.http = UpstreamHTTP(
            settings,
            {
                "x-api-key": settings.api_key.get_secret_value(),
                "anthropic-version": ANTHROPIC_VERSION,
            },
        )
        self._url = httpx.URL(settings.base_url.rstrip("/").removesuffix("/v1") + "/v1/messages")

    async def open(self) -> None:
        await self.http.open()

    async def aclose(self) -> None:
        await self.http.aclose()

    def _body(self, request: ChatRequest, *, stream: bool) -> bytes:
        # the raw body was only partly decoded at intake: 1e400 or deep nesting may be in it
        fields = request.fields if request.fields is not None else decode_json(_decode, request.raw)
        body = to_anthropic_request(fields, model=request.model)
        body["stream"] = stream
        return msgspec.json.encode(body)

    async def complete(self, request: ChatRequest) -> UpstreamReply:
        response = await self.http.post(self._url, self._body(request, stream=False), _JSON)
        try:
            completion, usage = to_openai_response(_decode(response.content))
        except (msgspec.DecodeError, AttributeError, TypeError, ValueError) as exc:
            raise UpstreamError(
                f"{self.name} sent an answer that is not a Messages response: {exc}",
                provider=self.name,
            ) from exc
        return UpstreamReply(
            response.status_code,
            msgspec.json.encode(completion),
            "application/json",
            model=str(completion["model"]),
            usage=token_usage(usage),
        )

    async def open_stream(self, request: ChatRequest) -> UpstreamStream:
        response = await self.http.open_stream(self._url, self._body(request, stream=True), _STREAM)
        return AnthropicStream(self.http, response, include_usage=request.client_wants_usage)


class AnthropicStream(UpstreamStream):
    """Anthropic events in, OpenAI chunks out, one upstream read at a time."""

    def __init__(
        self, http: UpstreamHTTP, response: httpx.Response, *, include_usage: bool
    ) -> None:
        super().__init__(response.status_code)
        self._http = http
        self._response = response
        self.translator = StreamTranslator(include_usage=include_usage)

    async def chunks(self) -> AsyncIterator[bytes]:
        splitter = SSESplitter()
        async for data in self._http.iter_bytes(self._response):
            if not self.observed.first_chunk_ns:
                self.observed.first_chunk_ns = time.perf_counter_ns()
            out = [line for event in splitter.feed(data) for line in self._translate(event)]
            self._observe()
            if out:
                yield b"".join(out)

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
        t, seen = self.translator, self.observed
        seen.model = t.model
        seen.usage = token_usage(t.usage) if t.id else None
        seen.completed = t.completed
        seen.content_parts = t.content_parts
        seen.finish_reason = t.finish_reason

    async def aclose(self) -> None:
        await self._http.release(self._response)
