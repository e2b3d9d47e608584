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
from gateway.policy.upstream_errors import public_error
from shared.errors import (
    BadRequestError,
    ClientError,
    GatewayTimeoutError,
    InvalidApiKeyError,
    ProviderError,
    UpstreamError,
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
        (UpstreamError("slow", provider="p", timed_out=True), Outcome.TIMEOUT, False, True),
        (UpstreamError("down", provider="p"), Outcome.RETRYABLE, True, True),  # refused, dropped
        (UpstreamError("5xx", provider="p", status=503), Outcome.RETRYABLE, True, True),
        (UpstreamError("429", provider="p", status=429), Outcome.RETRYABLE, True, True),
        (UpstreamError("key", provider="p", status=401), Outcome.FAILED, False, True),
        (UpstreamError("bad", provider="p", status=400), Outcome.CLIENT_ERROR, False, False),
        (InvalidApiKeyError("caller"), Outcome.CLIENT_ERROR, False, False),
    ],
)
def test_failure_classification(
    error: UpstreamError | ClientError, outcome: Outcome, retry: bool, breaker: bool
) -> None:
    assert classify_failure(error) is outcome
    assert retryable(error) is retry
    assert counts_against_breaker(outcome) is breaker


@pytest.mark.parametrize(
    ("error", "public", "status"),
    [
        (UpstreamError("slow", provider="p", timed_out=True), GatewayTimeoutError, 504),
        (UpstreamError("down", provider="p"), ProviderError, 502),
        (UpstreamError("5xx", provider="p", status=503), ProviderError, 502),
        (UpstreamError("key", provider="p", status=401), ProviderError, 502),
        (UpstreamError("bad", provider="p", status=400), BadRequestError, 400),
    ],
)
def test_the_callers_error_of_an_upstream_failure(
    error: UpstreamError, public: type[ClientError], status: int
) -> None:
    mapped = public_error(error)
    assert type(mapped) is public and mapped.status_code == status
    assert mapped.message == error.message and mapped.details["provider"] == "p"


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
