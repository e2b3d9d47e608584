"""Every error a caller sees is ``{"error": {"code", "message", ...}}`` (docs/architecture.md §5).

``render_error`` is the one renderer of a Litestar response and ``send_error`` of a plain ASGI
one (the guard's refusals; the proxied endpoints' last resort); the handlers below catch what
escapes a Litestar route (its own 404/405, anything unexpected) so that nothing a client sends
produces a 500 or a traceback.
The unexpected becomes a logged 502 PROVIDER_ERROR: the caller could not have caused it, and
"upstream of you failed, retry" is the honest advice.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.types import ExceptionHandlersMap, Send

from gateway.asgi import send_whole, whole_headers
from shared.errors import (
    BadRequestError,
    ClientError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    ProviderError,
)

__all__ = ["EXCEPTION_HANDLERS", "error_body", "render_error", "send_error", "unexpected_error"]

log = logging.getLogger(__name__)


def error_body(exc: ClientError, request_id: str = "") -> bytes:
    body: dict[str, Any] = exc.body()
    if request_id:
        body["error"]["request_id"] = request_id
    return msgspec.json.encode(body)


async def send_error(send: Send, exc: ClientError, request_id: str = "") -> None:
    body = error_body(exc, request_id)
    headers = whole_headers("application/json", body, exc.headers)
    await send_whole(send, exc.status_code, headers, body)


def render_error(
    exc: ClientError, request_id: str = "", headers: dict[str, str] | None = None
) -> Response[bytes]:
    return Response(
        content=error_body(exc, request_id),
        status_code=exc.status_code,
        media_type="application/json",
        headers={**exc.headers, **(headers or {})},
    )


def unexpected_error(request_id: str = "") -> ProviderError:
    said = "the gateway failed while handling this request"
    return ProviderError(f"{said}; request id {request_id}" if request_id else said)


def _client_error(_: Request[Any, Any, Any], exc: ClientError) -> Response[bytes]:
    return render_error(exc)


_LITESTAR_CODES: dict[int, type[ClientError]] = {
    404: NotFoundError,
    405: MethodNotAllowedError,
    413: PayloadTooLargeError,
}


def _http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    """Litestar's own errors (unknown path, wrong method, body too large, a malformed body):
    the code of the error table for their status; a 5xx of theirs is the unexpected 502."""
    if exc.status_code >= 500:
        return _unexpected(request, exc)
    kind = _LITESTAR_CODES.get(exc.status_code, BadRequestError)
    error = kind(str(exc.detail))
    response = render_error(error, headers=dict(exc.headers or {}))
    if kind is BadRequestError:
        response.status_code = exc.status_code
    return response


def _undecodable(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """What msgspec raises, instead of a ``DecodeError``, while litestar parses a handler's JSON
    body: ``RecursionError`` past ~1,000 levels of nesting, ``UnicodeDecodeError`` for bytes
    that are not UTF-8 inside a string. The caller sent that; our own decoding maps the same
    two in ``gateway.policy.json_body``."""
    log.info("undecodable body on %s %s: %s", request.method, request.url.path, type(exc).__name__)
    said = "nested too deeply" if isinstance(exc, RecursionError) else "not valid UTF-8"
    return render_error(BadRequestError(f"request body is {said}"))


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.error(
        "unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path, exc_info=exc
    )
    return render_error(unexpected_error())


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    ClientError: _client_error,
    HTTPException: _http_exception,
    RecursionError: _undecodable,
    UnicodeDecodeError: _undecodable,
    Exception: _unexpected,
}
