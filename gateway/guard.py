"""The guard: what every request meets before a route handler reads a byte of its body.

Invariants (each an answer to a denial-of-service found in issue 10):
- Every body is capped: ``max_body_bytes`` for chat, ``admin_max_body_bytes`` for everything
  else. A declared ``Content-Length`` over the cap is refused before reading (for chat by the
  intake stage, after auth, so the 413 is recorded); a body that grows past it (chunked, or
  lying about its length) is cut at the cap with 413.
- Every body is read within ``body_read_timeout_s`` of its first read, or the request is refused
  with 408, so a client that sends headers and a trickle of bytes cannot hold a worker slot.
  The deadline is a ``shared.deadlines.Deadline`` (one timer per worker, not one per read).
- ``/admin`` and ``/console/api`` authenticate from the ``Authorization`` header before the
  handler runs (litestar parses a JSON body while resolving the handler's arguments, so a check
  inside the handler would come after a 256 MiB parse).
- At most ``max_in_flight_per_client`` requests per client are in flight per worker: a client
  is its key (the SHA-256 of the bearer token when it has a key's shape) or else its address.
  Beyond that: 429 at once, without reading the body. ``/health`` is never counted, so liveness
  answers while one client holds its share of slow connections.
- A route may leave a ``finish`` callback in the scope (``FINISH``); the guard calls it once the
  response is over, whatever happened while the response was built or sent, so a chat request's
  record is published even when building its response failed.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from litestar.enums import ScopeType
from redis.exceptions import RedisError

from gateway.errors import send_error
from gateway.pipeline.auth import bearer_token
from gateway.policy.keys import looks_like_key
from shared.deadlines import Deadline
from shared.errors import (
    ClientError,
    InvalidApiKeyError,
    PayloadTooLargeError,
    ProviderError,
    RateLimitExceededError,
    RequestTimeoutError,
)

if TYPE_CHECKING:
    from collections import defaultdict

    from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send

    from gateway.clients.key_auth import KeyAuthenticator
    from gateway.services import Opened
    from gateway.settings import GatewaySettings
    from shared.metrics import CounterSet

__all__ = ["FINISH", "Guard", "GuardDeps", "route_class"]

log = logging.getLogger(__name__)

FINISH = "floopy.finish"
"""Scope key of a route's ``finish`` callback (called once, after the response)."""

_PUBLIC = ("/health",)


@dataclass(frozen=True, slots=True)
class GuardDeps:
    settings: GatewaySettings
    """The caps, the read timeout and the in-flight limit."""
    authenticator: KeyAuthenticator
    in_flight: defaultdict[str, int]
    """Requests in flight per client, per worker, across routes."""
    counters: CounterSet
    """``refused_in_flight``."""


def route_class(path: str) -> str:
    """``chat``, ``admin``, ``console_api``, ``public`` (liveness) or ``other`` (pages, schema)."""
    if path.startswith("/v1/"):
        return "chat"
    if path == "/admin" or path.startswith("/admin/"):
        return "admin"
    if path.startswith("/console/api"):
        return "console_api"
    if path in _PUBLIC:
        return "public"
    return "other"


def _client_id(scope: Scope, token: str | None) -> str:
    if token is not None and looks_like_key(token):
        return "key:" + hashlib.sha256(token.encode()).hexdigest()[:24]
    client = scope.get("client")
    return "ip:" + (client[0] if client else "?")


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return ""


class _BodyGate:
    """Wraps ``receive``: counts body bytes against the cap and the read deadline."""

    def __init__(self, receive: Receive, limit: int, timeout_s: float) -> None:
        self._receive = receive
        self._limit = limit
        self._timeout_s = timeout_s
        self._deadline = 0.0
        self._size = 0
        self._done = False

    async def __call__(self) -> ReceiveMessage:
        if self._done:
            return await self._receive()
        if not self._deadline:
            self._deadline = time.monotonic() + self._timeout_s
        try:
            with Deadline(self._deadline):
                message = await self._receive()
        except TimeoutError:
            raise RequestTimeoutError(
                f"the request body was not received within {self._timeout_s:g}s"
            ) from None
        if message["type"] == "http.request":
            self._size += len(message.get("body", b""))
            if self._size > self._limit:
                raise PayloadTooLargeError(f"request body is over the limit of {self._limit} bytes")
            self._done = not message.get("more_body", False)
        else:
            self._done = True
        return message


class Guard:
    """In front of the whole app (the proxied routes and Litestar's), so it meets every HTTP
    request, routed or not; the in-flight counts live in ``GuardDeps`` (one per worker)."""

    def __init__(self, app: ASGIApp, opened: Opened[GuardDeps]) -> None:
        self._app = app
        self._opened = opened

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self._app(scope, receive, send)
            return
        kind = route_class(scope["path"])
        if kind == "public":
            await self._app(scope, receive, send)
            return
        deps = self._opened.value
        settings = deps.settings
        limit = settings.max_body_bytes if kind == "chat" else settings.admin_max_body_bytes
        token = bearer_token(_header(scope, b"authorization"))
        client = _client_id(scope, token)
        try:
            declared = _header(scope, b"content-length")
            # chat: the intake stage refuses it after auth, so the 413 has a record
            if kind != "chat" and declared.isdigit() and int(declared) > limit:
                raise PayloadTooLargeError(f"request body is over the limit of {limit} bytes")
            if deps.in_flight[client] >= settings.max_in_flight_per_client:
                deps.counters.inc("refused_in_flight")
                raise RateLimitExceededError(
                    "too many requests in flight for this client; retry shortly",
                    headers={"Retry-After": "1"},
                )
            if kind in ("admin", "console_api"):
                await _authenticate(deps.authenticator, token)
        except ClientError as exc:
            await send_error(send, exc)
            return
        deps.in_flight[client] += 1
        try:
            gate = _BodyGate(receive, limit, settings.body_read_timeout_s)
            await self._app(scope, gate, send)
        finally:
            deps.in_flight[client] -= 1
            if not deps.in_flight[client]:
                del deps.in_flight[client]
            _finish(scope)


async def _authenticate(authenticator: KeyAuthenticator, token: str | None) -> None:
    """Raises the 401/502 the handler would; the handler authenticates again from the cache."""
    if token is None:
        raise InvalidApiKeyError("missing API key: send Authorization: Bearer <Floopy key>")
    try:
        await authenticator.authenticate(token)
    except (RedisError, OSError) as exc:
        log.warning("key store unreachable while authenticating (%s: %s)", type(exc).__name__, exc)
        raise ProviderError("the key store is unreachable; retry shortly") from exc


def _finish(scope: Scope) -> None:
    state: dict[str, Any] = scope.get("state") or {}
    finish: Callable[[], None] | None = state.pop(FINISH, None)
    if finish is not None:
        finish()
