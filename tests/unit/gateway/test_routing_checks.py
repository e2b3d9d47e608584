"""The one validator of providers and routes (``gateway.routing_checks``), without servers: the
shape every writer checks, and what a worker builds from stored routing."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.admin.seed import parse_seed
from gateway.routing_checks import check_provider, check_route, check_routing, merge_routing
from gateway.settings import GatewaySettings, ProviderSettings
from shared.errors import BadRequestError


@pytest.mark.parametrize(
    ("provider", "field"),
    [
        ({"base_url": "http://p/v1"}, "name"),
        ({"name": "", "base_url": "http://p/v1"}, "name"),
        ({"name": "a/b", "base_url": "http://p/v1"}, "name"),
        ({"name": "a:b", "base_url": "http://p/v1"}, "name"),
        ({"name": "p", "base_url": "ftp://p/v1"}, "base_url"),
        ({"name": "p", "base_url": "http:///v1"}, "base_url"),
        ({"name": "p", "base_url": ["http://p"]}, "base_url"),
        ({"name": "p", "api_key_env": "1ABC"}, "api_key_env"),
        ({"name": "p", "api_key_env": "A-B"}, "api_key_env"),
        ({"name": "p", "api_key": "sk-live"}, "api_key"),
        ({"name": "p", "api_key_encrypted": 5}, "api_key_encrypted"),
        ({"name": "p", "models": "gpt-4o"}, "models"),
        ({"name": "p", "deployments": {"gpt-4o": 3}}, "deployments.gpt-4o"),
        ({"name": "p", "max_connections": 0}, "max_connections"),
        ({"name": "p", "kind": "grok"}, "kind"),
        ({"name": "p", "base_ulr": "http://p/v1"}, "base_ulr"),
    ],
)
def test_a_bad_provider_is_a_400_naming_the_field(provider: dict[str, Any], field: str) -> None:
    with pytest.raises(BadRequestError) as caught:
        check_provider(provider)
    assert caught.value.details == {"param": field}
    assert f": {field}: " in caught.value.message


def test_a_good_provider_passes_without_its_environment() -> None:
    """``floopy-admin`` checks the shape only: the variable need not be set where it runs."""
    check_provider(
        {
            "name": "backup",
            "kind": "azure",
            "base_url": "https://r.openai.azure.com",
            "api_key_env": "FLOOPY_PROVIDER_KEY_UNSET_HERE",
            "api_key_encrypted": "gAAAA-whatever",
            "models": ["gpt-4o"],
            "deployments": {"gpt-4o": "prod"},
        }
    )


@pytest.mark.parametrize(
    ("model", "targets", "field"),
    [
        ("", ["a"], "model"),
        ("m", [], "targets"),
        ("m", "a", "targets"),
        ("m", [""], "targets"),
        ("m", ["/m2"], "targets"),
        ("m", [3], "targets"),
    ],
)
def test_a_bad_route_is_a_400_naming_the_field(model: str, targets: Any, field: str) -> None:
    with pytest.raises(BadRequestError) as caught:
        check_route(model, targets)
    assert caught.value.details == {"param": field}


def test_settings_and_config_file_use_the_same_rules() -> None:
    with pytest.raises(ValueError, match="base_url"):
        ProviderSettings(name="p", base_url="ftp://p")
    with pytest.raises(ValueError, match="base_ulr"):
        ProviderSettings.model_validate({"name": "p", "base_ulr": "http://p"})
    with pytest.raises(BadRequestError, match=r"floopy.toml: provider 'p': base_url: "):
        parse_seed({"providers": [{"name": "p", "base_url": "ftp://p"}]}, "floopy.toml")
    with pytest.raises(BadRequestError, match=r"route 'm': targets: "):
        parse_seed({"routes": {"m": ["/x"]}})


def test_stored_routing_as_a_worker_builds_it() -> None:
    settings = GatewaySettings()
    with pytest.raises(BadRequestError, match="unknown provider") as caught:
        check_routing(settings, [], {"m": ["nowhere"]})
    assert caught.value.details == {"param": "targets"}
    with pytest.raises(BadRequestError, match="FLOOPY_PROVIDER_KEY_UNSET"):
        check_routing(settings, [{"name": "p", "api_key_env": "FLOOPY_PROVIDER_KEY_UNSET"}], {})
    check_routing(settings, [{"name": "p", "base_url": "http://p/v1"}], {"m": ["p/m2"]})
    # a worker leaves an unusable stored provider out (logged) and keeps the others
    merged = merge_routing(
        settings,
        [{"name": "bad", "base_url": "ftp://x"}, {"name": "ok", "base_url": "http://o"}],
        {},
    )
    assert [p.name for p in merged.provider_list()] == ["openai", "ok"]
