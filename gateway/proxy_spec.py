"""The proxied routes in ``/schema/openapi.json``.

``POST /v1/chat/completions`` and ``/v1/embeddings`` are plain ASGI endpoints in front of
Litestar (``gateway.routes``), so Litestar's spec, built from its own handlers, does not know
them. They are described here, once, and added to the spec at start-up (``document``): the
OpenAI wire format in and out (only the fields Floopy reads are named, any other passes through
to the provider), the ``floopy-*`` request headers, the ``Floopy-*`` response headers and the
error table's answers.
"""

from __future__ import annotations

from litestar import Litestar
from litestar.openapi.spec import (
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    PathItem,
    Reference,
    RequestBody,
    Schema,
)

from gateway.policy.headers import MAX_PROPERTIES, PROPERTY_PREFIX

__all__ = ["REQUEST_HEADERS", "document", "proxied_paths"]

REQUEST_HEADERS: dict[str, str] = {
    "floopy-user-id": "Your end user's id (printable ASCII, ≤ 256 characters)",
    "floopy-session-id": "Groups requests into a session (printable ASCII)",
    "floopy-session-name": "The session's display name (UTF-8)",
    "floopy-session-path": "Where in the session's trace this request sits, e.g. /plan/step-1",
    "floopy-cache-enabled": "true/false: read and write the response cache for this request",
    "floopy-cache-max-age": "Seconds a cached answer may be old to be served",
    "floopy-cache-seed": "Partitions the cache: only requests with the same seed share answers",
    "floopy-cache-semantic-threshold": "Similarity (0-1) a semantic cache hit must reach",
    "floopy-llm-security-enabled": "true/false: screen the prompt with the LLM firewall",
    "floopy-ratelimit-policy": "One more limit, <quota>;w=<seconds>[;u=<unit>][;s=<segment>]",
    "floopy-prompt-id": "Render this prompt template (name or name@version) from the body's inputs",
    "floopy-omit-request": "true: keep metrics and metadata, never store the request body",
    "floopy-omit-response": "true: keep metrics and metadata, never store the response body",
}
"""Every ``floopy-*`` header the gateway reads (``gateway.policy.headers.HEADER_NAMES``; a
unit test keeps the two in step), and what it does."""

_RESPONSE_HEADERS = {
    "Floopy-Request-Id": "The request's id in the logs and the dashboard",
    "Floopy-Provider": "The provider that answered",
    "Floopy-Model": "The model that answered",
    "Floopy-Cache": "HIT or MISS, when the cache was consulted",
    "Floopy-Cache-Tier": "On a hit: the tier that answered (exact, semantic, advanced)",
    "Floopy-Cache-Similarity": "On a semantic hit: how close the cached prompt was (0-1)",
    "Floopy-RateLimit-Status": "unavailable: the limits could not be checked; let through",
    "RateLimit": "The caller's remaining requests in the tightest window (IETF draft)",
    "RateLimit-Policy": "The rate limit policies applied to the caller (IETF draft)",
}

_ERRORS = {
    400: "BAD_REQUEST (a malformed body or floopy-* header) or PROMPT_THREAT_DETECTED",
    401: "INVALID_API_KEY",
    403: "FORBIDDEN (the key lacks the permission) or SUBSCRIPTION_EXPIRED",
    405: "METHOD_NOT_ALLOWED",
    408: "BAD_REQUEST: the body did not arrive in time",
    413: "BAD_REQUEST: the body is over the gateway's limit",
    429: "RATE_LIMIT_EXCEEDED, USAGE_LIMIT_EXCEEDED or MONTHLY_LIMIT_EXCEEDED (Retry-After)",
    502: "PROVIDER_ERROR: every provider of the route failed",
    503: "FIREWALL_UNAVAILABLE: the org's firewall fails closed",
    504: "GATEWAY_TIMEOUT",
}

_STRING = Schema(type=OpenAPIType.STRING)
_ERROR_BODY = Schema(
    type=OpenAPIType.OBJECT,
    required=["error"],
    properties={
        "error": Schema(
            type=OpenAPIType.OBJECT,
            required=["code", "message"],
            properties={"code": _STRING, "message": _STRING, "request_id": _STRING},
        )
    },
)


def _body(required: list[str], properties: dict[str, Schema | Reference]) -> RequestBody:
    schema = Schema(
        type=OpenAPIType.OBJECT,
        required=required,
        properties=properties,
        additional_properties=True,
    )
    return RequestBody(content={"application/json": OpenAPIMediaType(schema=schema)}, required=True)


def _operation(
    summary: str, description: str, body: RequestBody, ok: dict[str, OpenAPIMediaType]
) -> PathItem:
    headers: list[Parameter | Reference] = [
        Parameter(name=name, param_in="header", description=text, schema=_STRING)
        for name, text in REQUEST_HEADERS.items()
    ]
    errors = {
        str(status): OpenAPIResponse(
            description=text,
            content={"application/json": OpenAPIMediaType(schema=_ERROR_BODY)},
        )
        for status, text in _ERRORS.items()
    }
    answer = OpenAPIResponse(
        description="The provider's answer in the OpenAI wire format",
        content=ok,
        headers={name: OpenAPIHeader(description=text) for name, text in _RESPONSE_HEADERS.items()},
    )
    return PathItem(
        post=Operation(
            tags=["Proxy"],
            summary=summary,
            description=f"{description} Custom properties: up to {MAX_PROPERTIES} "
            f"`{PROPERTY_PREFIX}<name>` headers, filterable in the dashboard.",
            operation_id=summary.replace(" ", ""),
            parameters=headers,
            request_body=body,
            responses={"200": answer, **errors},
            security=[{"BearerAuth": []}],
        )
    )


def proxied_paths() -> dict[str, PathItem]:
    json_answer = {"application/json": OpenAPIMediaType(schema=Schema(type=OpenAPIType.OBJECT))}
    sse = {"text/event-stream": OpenAPIMediaType(schema=_STRING)}
    return {
        "/v1/chat/completions": _operation(
            "Create Chat Completion",
            "Authenticated, limited, cached, screened, routed to a provider with fallbacks, "
            "and logged. `model` is a model or a route name; with `stream: true` the answer is "
            "server-sent events as the provider sends them.",
            _body(
                ["model", "messages"],
                {
                    "model": _STRING,
                    "messages": Schema(
                        type=OpenAPIType.ARRAY, items=Schema(type=OpenAPIType.OBJECT)
                    ),
                    "stream": Schema(type=OpenAPIType.BOOLEAN),
                },
            ),
            {**json_answer, **sse},
        ),
        "/v1/embeddings": _operation(
            "Create Embeddings",
            "Authenticated, limited, routed and logged like a chat completion.",
            _body(
                ["model", "input"],
                {
                    "model": _STRING,
                    "input": Schema(
                        one_of=[_STRING, Schema(type=OpenAPIType.ARRAY, items=_STRING)]
                    ),
                },
            ),
            json_answer,
        ),
    }


def document(app: Litestar) -> None:
    """Add the proxied routes to the app's spec (an ``on_startup`` hook: Litestar builds the
    spec once, from the routes it has, and serves that object from then on)."""
    spec = app.openapi_schema
    spec.paths = {**(spec.paths or {}), **proxied_paths()}
