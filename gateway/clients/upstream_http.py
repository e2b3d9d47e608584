"""The one way the gateway talks HTTP to providers: an ``httpx.AsyncClient`` per provider over
``httpx_aiohttp.AiohttpTransport``.

Why httpx over the aiohttp transport: the product's design fixes httpx as the upstream client, and
httpx's default transport collapses under concurrency on our machines while the aiohttp transport
holds up (docs/architecture.md §8). Adapters (``gateway.clients.providers``) use ``UpstreamHTTP``
only, so a transport change stays in this file.

Invariants:
- The client is created in ``open`` (on the worker's event loop, at start-up) and closed in
  ``aclose``; one per provider, so each has its own connection limit and timeouts.
- Timeouts: connect and pool waits use ``connect_timeout_s``; each read uses ``timeout_s`` (a
  stream that keeps sending is never cut); a whole non-streamed answer must arrive within
  ``timeout_s`` as well (``asyncio.timeout``).
- Every failure leaves as a ``shared.errors.UpstreamError`` (internal: dispatch decides on it
  and makes the caller's error once): a timeout marked ``timed_out``, anything else (refused,
  reset, dropped) without a status, an error status through ``upstream_error`` with the
  provider's own error kept. The transport maps aiohttp's
  exceptions onto httpx's, and maps a dropped connection onto ``ConnectTimeout``; ``is_timeout``
  looks at the original exception so a drop is not reported as a timeout.
- The provider's key travels in the client's default headers only: never in a URL, an
  exception message or a log line. httpx's per-request INFO log line is switched off.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Mapping

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from gateway.policy.upstream_errors import upstream_error
from gateway.settings import ProviderSettings
from shared.errors import UpstreamError

__all__ = ["UpstreamHTTP", "is_timeout"]

_KEEPALIVE_S = 60.0
_TRANSPORT_ERRORS = (httpx.HTTPError, aiohttp.ClientError, OSError)
"""What a call can raise: httpx's errors, the few aiohttp errors the transport does not map,
and socket errors (``TimeoutError`` among them)."""


class _NoCookies(httpx.Cookies):
    """Upstream cookies are never kept: one client serves every caller, so a cookie set in an
    answer to one caller must not ride along on another's request. (Parsing ``Set-Cookie`` on
    every answer also cost ≈3% of a worker's CPU.)"""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class _Client(httpx.AsyncClient):
    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        """httpx's constructor sets an empty jar; nothing else may."""


_NO_COOKIES = _NoCookies()
_SPENT = httpx.ByteStream(b"")


def _spend(response: httpx.Response) -> None:
    """Drop the response's link to its spent body stream. httpx's response and its stream
    point at each other, and the aiohttp response hangs off that cycle: ≈40 objects per
    request left to the cyclic GC, whose full collections then stalled a worker for 100-200 ms
    (p99 at 200 req/s went from ≈20 ms to ≈100-250 ms). Without the cycle, all of it is freed
    by reference counting when the request ends."""
    response.stream = _SPENT


def is_timeout(exc: BaseException) -> bool:
    """A real timeout, not a connection the upstream closed (the transport calls both
    ``ConnectTimeout``)."""
    if isinstance(exc, TimeoutError):  # asyncio.timeout, and aiohttp's own timeouts
        return True
    if isinstance(exc, httpx.TimeoutException):
        cause = exc.__cause__
        return cause is None or isinstance(cause, TimeoutError)
    return False


class UpstreamHTTP:
    """One provider's HTTP client and its error translation."""

    def __init__(self, settings: ProviderSettings, headers: Mapping[str, str]) -> None:
        self.name = settings.name
        self.settings = settings
        self._headers = dict(headers)
        self._client: httpx.AsyncClient | None = None

    async def open(self) -> None:
        s = self.settings
        # httpx logs every request at INFO: a log line per proxied request on the hot path.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        limits = httpx.Limits(
            max_connections=s.max_connections,
            max_keepalive_connections=s.max_connections,
            keepalive_expiry=_KEEPALIVE_S,
        )
        self._client = _Client(
            transport=AiohttpTransport(limits=limits, trust_env=False),
            headers=self._headers,
            timeout=httpx.Timeout(
                connect=s.connect_timeout_s,
                read=s.timeout_s,
                write=s.timeout_s,
                pool=s.connect_timeout_s,
            ),
            trust_env=False,
            follow_redirects=False,
        )

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError(f"provider {self.name}: open() was not awaited at start-up")
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def timeout_error(self) -> UpstreamError:
        return UpstreamError(
            f"{self.name} did not answer within {self.settings.timeout_s:g} s",
            provider=self.name,
            timed_out=True,
        )

    def failure(self, exc: BaseException) -> UpstreamError:
        return UpstreamError(
            f"{self.name} could not be reached: {type(exc).__name__}: {exc}", provider=self.name
        )

    def translate(self, exc: BaseException) -> UpstreamError:
        return self.timeout_error() if is_timeout(exc) else self.failure(exc)

    async def post(
        self, url: httpx.URL, content: bytes, headers: Mapping[str, str]
    ) -> httpx.Response:
        """A whole answer with a success status (its body read), or an ``UpstreamError``."""
        return await self._whole(self.client.post(url, content=content, headers=headers))

    async def get(self, url: httpx.URL) -> httpx.Response:
        """A GET with a success status (its body read), or an ``UpstreamError``."""
        return await self._whole(self.client.get(url))

    async def _whole(self, sending: Awaitable[httpx.Response]) -> httpx.Response:
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                response = await sending
        except _TRANSPORT_ERRORS as exc:
            raise self.translate(exc) from exc
        _spend(response)
        if response.status_code >= 400:
            raise upstream_error(self.name, response.status_code, response.content)
        return response

    async def open_stream(
        self, url: httpx.URL, content: bytes, headers: Mapping[str, str]
    ) -> httpx.Response:
        """The status line of a streamed answer; an error status is read whole and raised.
        The caller must ``aclose`` the response it gets."""
        request = self.client.build_request("POST", url, content=content, headers=headers)
        try:
            response = await self.client.send(request, stream=True)
        except _TRANSPORT_ERRORS as exc:
            raise self.translate(exc) from exc
        if response.status_code >= 400:
            try:
                body = await response.aread()
            except _TRANSPORT_ERRORS as exc:
                raise self.translate(exc) from exc
            finally:
                await self.release(response)
            raise upstream_error(self.name, response.status_code, body)
        return response

    async def release(self, response: httpx.Response) -> None:
        """Close a streamed response (its connection goes back to the pool when the body was
        read to the end, and is closed otherwise)."""
        try:
            await response.aclose()
        finally:
            _spend(response)

    async def iter_bytes(self, response: httpx.Response) -> AsyncIterator[bytes]:
        """The (decoded) body as it arrives, each read as soon as it is there."""
        try:
            async for data in response.aiter_bytes():
                yield data
        except _TRANSPORT_ERRORS as exc:
            raise self.translate(exc) from exc
