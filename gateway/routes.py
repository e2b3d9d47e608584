"""HTTP routes: ``POST /v1/chat/completions`` runs the stages; ``GET /health`` reports the worker.

Invariants: every chat request, whatever its outcome, publishes exactly one record, after the
response is complete (right after the last message of a whole answer; the relay's ``finally``
for streams, so a client that disconnects mid-stream is recorded too; and, should building or
sending the response fail, the guard's after-response hook). The response always carries
``Floopy-Request-Id``, and ``Floopy-Provider``/``Floopy-Model`` once known, as header-safe text.

``GET /health`` is public liveness (status, Redis reachable); its counters are shown only to an
admin key of an operator org (they describe every tenant's traffic through this worker).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from litestar import Request, Response, get
from litestar.di import NamedDependency
from litestar.response.streaming import ASGIStreamingResponse
from redis.exceptions import RedisError

from gateway.asgi import send_whole, whole_headers
from gateway.clients.key_auth import KeyAuthenticator
from gateway.clients.model_catalog import ModelCatalog
from gateway.clients.providers.base import UpstreamStream
from gateway.context import RequestContext
from gateway.errors import error_body, send_error, unexpected_error
from gateway.generation import Generation
from gateway.guard import FINISH
from gateway.metrics import BREAKER_STATE, BREAKER_STATE_VALUES
from gateway.pipeline import auth
from gateway.pipeline.auth import bearer_token
from gateway.pipeline.dispatch import DispatchDeps, relayed
from gateway.pipeline.intake import EMBEDDINGS
from gateway.pipeline.publish import PublishDeps, publish
from gateway.pipeline.run import Stage, chat_stages, dispatcher, embedding_stages, run_stages
from gateway.policy.chat_request import header_text
from gateway.policy.keys import Permission
from gateway.services import Services
from gateway.settings import GatewaySettings
from shared.errors import BadRequestError, ClientError, ForbiddenError, PayloadTooLargeError
from shared.metrics import CONTENT_TYPE_LATEST, render

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Receive, Scope, Send

    from gateway.services import Opened
    from shared.metrics import CounterSet

__all__ = ["Proxy", "health", "metrics", "models", "proxy_endpoints"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Proxy:
    """What the proxied routes use, bound once per worker."""

    chat: tuple[Stage[Any], ...]
    embeddings: tuple[Stage[Any], ...]
    publish: PublishDeps
    dispatcher: DispatchDeps
    """What relays a stream (and counts a cut after its 200 against the provider)."""
    max_body_bytes: int
    counters: CounterSet
    """``unexpected`` and ``records_after_failed_response``."""

    @classmethod
    def of(cls, services: Services) -> Proxy:
        chat = chat_stages(services)
        return cls(
            chat=chat,
            embeddings=embedding_stages(chat),
            publish=PublishDeps(
                services.publisher,
                services.access.usage,
                services.cache,
                services.generation,
                services.settings.record_body_max_bytes,
                services.counters,
                services.background,
            ),
            dispatcher=dispatcher(services),
            max_body_bytes=services.settings.max_body_bytes,
            counters=services.counters,
        )


def _body_reader(receive: Receive, declared: str, limit: int) -> Any:
    """Straight from ASGI ``receive``: the guard's gate, which keeps the read deadline and cuts
    a body that grows past the cap (413). A declared length over the cap is refused here, after
    auth, so that 413 has its record."""

    async def read() -> bytes:
        if declared.isdigit() and int(declared) > limit:
            raise PayloadTooLargeError(f"request body is over the limit of {limit} bytes")
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise BadRequestError("the client disconnected before the request body ended")
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    return read


def _context(scope: Scope, receive: Receive, max_body_bytes: int) -> RequestContext:
    raw = scope["headers"]
    headers: dict[str, str] = {}
    items: list[tuple[str, str]] = []
    floopy: list[tuple[str, str]] = []
    for name, value in raw:
        pair = (name.decode("latin-1").lower(), value.decode("latin-1"))  # as HTTP/1.1 says
        items.append(pair)
        headers.setdefault(*pair)
        if pair[0][:7] == "floopy-":
            floopy.append(pair)
    return RequestContext(
        headers=headers,
        header_items=items,
        floopy_headers=floopy,
        read_body=_body_reader(receive, headers.get("content-length", ""), max_body_bytes),
    )


def _headers(ctx: RequestContext) -> dict[str, str]:
    headers = {**ctx.response_headers, "Floopy-Request-Id": ctx.request_id}
    if ctx.provider_name:
        headers["Floopy-Provider"] = header_text(ctx.provider_name)
    model = header_text(ctx.model_used or ctx.model_requested)
    if model:
        headers["Floopy-Model"] = model
    return headers


def _failed_stage(ctx: RequestContext) -> str:
    failed = [t.name for t in ctx.timings if t.status != "ok"]
    return failed[-1] if failed else ""


def _error_response(ctx: RequestContext, proxy: Proxy, exc: ClientError) -> ASGIApp:
    ctx.error = exc
    ctx.status_code = exc.status_code
    headers = {**exc.headers, **_headers(ctx)}
    ctx.response_body = error_body(exc, ctx.request_id)
    ctx.sent_headers = {**headers, "content-type": "application/json"}
    level = logging.WARNING if exc.status_code >= 500 else logging.DEBUG
    log.log(
        level,
        "request %s failed: %s %s at stage %s: %s",
        ctx.request_id,
        exc.code,
        type(exc).__name__,
        _failed_stage(ctx),
        exc.message,
    )
    return _Whole(ctx, proxy, exc.status_code, "application/json", ctx.response_body, headers)


class _Whole:
    """A whole answer as an ASGI app: status line and headers, the body in one message, then
    the record. (Litestar's ``ASGIResponse`` with a background task did the same for ≈4% more
    of a request's CPU.) A header value that is not latin-1 fails here, before anything is sent
    (``_respond`` answers 502 then)."""

    __slots__ = ("_body", "_ctx", "_headers", "_proxy", "_status")

    def __init__(  # noqa: PLR0917 - one call per kind of answer
        self,
        ctx: RequestContext,
        proxy: Proxy,
        status: int,
        content_type: str,
        body: bytes,
        headers: dict[str, str],
    ) -> None:
        self._ctx, self._proxy, self._status, self._body = ctx, proxy, status, body
        self._headers = whole_headers(content_type, body, headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_whole(send, self._status, self._headers, self._body)
        publish(self._ctx, self._proxy.publish)


def _finish(ctx: RequestContext, proxy: Proxy) -> None:
    """The guard's after-response hook: a record the response path could not publish."""
    if ctx.published:
        return
    proxy.counters.inc("records_after_failed_response")
    log.error("request %s: the response failed; publishing its record anyway", ctx.request_id)
    if not ctx.status_code or ctx.status_code < 400:
        ctx.status_code = 502
    publish(ctx, proxy.publish)


def proxy_endpoints(opened: Opened[Proxy]) -> dict[str, ASGIApp]:
    """The proxied routes of one app (``opened`` is set by its lifespan), as plain ASGI apps
    by path for ``POST``: they take no arguments a framework would resolve, and Litestar's
    routing, handler and response layers cost the gateway ≈0.1 ms of CPU per request (a tenth
    of it, same-run A/B). The guard is in front of them as of every route; the body caps are
    its and the intake stage's (``max_body_bytes``)."""

    async def chat_completions(scope: Scope, receive: Receive, send: Send) -> None:
        proxy = opened.value
        await _respond(scope, receive, send, proxy, proxy.chat)

    async def embeddings(scope: Scope, receive: Receive, send: Send) -> None:
        proxy = opened.value
        await _respond(scope, receive, send, proxy, proxy.embeddings, EMBEDDINGS)

    return {"/v1/chat/completions": chat_completions, "/v1/embeddings": embeddings}


async def _respond(  # noqa: PLR0917 - the ASGI triple and what the endpoint binds
    scope: Scope,
    receive: Receive,
    send: Send,
    proxy: Proxy,
    stages: Sequence[Stage[Any]],
    endpoint: str = "",
) -> None:
    """The stages, then the answer. What fails past the stages (building the response, sending
    it) is no caller's doing: a 502 if nothing was sent yet, else a log line; the record goes
    out through the guard's after-response hook either way."""
    try:
        ctx = _context(scope, receive, proxy.max_body_bytes)
        if endpoint:
            ctx.endpoint = endpoint
        scope.setdefault("state", {})[FINISH] = lambda: _finish(ctx, proxy)
        response = await _proxy(ctx, proxy, stages)
    except Exception:
        proxy.counters.inc("unexpected")
        log.exception("building the response of a proxied request failed")
        await send_error(send, unexpected_error())
        return
    try:
        await response(scope, receive, send)
    except Exception:
        proxy.counters.inc("unexpected")
        log.exception("sending the response of a proxied request failed")


async def _proxy(ctx: RequestContext, proxy: Proxy, stages: Sequence[Stage[Any]]) -> ASGIApp:
    """The stages of one request, and its answer as an ASGI app (whole, error or stream)."""
    try:
        stream = await run_stages(ctx, stages)
    except ClientError as exc:
        return _error_response(ctx, proxy, exc)
    except Exception:  # never a 500: log with the stage, answer 502, record it
        proxy.counters.inc("unexpected")
        log.exception(
            "request %s: unexpected error at stage %s", ctx.request_id, _failed_stage(ctx)
        )
        return _error_response(ctx, proxy, unexpected_error(ctx.request_id))
    if stream is not None:
        headers = {**_headers(ctx), "Cache-Control": "no-cache"}
        ctx.sent_headers = {**headers, "content-type": "text/event-stream"}
        return ASGIStreamingResponse(
            iterator=_relay(ctx, proxy, stream),
            status_code=stream.status_code,
            media_type="text/event-stream",
            headers=headers,
        )
    reply = ctx.reply
    assert reply is not None  # dispatch sets reply or stream, or raised
    headers = _headers(ctx)
    ctx.sent_headers = {**headers, "content-type": reply.content_type}
    return _Whole(ctx, proxy, reply.status_code, reply.content_type, reply.body, headers)


async def _relay(ctx: RequestContext, proxy: Proxy, stream: UpstreamStream) -> AsyncIterator[bytes]:
    """Forward each upstream read as it comes; publish when the stream ends, however it ends."""
    kept = ctx.cache.stream_events  # the answer will be cached: keep what the caller got
    try:
        async for chunk in relayed(ctx, stream, proxy.dispatcher):
            if kept is not None:
                kept.append(chunk)
            yield chunk
        if not stream.observed.completed:
            ctx.stream_error = "upstream ended the stream without [DONE]"
    except ClientError as exc:
        ctx.stream_error = f"stream cut by the provider: {exc.code}: {exc.message}"
        log.warning("request %s: %s", ctx.request_id, ctx.stream_error)
    except (GeneratorExit, asyncio.CancelledError):
        ctx.stream_error = "client disconnected before the end of the stream"
        raise
    finally:
        from gateway.policy.recording import stream_summary

        ctx.response_body = stream_summary(ctx.request_id, stream.observed)
        try:
            await stream.aclose()
        finally:
            publish(ctx, proxy.publish)


@get("/v1/models")
async def models(
    request: Request[Any, Any, Any],
    key_auth: NamedDependency[KeyAuthenticator],
    catalog: NamedDependency[ModelCatalog],
) -> dict[str, Any]:
    """The models this key can reach (OpenAI's list format); needs the proxy permission."""
    await auth.run(RequestContext(headers=request.headers), key_auth)
    return {"object": "list", "data": await catalog.models()}


async def _sees_counters(
    request: Request[Any, Any, Any], authenticator: KeyAuthenticator, settings: GatewaySettings
) -> bool:
    token = bearer_token(request.headers.get("authorization", ""))
    if token is None:
        return False
    try:
        async with asyncio.timeout(1.0):
            key, org = await authenticator.authenticate(token)
    except Exception:  # noqa: BLE001 - liveness answers whatever the key; no key, no counters
        return False
    return Permission.ADMIN in key.permissions and org.org_id in settings.operator_orgs


@get("/health")
async def health(
    request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> dict[str, Any]:
    """It reports on every service of the worker, so it is handed them all."""
    try:
        async with asyncio.timeout(0.5):
            reachable = bool(await services.redis.ping())
    except Exception:  # noqa: BLE001 - any failure means "not reachable now", which is the answer
        reachable = False
    liveness: dict[str, Any] = {
        "status": "ok" if reachable else "degraded",
        "redis": {"reachable": reachable},
    }
    if not await _sees_counters(request, services.access.authenticator, services.settings):
        return liveness
    return {
        **liveness,
        "worker": {"pid": os.getpid()},  # each worker answers for itself: which one this is
        "publisher": services.publisher.stats(),
        "access": services.access.stats(),
        "cache": services.cache.stats(),
        "routing": services.watcher.stats(),
        "prices": services.generation.upstreams.prices.counters.snapshot(),
        "errors": {
            "unexpected": services.counters.get("unexpected"),
            "record_build": services.counters.get("record_build"),
            "firewall_classifier": services.counters.get("firewall_classifier"),
            "firewall_verdict_cache": services.counters.get("firewall_verdict_cache"),
            "records_after_failed_response": services.counters.get("records_after_failed_response"),
        },
        "guard": {
            "refused_in_flight": services.counters.get("refused_in_flight"),
            "in_flight_clients": len(services.in_flight),
        },
    }


@get("/metrics", media_type=CONTENT_TYPE_LATEST, include_in_schema=False)
async def metrics(
    request: Request[Any, Any, Any],
    key_auth: NamedDependency[KeyAuthenticator],
    settings: NamedDependency[GatewaySettings],
    generation: NamedDependency[Generation],
) -> Response[bytes]:
    """Prometheus text format, every worker's series added up (``shared.metrics``): the same
    counters as ``/health``, so behind the same key (an admin key of an operator org, sent as
    the scrape's bearer token). Breaker states are read from Redis now (any worker changes
    them); if Redis cannot answer, the last states read stay."""
    if not await _sees_counters(request, key_auth, settings):
        raise ForbiddenError("metrics need an admin key of an operator org")
    upstreams = generation.upstreams
    try:
        async with asyncio.timeout(0.5):
            rows = await upstreams.breakers.snapshot(list(upstreams.providers))
    except (RedisError, OSError) as exc:
        log.warning("metrics: breaker states unavailable: %s: %s", type(exc).__name__, exc)
    else:
        for row in rows:
            BREAKER_STATE.labels(row.provider).set(BREAKER_STATE_VALUES[row.state.value])
    body = await asyncio.to_thread(render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
