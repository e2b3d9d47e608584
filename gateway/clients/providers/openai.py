"""OpenAI-compatible upstreams (OpenAI, Groq, Together, Mistral, vLLM, Ollama …) and Azure
OpenAI, which speaks the same wire format at a per-deployment URL with an ``api-key`` header.

Invariants: HTTP goes through ``gateway.clients.upstream_http.UpstreamHTTP`` (httpx over the
aiohttp transport; every failure leaves as an ``UpstreamError``); non-streamed bodies are
forwarded as received (decoded of any content encoding, never re-serialised); a streamed
request gains ``stream_options.include_usage`` so the record gets token counts, and the
usage-only chunk reaches the caller only if the caller asked for it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import msgspec

from gateway.clients.providers.base import ProviderClient, UpstreamStream
from gateway.clients.upstream_http import UpstreamHTTP
from gateway.domain import ChatRequest, UpstreamReply
from gateway.policy.openai_wire import observe_event, read_completion
from gateway.policy.sse import SSESplitter
from gateway.settings import ProviderSettings

__all__ = ["AzureOpenAIProvider", "OpenAIProvider", "OpenAIStream"]

_JSON = {"Content-Type": "application/json"}
_STREAM = {"Content-Type": "application/json", "Accept": "text/event-stream"}
_MAX_CACHED_URLS = 256


class OpenAIProvider(ProviderClient):
    def __init__(self, settings: ProviderSettings) -> None:
        self.name = settings.name
        self.http = UpstreamHTTP(settings, self.auth_headers(settings))
        root = settings.base_url.rstrip("/")
        self._url = httpx.URL(root + "/chat/completions")
        self._embeddings_url = httpx.URL(root + "/embeddings")
        self._models_url = httpx.URL(root + "/models")

    @staticmethod
    def auth_headers(settings: ProviderSettings) -> dict[str, str]:
        return {"Authorization": f"Bearer {settings.api_key.get_secret_value()}"}

    def url_for(self, model: str) -> httpx.URL:
        return self._url

    def embeddings_url_for(self, model: str) -> httpx.URL:
        return self._embeddings_url

    async def embed(self, request: ChatRequest) -> UpstreamReply:
        return await self._reply(self.embeddings_url_for(request.model), request.raw)

    async def list_models(self) -> list[str]:
        listed = msgspec.json.decode((await self.http.get(self._models_url)).content, type=_Models)
        return [m.id for m in listed.data]

    async def open(self) -> None:
        await self.http.open()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def complete(self, request: ChatRequest) -> UpstreamReply:
        return await self._reply(self.url_for(request.model), request.raw)

    async def _reply(self, url: httpx.URL, raw: bytes) -> UpstreamReply:
        """A whole answer (chat completion or embeddings list), forwarded as received."""
        response = await self.http.post(url, raw, _JSON)
        body = response.content
        model, usage = read_completion(body)
        content_type = response.headers.get("content-type", "application/json")
        return UpstreamReply(response.status_code, body, content_type, model=model, usage=usage)

    async def open_stream(self, request: ChatRequest) -> UpstreamStream:
        fields: dict[str, Any] = dict(request.fields or msgspec.json.decode(request.raw))
        options = fields.get("stream_options")
        fields["stream_options"] = {
            **(options if isinstance(options, dict) else {}),
            "include_usage": True,
        }
        response = await self.http.open_stream(
            self.url_for(request.model), msgspec.json.encode(fields), _STREAM
        )
        return OpenAIStream(self.http, response, forward_usage_chunk=request.client_wants_usage)


class AzureOpenAIProvider(OpenAIProvider):
    """``{base_url}/openai/deployments/{deployment}/chat/completions?api-version=…``, keyed by
    an ``api-key`` header. The deployment is ``settings.deployments[model]`` or the model."""

    def __init__(self, settings: ProviderSettings) -> None:
        super().__init__(settings)
        self._root = settings.base_url.rstrip("/")
        self._api_version = settings.api_version
        self._deployments = dict(settings.deployments)
        self._urls: dict[str, httpx.URL] = {}

    @staticmethod
    def auth_headers(settings: ProviderSettings) -> dict[str, str]:
        return {"api-key": settings.api_key.get_secret_value()}

    def url_for(self, model: str) -> httpx.URL:
        return self._deployment_url(model, "chat/completions")

    def embeddings_url_for(self, model: str) -> httpx.URL:
        return self._deployment_url(model, "embeddings")

    async def list_models(self) -> list[str]:
        return list(self._deployments)

    def _deployment_url(self, model: str, operation: str) -> httpx.URL:
        url = self._urls.get(f"{operation} {model}")
        if url is None:
            deployment = quote(self._deployments.get(model, model), safe="")
            url = httpx.URL(
                f"{self._root}/openai/deployments/{deployment}/{operation}",
                params={"api-version": self._api_version},
            )
            if len(self._urls) < _MAX_CACHED_URLS:  # model names come from callers: bounded
                self._urls[f"{operation} {model}"] = url
        return url


class _Model(msgspec.Struct):
    id: str


class _Models(msgspec.Struct):
    data: list[_Model]


class OpenAIStream(UpstreamStream):
    def __init__(
        self, http: UpstreamHTTP, response: httpx.Response, *, forward_usage_chunk: bool
    ) -> None:
        super().__init__(response.status_code)
        self._http = http
        self._response = response
        self._forward_usage_chunk = forward_usage_chunk

    async def chunks(self) -> AsyncIterator[bytes]:
        """Each upstream read, minus a usage-only chunk the caller did not ask for."""
        splitter, seen = SSESplitter(), self.observed
        async for data in self._http.iter_bytes(self._response):
            if not seen.first_chunk_ns:
                seen.first_chunk_ns = time.perf_counter_ns()
            events = splitter.feed(data)
            keep = [e for e in events if observe_event(seen, e, self._forward_usage_chunk)]
            if len(keep) == 1:
                yield keep[0]
            elif keep:
                yield b"".join(keep)
        if splitter.pending:
            yield splitter.pending

    async def aclose(self) -> None:
        await self._http.release(self._response)
