from __future__ import annotations

import logging

import pytest

from gateway.policy.prices import ModelPrice, PriceBook


def test_library_price_for_known_model() -> None:
    book = PriceBook()
    cost = book.cost_usd(
        provider="openai", model="gpt-4o-mini", prompt_tokens=1_000_000, completion_tokens=1_000_000
    )
    assert cost == pytest.approx(0.15 + 0.60)


def test_cached_prompt_tokens_are_cheaper() -> None:
    book = PriceBook()
    full = book.cost_usd(
        provider="openai", model="gpt-4o-mini", prompt_tokens=1_000_000, completion_tokens=0
    )
    cached = book.cost_usd(
        provider="openai",
        model="gpt-4o-mini",
        prompt_tokens=1_000_000,
        completion_tokens=0,
        cached_prompt_tokens=500_000,
    )
    assert full is not None and cached is not None and cached < full


def test_anthropic_model_and_unknown_provider_falls_back_to_model_match() -> None:
    book = PriceBook()
    assert book.cost_usd(
        provider="anthropic",
        model="claude-3-5-haiku-latest",
        prompt_tokens=1000,
        completion_tokens=100,
    )
    # a self-hosted deployment of a known model: priced by the model name alone
    assert book.cost_usd(
        provider="my-vllm", model="gpt-4o-mini", prompt_tokens=1000, completion_tokens=0
    )
    assert book.unknown_models == 0


def test_unknown_model_is_none_not_zero_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    book = PriceBook()
    with caplog.at_level(logging.WARNING, logger="gateway.policy.prices"):
        for _ in range(3):
            assert (
                book.cost_usd(
                    provider="openai",
                    model="no-such-model-x9",
                    prompt_tokens=10,
                    completion_tokens=10,
                )
                is None
            )
    assert book.unknown_models == 3
    assert [r.getMessage() for r in caplog.records].count(
        "no price for model 'no-such-model-x9' of provider 'openai': cost recorded as unknown "
        "(add an override in config)"
    ) == 1


def test_overrides_win_provider_specific_first() -> None:
    book = PriceBook(
        {
            "gpt-4o-mini": ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0),
            "azure/gpt-4o-mini": ModelPrice(
                input_per_mtok=10.0, output_per_mtok=20.0, cached_input_per_mtok=5.0
            ),
            "house-model": ModelPrice(input_per_mtok=0.0, output_per_mtok=0.0),
        }
    )
    assert (
        book.cost_usd(
            provider="openai", model="gpt-4o-mini", prompt_tokens=10**6, completion_tokens=10**6
        )
        == 3.0
    )
    assert (
        book.cost_usd(
            provider="azure",
            model="gpt-4o-mini",
            prompt_tokens=10**6,
            completion_tokens=0,
            cached_prompt_tokens=10**6,
        )
        == 5.0
    )
    assert (
        book.cost_usd(provider="vllm", model="house-model", prompt_tokens=5, completion_tokens=5)
        == 0.0
    )


def test_model_price_splits_prompt_into_plain_cached_and_written() -> None:
    price = ModelPrice(
        input_per_mtok=3.0,
        output_per_mtok=15.0,
        cached_input_per_mtok=0.3,
        cache_write_per_mtok=3.75,
    )
    cost = price.cost(prompt=1_000_000, completion=0, cached=200_000, cache_write=100_000)
    assert cost == pytest.approx(0.7 * 3.0 + 0.2 * 0.3 + 0.1 * 3.75)


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("openai", "gpt-4o-mini"),
        ("openai", "o1"),
        ("anthropic", "claude-3-5-haiku-latest"),
        ("my-azure", "gpt-4o"),  # a provider name the library does not know: model alone
    ],
)
def test_remembered_prices_match_the_library(provider: str, model: str) -> None:
    from genai_prices import Usage, calc_price

    book = PriceBook()
    for _ in range(2):  # the second call is served from the book's memory
        cost = book.cost_usd(
            provider=provider,
            model=model,
            prompt_tokens=12_000,
            completion_tokens=3_000,
            cached_prompt_tokens=2_000,
        )
    usage = Usage(input_tokens=12_000, output_tokens=3_000, cache_read_tokens=2_000)
    try:
        expected = calc_price(usage, model, provider_id=provider).total_price
    except LookupError:
        expected = calc_price(usage, model).total_price
    assert cost == pytest.approx(float(expected), rel=1e-9)


def test_unknown_models_are_counted_every_time_even_when_remembered() -> None:
    book = PriceBook()
    for _ in range(3):
        assert (
            book.cost_usd(provider="x", model="nope", prompt_tokens=1, completion_tokens=1) is None
        )
    assert book.unknown_models == 3
