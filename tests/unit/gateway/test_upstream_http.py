from __future__ import annotations

import aiohttp
import httpx
import pytest

from gateway.clients.upstream_http import UpstreamHTTP, is_timeout
from gateway.policy.upstream_errors import public_error
from gateway.settings import ProviderSettings
from shared.errors import GatewayTimeoutError, ProviderError


def _mapped(exc: httpx.HTTPError, cause: BaseException | None) -> httpx.HTTPError:
    """What httpx_aiohttp raises: httpx's exception ``from`` aiohttp's."""
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    ("exc", "timeout"),
    [
        (TimeoutError(), True),
        (_mapped(httpx.ReadTimeout("read"), aiohttp.SocketTimeoutError()), True),
        (_mapped(httpx.TimeoutException("t"), None), True),
        # the transport calls a dropped connection a ConnectTimeout: it is not one
        (_mapped(httpx.ConnectTimeout("x"), aiohttp.ServerDisconnectedError()), False),
        (_mapped(httpx.ConnectError("refused"), OSError("refused")), False),
        (ConnectionResetError(), False),
    ],
)
def test_only_real_timeouts_are_timeouts(exc: BaseException, timeout: bool) -> None:
    assert is_timeout(exc) is timeout
    http = UpstreamHTTP(ProviderSettings(name="p", timeout_s=3), {})
    error = public_error(http.translate(exc))
    assert isinstance(error, GatewayTimeoutError if timeout else ProviderError)
    assert error.details == {"provider": "p"}


def test_the_key_stays_out_of_errors_and_reprs() -> None:
    settings = ProviderSettings(name="p", api_key="sk-secret-123")  # type: ignore[arg-type]
    http = UpstreamHTTP(settings, {"Authorization": "Bearer sk-secret-123"})
    error = http.translate(httpx.ConnectError("refused"))
    assert "sk-secret-123" not in error.message and "sk-secret-123" not in repr(settings)


def test_api_key_env_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOOPY_TEST_KEY", "sk-from-env")
    settings = ProviderSettings(name="p", api_key_env="FLOOPY_TEST_KEY")
    assert settings.api_key.get_secret_value() == "sk-from-env"
    monkeypatch.delenv("FLOOPY_TEST_KEY")
    with pytest.raises(ValueError, match="FLOOPY_TEST_KEY"):
        ProviderSettings(name="p", api_key_env="FLOOPY_TEST_KEY")
