"""The one way the gateway talks HTTP to providers: httpx requests sent through an
``httpx_aiohttp.AiohttpTransport`` per provider.

Why httpx over the aiohttp transport: the product's design fixes httpx as the upstream client, and
httpx's default transport collapses under concurrency on our machines while the aiohttp transport
holds up (docs/architecture.md §8). Adapters (``gateway.clients.providers``) use ``UpstreamHTTP``
only, so a transport change stays in this file.

Why no ``httpx.AsyncClient``: requests go straight to the transport (httpx's transport API).
Everything the client adds on top was either unused (redirects, auth flows, event hooks, base
URLs) or unwanted (a cookie jar shared by every caller), and its per-request merging of
headers, cookies and URLs, auth generator and stream wrapper cost ≈30% of the CPU of an
upstream call (``python -m bench.upstream_call``: 628-712 against 454-500 µs per call). What
it did that we need is done here once: the default headers (those of an ``httpx.AsyncClient``,
then the provider's key) and the timeouts (the request's ``timeout`` extension, which the
transport reads).

Invariants:
- The transport is created in ``open`` (on the worker's event loop, at start-up) and closed in
  ``aclose``; one per provider, so each has its own connection limit and timeouts.
- Timeouts: connect and pool waits use ``connect_timeout_s``; each read uses ``timeout_s`` (a
  stream that keeps sending is never cut); a whole non-streamed answer must arrive within
  ``timeout_s`` as well (``shared.deadlines``: ``asyncio.timeout``'s meaning, one timer per
  worker).
- A response is closed on every path that does not hand it to the caller (its connection goes
  back to the pool, or is dropped when its body was not read to the end).
- A call leaves no reference cycle: all it made is freed by reference counting when the
  request ends. (Through ``httpx.AsyncClient`` a response and its stream wrapper pointed at
  each other, and the cyclic collector's full collections of what hung off them stalled a worker
  for 100-200 ms; a test counts what a call leaves to the collector.)
- Every failure leaves as a ``shared.errors.UpstreamError`` (internal: dispatch decides on it
  and makes the caller's error once): a timeout marked ``timed_out``, anything else (refused,
  reset, dropped) without a status, an error status through ``upstream_error`` with the
  provider's own error kept. The transport maps aiohttp's
  exceptions onto httpx's, and maps a dropped connection onto ``ConnectTimeout``; ``is_timeout``
  looks at the original exception so a drop is not reported as a timeout.
- The provider's key travels in this object's headers only: never in a URL, an exception
  message or a log line. Upstream cookies are never kept: one transport serves every caller.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Mapping
from functools import partial

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from gateway.policy.upstream_errors import upstream_error
from gateway.settings import ProviderSettings
from shared.deadlines import within
from shared.errors import UpstreamError

__all__ = ["UpstreamHTTP", "is_timeout"]

_KEEPALIVE_S = 60.0
_CLIENT_HEADERS = {
    "accept": "*/*",
    "accept-encoding": "gzip, deflate",
    "connection": "keep-alive",
    "user-agent": f"python-httpx/{httpx.__version__}",
}
"""What an ``httpx.AsyncClient`` would send by default (with Debian's httpx: no brotli, no
zstd); the provider's own headers go on top."""
_TRANSPORT_ERRORS = (httpx.HTTPError, aiohttp.ClientError, OSError)
"""What a call can raise: httpx's errors, the few aiohttp errors the transport does not map,
and socket errors (``TimeoutError`` among them)."""


def is_timeout(exc: BaseException) -> bool:
    """A real timeout, not a connection the upstream closed (the transport calls both
    ``ConnectTimeout``)."""
    if isinstance(exc, TimeoutError):  # the call's deadline, and aiohttp's own timeouts
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
        self._headers = {**_CLIENT_HEADERS, **_lower(headers)}
        self._timeouts = httpx.Timeout(
            connect=settings.connect_timeout_s,
            read=settings.timeout_s,
            write=settings.timeout_s,
            pool=settings.connect_timeout_s,
        ).as_dict()
        self._transport: AiohttpTransport | None = None

    async def open(self) -> None:
        s = self.settings
        limits = httpx.Limits(
            max_connections=s.max_connections,
            max_keepalive_connections=s.max_connections,
            keepalive_expiry=_KEEPALIVE_S,
        )
        tls = httpx.create_ssl_context(trust_env=False)
        self._transport = AiohttpTransport(
            verify=tls, trust_env=False, client=partial(_session, limits, tls)
        )

    @property
    def transport(self) -> AiohttpTransport:
        if self._transport is None:
            raise RuntimeError(f"provider {self.name}: open() was not awaited at start-up")
        return self._transport

    async def aclose(self) -> None:
        if self._transport is not None:
            await self._transport.aclose()
            self._transport = None

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
        return await self._whole(self._request("POST", url, content, headers))

    async def get(self, url: httpx.URL) -> httpx.Response:
        """A GET with a success status (its body read), or an ``UpstreamError``."""
        return await self._whole(self._request("GET", url))

    def _request(
        self,
        method: str,
        url: httpx.URL,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Request:
        return httpx.Request(
            method,
            url,
            content=content,
            headers={**self._headers, **_lower(headers)} if headers else self._headers,
            extensions={"timeout": self._timeouts},
        )

    async def _whole(self, request: httpx.Request) -> httpx.Response:
        try:
            with within(self.settings.timeout_s):
                response = await self.transport.handle_async_request(request)
                try:
                    await response.aread()
                except BaseException:
                    await self.release(response)
                    raise
        except _TRANSPORT_ERRORS as exc:
            raise self.translate(exc) from exc
        if response.status_code >= 400:
            raise upstream_error(self.name, response.status_code, response.content)
        return response

    async def open_stream(
        self, url: httpx.URL, content: bytes, headers: Mapping[str, str]
    ) -> httpx.Response:
        """The status line of a streamed answer; an error status is read whole and raised.
        The caller must ``release`` the response it gets."""
        try:
            response = await self.transport.handle_async_request(
                self._request("POST", url, content, headers)
            )
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
        await response.aclose()

    async def iter_bytes(self, response: httpx.Response) -> AsyncIterator[bytes]:
        """The (decoded) body as it arrives, each read as soon as it is there."""
        try:
            async for data in response.aiter_bytes():
                yield data
        except _TRANSPORT_ERRORS as exc:
            raise self.translate(exc) from exc


def _session(limits: httpx.Limits, tls: ssl.SSLContext) -> aiohttp.ClientSession:
    """The transport's aiohttp session, as ``httpx_aiohttp`` builds it but without a cookie
    jar: aiohttp's default jar would keep a provider's ``Set-Cookie`` (for a host name) and
    send it on every later caller's request. Called by the transport on its first request, on
    the worker's loop."""
    connector = aiohttp.TCPConnector(
        limit=limits.max_connections or 0, keepalive_timeout=limits.keepalive_expiry, ssl=tls
    )
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    """Header names in lower case, so the provider's and the call's replace the defaults."""
    return {name.lower(): value for name, value in headers.items()}
