from __future__ import annotations

import msgspec

from gateway.clients.providers.base import ChatRequest, TokenUsage, UpstreamReply
from gateway.context import RequestContext
from gateway.policy.prices import ModelPrice, PriceBook
from gateway.policy.routing import Target
from gateway.policy.usage import settle_usage

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello to me"}]}


class _Provider:
    name = "openai"


def _ctx(reply: UpstreamReply | None) -> RequestContext:
    ctx = RequestContext(headers={})
    ctx.chat = ChatRequest(raw=msgspec.json.encode(BODY), model="gpt-4o-mini")
    ctx.targets = [Target("openai", "gpt-4o-mini")]
    ctx.reply = reply
    ctx.provider = _Provider()  # type: ignore[assignment]  # only .name is read
    return ctx


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
    settled = settle_usage(_ctx(reply), PriceBook())
    assert settled.usage == usage and settled.estimated is False
    assert settled.cost_usd is not None and settled.cost_usd > 0


def test_missing_usage_is_estimated_with_the_tokenizer_and_flagged() -> None:
    reply = UpstreamReply(
        200, _completion("Hello there, friend", None), "application/json", "gpt-4o-mini", None
    )
    settled = settle_usage(_ctx(reply), PriceBook())
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
    ctx = _ctx(reply)
    book = PriceBook()
    assert settle_usage(ctx, book).cost_usd is None
    assert book.unknown_models == 1
    priced = PriceBook({"openai/my-own-llm": ModelPrice(input_per_mtok=1e6, output_per_mtok=0)})
    assert settle_usage(ctx, priced).cost_usd == 10.0


def test_no_answer_has_no_tokens_and_no_cost() -> None:
    settled = settle_usage(_ctx(None), PriceBook())
    assert settled.usage == TokenUsage() and settled.cost_usd is None and not settled.estimated
