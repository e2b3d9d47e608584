from __future__ import annotations

import msgspec
import pytest

from gateway.errors import error_body, render_error
from gateway.policy.upstream_errors import public_error, upstream_error
from shared.errors import (
    BadRequestError,
    InvalidApiKeyError,
    PayloadTooLargeError,
    ProviderError,
    RateLimitExceededError,
)


def test_error_body_has_code_message_details_and_request_id() -> None:
    exc = BadRequestError("no model", details={"param": "model"})
    body = msgspec.json.decode(error_body(exc, "rid-1"))
    assert body == {
        "error": {
            "code": "BAD_REQUEST",
            "message": "no model",
            "param": "model",
            "request_id": "rid-1",
        }
    }


def test_render_error_keeps_status_and_headers() -> None:
    exc = RateLimitExceededError("slow down", headers={"Retry-After": "3"})
    response = render_error(exc, "rid", {"Floopy-Request-Id": "rid"})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3"
    assert response.headers["Floopy-Request-Id"] == "rid"
    assert render_error(PayloadTooLargeError("big")).status_code == 413
    assert render_error(InvalidApiKeyError("who")).status_code == 401


@pytest.mark.parametrize("status", [400, 404, 422])
def test_upstream_client_mistakes_are_bad_requests_with_the_provider_error(status: int) -> None:
    body = b'{"error":{"message":"unknown model","type":"invalid_request_error","code":"x"}}'
    exc = public_error(upstream_error("openai", status, body))
    assert isinstance(exc, BadRequestError) and exc.status_code == 400
    assert "unknown model" in exc.message
    assert exc.details["provider_error"]["code"] == "x"
    assert exc.details["provider_status"] == status


@pytest.mark.parametrize("status", [401, 429, 500, 503])
def test_upstream_failures_are_provider_errors(status: int) -> None:
    exc = public_error(upstream_error("openai", status, b"<html>bad gateway</html>"))
    assert isinstance(exc, ProviderError) and exc.status_code == 502
    assert exc.details["provider_error"] == "<html>bad gateway</html>"
