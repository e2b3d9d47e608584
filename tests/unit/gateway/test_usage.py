from __future__ import annotations

import msgspec

from gateway.domain import ChatRequest, StreamObservation, TokenUsage, UpstreamReply
from gateway.policy.prices import ModelPrice, PriceBook
from gateway.policy.usage import Answer, Settled, needs_estimate, settle_usage

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello to me"}]}
CHAT = ChatRequest(raw=msgspec.json.encode(BODY), model="gpt-4o-mini")


def _settle(answer: Answer | None, prices: PriceBook, *, from_cache: bool = False) -> Settled:
    """Priced as the gateway prices it: the model that answered, else the one routed to."""
    model = (answer.model if answer is not None else "") or "gpt-4o-mini"
    return settle_usage(answer, CHAT, prices, provider="openai", model=model, from_cache=from_cache)


def _completion(content: str, usage: dict[str, int] | None) -> bytes:
    return msgspec.json.encode(
        {
            "object": "chat.completion",
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
            "usage": usage,
        }
    )


def test_reported_usage_is_priced_and_not_estimated() -> None:
    usage = TokenUsage(1000, 500, 1500, 0)
    reply = UpstreamReply(200, _completion("hi", None), "application/json", "gpt-4o-mini", usage)
    settled = _settle(reply, PriceBook())
    assert settled.usage == usage and settled.estimated is False
    assert settled.cost_usd is not None and settled.cost_usd > 0


def test_missing_usage_is_estimated_with_the_tokenizer_and_flagged() -> None:
    reply = UpstreamReply(
        200, _completion("Hello there, friend", None), "application/json", "gpt-4o-mini", None
    )
    settled = _settle(reply, PriceBook())
    assert settled.estimated is True
    # "Hello there, friend" is 4 cl100k tokens; the prompt adds the chat overhead (3+3+role)
    assert settled.usage.completion_tokens == 4
    assert settled.usage.prompt_tokens > 4
    assert settled.usage.total_tokens == settled.usage.prompt_tokens + 4
    assert settled.cost_usd is not None and settled.cost_usd > 0


def test_unknown_model_costs_none_not_zero() -> None:
    reply = UpstreamReply(
        200, _completion("x", None), "application/json", "my-own-llm", TokenUsage(10, 2, 12, 0)
    )
    book = PriceBook()
    assert _settle(reply, book).cost_usd is None
    assert book.unknown_models == 1
    priced = PriceBook({"openai/my-own-llm": ModelPrice(input_per_mtok=1e6, output_per_mtok=0)})
    assert _settle(reply, priced).cost_usd == 10.0


def test_no_answer_has_no_tokens_and_no_cost() -> None:
    settled = _settle(None, PriceBook())
    assert settled.usage == TokenUsage() and settled.cost_usd is None and not settled.estimated
    assert not needs_estimate(None)


def test_a_stream_without_its_usage_chunk_is_estimated_from_what_it_said() -> None:
    seen = StreamObservation(model="gpt-4o-mini", content_parts=["Hello there", ", friend"])
    assert needs_estimate(seen)
    settled = _settle(seen, PriceBook())
    assert settled.estimated and settled.usage.completion_tokens == 4


def test_a_cache_hit_costs_nothing_and_keeps_the_stored_usage() -> None:
    usage = TokenUsage(10, 2, 12, 0)
    reply = UpstreamReply(200, _completion("x", None), "application/json", "gpt-4o-mini", usage)
    settled = _settle(reply, PriceBook(), from_cache=True)
    assert (settled.usage, settled.cost_usd, settled.estimated) == (usage, 0.0, False)
