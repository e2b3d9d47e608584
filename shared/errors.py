"""The one error tree of Floopy.

Client-facing errors map one-to-one to the README's error table (docs/architecture.md §5); the
gateway renders any of them as ``{"error": {"code", "message", ...}}`` with ``status_code``.
Pipeline errors never reach a client: they classify failures in the log pipeline so the ingester
can tell a transient outage (retry, then spool) from poison data (set aside, never retried).

    FloopyError
    ├── ClientError                      (rendered to the caller; has status_code and code)
    │   ├── BadRequestError              400 BAD_REQUEST
    │   │   ├── PayloadTooLargeError     413 BAD_REQUEST
    │   │   └── RequestTimeoutError      408 BAD_REQUEST (the body did not arrive in time)
    │   ├── PromptThreatError            400 PROMPT_THREAT_DETECTED
    │   ├── InvalidApiKeyError           401 INVALID_API_KEY
    │   ├── ForbiddenError               403 FORBIDDEN
    │   ├── NotFoundError                404 NOT_FOUND (no such route, or no such id in the org)
    │   ├── MethodNotAllowedError        405 METHOD_NOT_ALLOWED
    │   ├── SubscriptionExpiredError     403 SUBSCRIPTION_EXPIRED
    │   ├── RateLimitExceededError       429 RATE_LIMIT_EXCEEDED
    │   ├── UsageLimitExceededError      429 USAGE_LIMIT_EXCEEDED
    │   ├── MonthlyLimitExceededError    429 MONTHLY_LIMIT_EXCEEDED
    │   ├── ProviderError                502 PROVIDER_ERROR
    │   ├── FirewallUnavailableError     503 FIREWALL_UNAVAILABLE (the org fails closed)
    │   ├── AnalyticsUnavailableError    503 ANALYTICS_UNAVAILABLE (read API: ClickHouse)
    │   └── GatewayTimeoutError          504 GATEWAY_TIMEOUT
    ├── PipelineError                    (internal; never rendered)
    │   ├── RecordDecodeError            an entry that is not a record of a known schema version
    │   ├── SinkUnavailableError         the store cannot be reached: transient, retry then spool
    │   └── PoisonBatchError             the store rejected the data itself: set rows aside
    └── DependencyError                  (internal; never rendered: the stage that needed it
        │                                 fails open, or maps it to its own ClientError)
        ├── EmbeddingUnavailableError    the embedder failed or did not answer in time
        ├── VectorStoreUnavailableError  Qdrant could not be reached or refused the call
        ├── ClassifierFailedError        the firewall's classifier gave no verdict
        │   └── MalformedVerdictError    it answered, but not with a readable verdict
        └── UpstreamError                a provider failed us (status, timeout, unreachable,
                                         unreadable answer) or refused the request: dispatch
                                         decides on it per attempt and maps the last one to
                                         the caller's ClientError once, after the last target
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AnalyticsUnavailableError",
    "BadRequestError",
    "ClassifierFailedError",
    "ClientError",
    "DependencyError",
    "EmbeddingUnavailableError",
    "FirewallUnavailableError",
    "FloopyError",
    "ForbiddenError",
    "GatewayTimeoutError",
    "InvalidApiKeyError",
    "MalformedVerdictError",
    "MethodNotAllowedError",
    "MonthlyLimitExceededError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PipelineError",
    "PoisonBatchError",
    "PromptThreatError",
    "ProviderError",
    "RateLimitExceededError",
    "RecordDecodeError",
    "RequestTimeoutError",
    "SinkUnavailableError",
    "SubscriptionExpiredError",
    "UpstreamError",
    "UsageLimitExceededError",
    "VectorStoreUnavailableError",
]


class FloopyError(Exception):
    """Root of every error Floopy raises on purpose."""


class ClientError(FloopyError):
    """An error the caller sees. ``details`` are extra keys of the error body."""

    status_code: ClassVar[int] = 400
    code: ClassVar[str] = "BAD_REQUEST"

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.details}}


class BadRequestError(ClientError):
    status_code = 400
    code = "BAD_REQUEST"


class PayloadTooLargeError(BadRequestError):
    """Same code as any malformed body; the status says which limit was hit."""

    status_code = 413


class RequestTimeoutError(BadRequestError):
    """The body did not arrive within ``body_read_timeout_s``: a slow sender holds no slot."""

    status_code = 408


class PromptThreatError(ClientError):
    status_code = 400
    code = "PROMPT_THREAT_DETECTED"


class InvalidApiKeyError(ClientError):
    status_code = 401
    code = "INVALID_API_KEY"


class ForbiddenError(ClientError):
    status_code = 403
    code = "FORBIDDEN"


class NotFoundError(ClientError):
    """Also what another org's id gets: existence is not disclosed across orgs."""

    status_code = 404
    code = "NOT_FOUND"


class MethodNotAllowedError(ClientError):
    status_code = 405
    code = "METHOD_NOT_ALLOWED"


class SubscriptionExpiredError(ClientError):
    status_code = 403
    code = "SUBSCRIPTION_EXPIRED"


class RateLimitExceededError(ClientError):
    status_code = 429
    code = "RATE_LIMIT_EXCEEDED"


class UsageLimitExceededError(ClientError):
    status_code = 429
    code = "USAGE_LIMIT_EXCEEDED"


class MonthlyLimitExceededError(ClientError):
    status_code = 429
    code = "MONTHLY_LIMIT_EXCEEDED"


class ProviderError(ClientError):
    status_code = 502
    code = "PROVIDER_ERROR"


class FirewallUnavailableError(ClientError):
    """The org's firewall fails closed and could not screen the request (classifier timed out,
    failed, answered nonsense, or its breaker is open)."""

    status_code = 503
    code = "FIREWALL_UNAVAILABLE"


class AnalyticsUnavailableError(ClientError):
    """The read API's storage (ClickHouse) did not answer; the proxy itself is unaffected."""

    status_code = 503
    code = "ANALYTICS_UNAVAILABLE"


class GatewayTimeoutError(ClientError):
    status_code = 504
    code = "GATEWAY_TIMEOUT"


class PipelineError(FloopyError):
    """Failures inside the log pipeline; logged and counted, never shown to a caller."""


class RecordDecodeError(PipelineError):
    """The bytes are not a record of a schema version this process accepts."""


class SinkUnavailableError(PipelineError):
    """The store did not answer (network, timeout, server down): worth retrying later."""


class PoisonBatchError(PipelineError):
    """The store rejected the rows themselves; retrying the same rows cannot succeed."""


class DependencyError(FloopyError):
    """A store or model a stage uses failed; what the caller sees is the stage's decision."""


class EmbeddingUnavailableError(DependencyError):
    """The embedder raised or did not answer in time."""


class VectorStoreUnavailableError(DependencyError):
    """Qdrant could not be reached, timed out or refused the call."""


class ClassifierFailedError(DependencyError):
    """The firewall's classifier gave no verdict; ``reason`` is one word for the record
    (``timeout``, ``breaker_open``, ``provider_error``, ``malformed``)."""

    reason = "provider_error"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class MalformedVerdictError(ClassifierFailedError):
    reason = "malformed"


class UpstreamError(DependencyError):
    """A provider failed us, or refused the request. Internal, so that retries, fallbacks and
    the breakers decide on what happened, not on a rendered error, and the caller's error is
    made once (``gateway.policy.upstream_errors.public_error``).

    ``status``: the provider's error status (None: no answer, or an unreadable one);
    ``provider_error``: its own error object or text; ``timed_out``: no answer in time.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status: int | None = None,
        provider_error: Any = None,
        timed_out: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.status = status
        self.provider_error = provider_error
        self.timed_out = timed_out
