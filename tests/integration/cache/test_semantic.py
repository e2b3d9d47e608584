"""The semantic and advanced tiers in-process: the local embedder (multilingual-e5-small),
Qdrant in local mode, real Redis, the official SDK; the fake provider's request count tells a
hit from a call."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.chat import (
    ChatCompletionMessageParam,
    ChatCompletionSystemMessageParam,
    ChatCompletionUserMessageParam,
)

from devstack.fake_openai import FakeOpenAIThread
from gateway.settings import GatewaySettings
from tests.integration.cache.harness import (
    KEY_A,
    KEY_B,
    KEY_C,
    GatewayClient,
    records,
    runtime,
    sdk,
    settle,
    spans,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

FRANCE = "What is the capital of France?"
FRANCE_AGAIN = "Which city is the capital of France?"  # cosine ≈ 0.99 on e5-small
SPAIN = "What is the capital of Spain?"  # ≈ 0.89: a different question


async def _ask(
    client: GatewayClient,
    messages: list[ChatCompletionMessageParam] | str,
    key: str = KEY_A,
    headers: dict[str, str] | None = None,
) -> Any:
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    raw = await sdk(client, key).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=messages, extra_headers=headers or {}
    )
    await settle(client)
    return raw


def _system(content: str) -> ChatCompletionSystemMessageParam:
    return {"role": "system", "content": content}


def _user(content: str) -> ChatCompletionUserMessageParam:
    return {"role": "user", "content": content}


def _status(raw: Any) -> tuple[str, str]:
    return raw.headers["floopy-cache"], raw.headers.get("floopy-cache-tier", "")


async def test_paraphrase_above_threshold_hits_below_misses(
    client: GatewayClient, settings: GatewaySettings, fake: FakeOpenAIThread
) -> None:
    served = fake.served["chat"]
    await _ask(client, FRANCE)
    hit = await _ask(client, FRANCE_AGAIN)
    assert _status(hit) == ("HIT", "semantic")
    similarity = float(hit.headers["floopy-cache-similarity"])
    assert 0.98 <= similarity < 1.0
    miss = await _ask(client, SPAIN)
    assert _status(miss) == ("MISS", "")
    assert fake.served["chat"] - served == 2
    _, semantic, below = await records(settings, 3)
    assert (semantic.cache_status, semantic.cache_tier) == ("hit", "semantic")
    assert semantic.cache_similarity == pytest.approx(similarity, abs=1e-4)
    assert semantic.cache_threshold == 0.98
    assert list(semantic.cache_lookup_ms) == ["exact", "semantic"]
    assert list(below.cache_lookup_ms) == ["exact", "semantic", "advanced"]
    assert semantic.cost_usd == 0.0 and semantic.cost_saved_usd
    names = [s.name for s in await spans(settings, semantic.request_id)]
    assert {"cache", "cache.exact", "cache.embed", "cache.semantic"} <= set(names)
    embed = next(s for s in await spans(settings, semantic.request_id) if s.name == "cache.embed")
    assert embed.attributes["model_ref"].startswith("local/multilingual-e5-small")


async def test_threshold_header_raises_but_never_lowers(client: GatewayClient) -> None:
    await _ask(client, FRANCE)
    strict = await _ask(client, FRANCE_AGAIN, headers={"Floopy-Cache-Semantic-Threshold": "0.9999"})
    assert _status(strict) == ("MISS", "")
    lax = await _ask(client, SPAIN, headers={"Floopy-Cache-Semantic-Threshold": "0.1"})
    assert _status(lax) == ("MISS", "")
    lax_hit = await _ask(client, FRANCE_AGAIN, headers={"Floopy-Cache-Semantic-Threshold": "0.5"})
    assert _status(lax_hit) == ("HIT", "exact")  # stored by the strict request's miss


async def test_org_b_never_receives_org_a_semantic_entry(
    client: GatewayClient, fake: FakeOpenAIThread
) -> None:
    served = fake.served["chat"]
    await _ask(client, FRANCE, KEY_A)
    assert _status(await _ask(client, FRANCE, KEY_B)) == ("MISS", "")  # same prompt, same model
    assert _status(await _ask(client, FRANCE_AGAIN, KEY_B)) == ("HIT", "semantic")  # B's own
    assert _status(await _ask(client, FRANCE_AGAIN, KEY_A)) == ("HIT", "semantic")
    assert fake.served["chat"] - served == 2


async def test_advanced_tier_needs_the_same_conversation_before_the_last_turn(
    client: GatewayClient, settings: GatewaySettings
) -> None:
    pirate = _system("You are a pirate. Answer like a pirate.")
    lawyer = _system("You are a formal lawyer. Answer precisely.")
    question = _user("How do I reverse a list in Python?")
    paraphrase = _user("How can I reverse a Python list?")
    await _ask(client, [pirate, question], KEY_C)
    assert _status(await _ask(client, [lawyer, question], KEY_C)) == ("MISS", "")
    hit = await _ask(client, [pirate, paraphrase], KEY_C)
    assert _status(hit) == ("HIT", "advanced")
    different = _user("How do I sort a list in Python?")
    assert _status(await _ask(client, [pirate, different], KEY_C)) == ("MISS", "")
    rows = await records(settings, 4)
    assert [r.cache_tier for r in rows] == ["", "", "advanced", ""]
    assert rows[2].cache_similarity is not None and rows[2].cache_similarity >= 0.9


async def test_embedder_down_fails_open(
    client: GatewayClient, settings: GatewaySettings, fake: FakeOpenAIThread
) -> None:
    served = fake.served["chat"]
    await runtime(client).embedder.aclose()  # its thread pool is gone: every call fails
    answers = [await _ask(client, text) for text in (FRANCE, FRANCE_AGAIN)]
    assert [_status(a) for a in answers] == [("MISS", ""), ("MISS", "")]
    assert fake.served["chat"] - served == 2
    for row in await records(settings, 2):
        assert row.cache_status == "miss" and "EmbeddingUnavailableError" in row.cache_error
    assert runtime(client).cache.stats()["fail_open"] == {"semantic": 2, "advanced": 2}
    assert _status(await _ask(client, FRANCE)) == ("HIT", "exact")  # the exact tier still works
