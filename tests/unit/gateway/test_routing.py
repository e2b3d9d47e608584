from __future__ import annotations

import msgspec
import pytest

from gateway.domain import ChatRequest
from gateway.policy.routing import (
    Outcome,
    ProviderModels,
    RoutingTable,
    Target,
    classify_failure,
    counts_against_breaker,
    retryable,
)
from shared.errors import (
    BadRequestError,
    GatewayTimeoutError,
    InvalidApiKeyError,
    ProviderError,
)

PROVIDERS = [
    ProviderModels("openai", frozenset({"gpt-4o", "gpt-4o-mini"}), ("o1", "gpt-")),
    ProviderModels("azure", frozenset({"gpt-4o"})),
    ProviderModels("anthropic", prefixes=("claude-",)),
    ProviderModels("vllm"),  # catch-all
]


def table(**rules: list[str]) -> RoutingTable:
    return RoutingTable(PROVIDERS, rules)


def test_exact_model_lists_come_before_prefixes_in_config_order() -> None:
    assert table().targets("gpt-4o") == [Target("openai", "gpt-4o"), Target("azure", "gpt-4o")]
    assert table().targets("gpt-4.1") == [Target("openai", "gpt-4.1")]
    assert table().targets("claude-3-5-haiku-latest") == [
        Target("anthropic", "claude-3-5-haiku-latest")
    ]


def test_unknown_model_goes_to_catch_all_providers() -> None:
    assert table().targets("llama-3-8b") == [Target("vllm", "llama-3-8b")]


def test_no_catch_all_means_400_naming_the_model() -> None:
    strict = RoutingTable([ProviderModels("openai", frozenset({"gpt-4o"}))])
    with pytest.raises(BadRequestError, match="'llama'"):
        strict.targets("llama")


def test_explicit_provider_prefix_picks_provider_and_strips_it() -> None:
    assert table().targets("azure/gpt-4o") == [Target("azure", "gpt-4o")]
    assert table().targets("vllm/meta-llama/Llama-3-8B") == [
        Target("vllm", "meta-llama/Llama-3-8B")
    ]
    # not a provider name: the whole string is the model
    assert table().targets("meta-llama/Llama-3-8B") == [Target("vllm", "meta-llama/Llama-3-8B")]


def test_rules_win_and_may_change_the_model() -> None:
    routed = table(**{"gpt-4o": ["azure", "openai/gpt-4o-mini", "vllm/llama-3"]})
    assert routed.targets("gpt-4o") == [
        Target("azure", "gpt-4o"),
        Target("openai", "gpt-4o-mini"),
        Target("vllm", "llama-3"),
    ]
    assert str(routed.targets("gpt-4o")[1]) == "openai/gpt-4o-mini"


@pytest.mark.parametrize(
    ("providers", "rules", "says"),
    [
        ([], {}, "no provider"),
        ([ProviderModels("a"), ProviderModels("a")], {}, "unique"),
        ([ProviderModels("a/b")], {}, "without '/'"),
        ([ProviderModels("a")], {"m": ["b"]}, "unknown provider"),
        ([ProviderModels("a")], {"m": []}, "without targets"),
    ],
)
def test_configurations_that_cannot_route_fail_at_start_up(
    providers: list[ProviderModels], rules: dict[str, list[str]], says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        RoutingTable(providers, rules)


@pytest.mark.parametrize(
    ("error", "outcome", "retry", "breaker"),
    [
        (GatewayTimeoutError("slow"), Outcome.TIMEOUT, False, True),
        (ProviderError("down"), Outcome.RETRYABLE, True, True),  # connection refused, dropped
        (ProviderError("5xx", details={"provider_status": 503}), Outcome.RETRYABLE, True, True),
        (ProviderError("429", details={"provider_status": 429}), Outcome.RETRYABLE, True, True),
        (ProviderError("key", details={"provider_status": 401}), Outcome.FAILED, False, True),
        (
            BadRequestError("bad", details={"provider_status": 400}),
            Outcome.CLIENT_ERROR,
            False,
            False,
        ),
        (InvalidApiKeyError("caller"), Outcome.CLIENT_ERROR, False, False),
    ],
)
def test_failure_classification(
    error: Exception, outcome: Outcome, retry: bool, breaker: bool
) -> None:
    assert isinstance(
        error, (ProviderError, GatewayTimeoutError, BadRequestError, InvalidApiKeyError)
    )
    assert classify_failure(error) is outcome
    assert retryable(error) is retry
    assert counts_against_breaker(outcome) is breaker


def test_non_client_errors_are_never_retried() -> None:
    assert retryable(RuntimeError("bug")) is False


def test_a_target_with_another_model_rewrites_only_the_model() -> None:
    raw = b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"temperature":0}'
    request = ChatRequest(raw=raw, model="gpt-4o")
    assert request.for_model("gpt-4o") is request  # same model: the caller's bytes, untouched
    moved = request.for_model("gpt-4o-mini")
    assert moved.model == "gpt-4o-mini"
    assert msgspec.json.decode(moved.raw) == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0,
    }
    assert msgspec.json.decode(request.raw)["model"] == "gpt-4o"  # the original is unchanged


def test_a_provider_with_an_org_list_serves_those_orgs_only() -> None:
    table = RoutingTable(
        [
            ProviderModels("private", frozenset({"private-only"}), orgs=frozenset({"org-a"})),
            ProviderModels("open"),
        ],
        {"shared": ["private", "open/gpt-4o"]},
    )
    assert [t.provider for t in table.targets("private/x", "org-a")] == ["private"]
    with pytest.raises(BadRequestError, match="not available"):
        table.targets("private/x", "org-b")
    with pytest.raises(BadRequestError, match="not available"):
        table.targets("private-only", "org-b")
    assert [str(t) for t in table.targets("shared", "org-b")] == ["open/gpt-4o"]
    assert [t.provider for t in table.targets("shared", "org-a")] == ["private", "open"]
