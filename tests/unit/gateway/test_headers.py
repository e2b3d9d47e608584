from __future__ import annotations

import pytest

from gateway.policy.headers import MAX_ID_CHARS, MAX_PROPERTIES, parse_floopy_headers
from shared.errors import BadRequestError


def test_reads_user_session_and_properties() -> None:
    meta = parse_floopy_headers(
        [
            ("floopy-user-id", "user-42"),
            ("floopy-session-id", "s-1"),
            ("floopy-session-name", "Checkout"),
            ("floopy-session-path", "/cart/pay"),
            ("floopy-property-Tier", "gold"),
            ("floopy-property-app.version", "1.2"),
            ("content-type", "application/json"),
            ("floopy-cache-enabled", "false"),
            ("floopy-future-header", "ignored"),
        ]
    )
    assert meta.user_id == "user-42"
    assert meta.session_id == "s-1"
    assert meta.session_name == "Checkout"
    assert meta.session_path == "/cart/pay"
    assert meta.properties == {"tier": "gold", "app.version": "1.2"}
    assert meta.cache_enabled is False
    assert meta.firewall_enabled is True


def test_utf8_text_is_allowed_where_names_are_free_text() -> None:
    latin1 = "Café ☕".encode().decode("latin-1")  # how ASGI hands over non-ASCII bytes
    meta = parse_floopy_headers([("floopy-session-name", latin1), ("floopy-property-x", latin1)])
    assert meta.session_name == "Café ☕"
    assert meta.properties == {"x": "Café ☕"}


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("floopy-user-id", "a" * (MAX_ID_CHARS + 1), "longer than"),
        ("floopy-user-id", "bad\x01id", "control"),
        ("floopy-user-id", "Café".encode().decode("latin-1"), "printable ASCII"),
        ("floopy-session-name", "tab\there", "control"),
        ("floopy-session-name", "\xff\xfe", "UTF-8"),
        ("floopy-session-path", "no-slash", "start with '/'"),
        ("floopy-property-", "x", "property names"),
        ("floopy-property-bad name", "x", "property names"),
        ("floopy-cache-enabled", "maybe", "true or false"),
    ],
)
def test_invalid_values_are_bad_requests_naming_the_header(
    name: str, value: str, says: str
) -> None:
    with pytest.raises(BadRequestError) as caught:
        parse_floopy_headers([(name, value)])
    assert name in caught.value.message or "property" in caught.value.message
    assert says in caught.value.message
    assert caught.value.status_code == 400


def test_a_header_given_twice_is_refused() -> None:
    with pytest.raises(BadRequestError, match="more than once"):
        parse_floopy_headers([("floopy-user-id", "a"), ("Floopy-User-Id", "b")])


def test_too_many_properties() -> None:
    items = [(f"floopy-property-p{i}", "v") for i in range(MAX_PROPERTIES + 1)]
    with pytest.raises(BadRequestError, match="more than"):
        parse_floopy_headers(items)


def test_omit_switches() -> None:
    meta = parse_floopy_headers([("floopy-omit-request", "true"), ("floopy-omit-response", "1")])
    assert meta.omit_request and meta.omit_response
    assert not parse_floopy_headers([]).omit_request
    with pytest.raises(BadRequestError, match="floopy-omit-response"):
        parse_floopy_headers([("floopy-omit-response", "yes")])


def test_every_header_read_is_described_in_the_api_spec() -> None:
    from gateway.policy.headers import HEADER_NAMES
    from gateway.proxy_spec import REQUEST_HEADERS

    assert set(REQUEST_HEADERS) == set(HEADER_NAMES)
