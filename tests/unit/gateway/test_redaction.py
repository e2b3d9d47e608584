from __future__ import annotations

import pytest

from gateway.policy.redaction import (
    REDACTED,
    is_secret_name,
    recorded_request_headers,
    redact,
)


@pytest.mark.parametrize(
    "name",
    [
        "Authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "x-goog-api-key",
        "cookie",
        "set-cookie",
        "x-auth-token",
        "X-Amz-Security-Token",
        "client_secret",
        "api_key_encrypted",
        "key_hash",
        "masterKey",
        "password",
    ],
)
def test_secret_like_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name",
    ["content-type", "user-agent", "key_id", "keys", "openai-organization", "anthropic-version"],
)
def test_ordinary_names(name: str) -> None:
    assert not is_secret_name(name)


def test_recorded_headers_keep_floopy_ones_and_cap_sizes() -> None:
    items = [("Floopy-Session-Id", "s1"), ("X-Big", "v" * 5000), ("Authorization", "Bearer x")]
    items += [(f"x-h{i}", "1") for i in range(200)]
    kept = recorded_request_headers(items)
    assert kept["floopy-session-id"] == "s1" and "authorization" not in kept
    assert len(kept["x-big"]) == 1025 and len(kept) == 100


def test_redact_replaces_secret_values_at_any_depth() -> None:
    value = {
        "name": "vault",
        "api_key_encrypted": "gAAAA-token",
        "api_key_env": "",
        "nested": [{"secret": "s", "ok": 1}],
        "key_id": "k1",
    }
    assert redact(value) == {
        "name": "vault",
        "api_key_encrypted": REDACTED,
        "api_key_env": "",
        "nested": [{"secret": REDACTED, "ok": 1}],
        "key_id": "k1",
    }
