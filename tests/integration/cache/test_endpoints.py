"""``/v1/embeddings`` (cached by the exact tier), ``/v1/models``, the provider-backed embedder
and the org cache settings' admin route, in-process against the fake provider and real Redis."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from devstack.fake_openai import FakeOpenAIThread
from devstack.servers import RedisServer
from gateway.settings import GatewaySettings
from tests.integration.cache.harness import (
    KEY_A,
    KEY_B,
    GatewayClient,
    records,
    sdk,
    settings_for,
    settle,
    spans,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ADMIN = {"Authorization": f"Bearer {KEY_A}"}


async def test_embeddings_are_routed_priced_recorded_and_cached(
    client: GatewayClient, settings: GatewaySettings, fake: FakeOpenAIThread
) -> None:
    served = fake.served["embeddings"]
    answers = []
    for _ in range(2):
        raw = await sdk(client).embeddings.with_raw_response.create(
            model="text-embedding-3-small", input=["hello", "world"]
        )
        await settle(client)
        answers.append(raw)
    assert [a.headers["floopy-cache"] for a in answers] == ["MISS", "HIT"]
    first, second = (a.parse() for a in answers)
    assert len(first.data) == 2 and len(first.data[0].embedding) == 1536
    assert second.data[1].embedding == first.data[1].embedding
    assert fake.served["embeddings"] - served == 1
    miss, hit = await records(settings, 2)
    assert miss.endpoint == hit.endpoint == "/v1/embeddings"
    assert miss.prompt_tokens > 0 and miss.cost_usd is not None and miss.cost_usd > 0
    assert (hit.cache_status, hit.cache_tier, hit.cost_usd) == ("hit", "exact", 0.0)
    assert hit.cost_saved_usd == miss.cost_usd and list(hit.cache_lookup_ms) == ["exact"]


async def test_embeddings_refuse_a_bad_body(client: GatewayClient) -> None:
    with pytest.raises(openai.BadRequestError):
        await sdk(client).embeddings.create(model="text-embedding-3-small", input=[])
    response = await client.post("/v1/embeddings", json={"input": "x"}, headers=ADMIN)
    assert response.status_code == 400 and response.json()["error"]["code"] == "BAD_REQUEST"


async def test_models_lists_what_the_key_can_reach(client: GatewayClient) -> None:
    listed = await sdk(client).models.list()
    ids = {m.id for m in listed.data}
    assert {"gpt-4o-mini", "text-embedding-3-small"} <= ids
    assert all(m.object == "model" and m.owned_by == "openai" for m in listed.data)
    with pytest.raises(openai.AuthenticationError):
        await sdk(client, "sk-floopy-nobody").models.list()


async def test_org_cache_settings_through_the_admin_api(client: GatewayClient) -> None:
    org = (await client.get("/admin/orgs/org-a", headers=ADMIN)).json()
    assert org["cache"]["tiers"] == ["exact", "semantic", "advanced"]
    assert org["cache"]["ttl_s"] == 7 * 86_400
    put = await client.put(
        "/admin/orgs/org-a/cache",
        json={"tiers": ["exact"], "semantic_threshold": 0.97},
        headers=ADMIN,
    )
    assert put.status_code == 200, put.text
    org = (await client.get("/admin/orgs/org-a", headers=ADMIN)).json()
    assert org["cache"]["tiers"] == ["exact"] and org["cache"]["semantic_threshold"] == 0.97
    assert org["cache"]["ttl_s"] == 7 * 86_400  # fields not sent are kept
    bad = await client.put("/admin/orgs/org-a/cache", json={"ttl_s": 0}, headers=ADMIN)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "BAD_REQUEST"
    unknown = await client.put("/admin/orgs/org-a/cache", json={"tier": []}, headers=ADMIN)
    assert unknown.status_code == 400
    other = await client.put("/admin/orgs/org-b/cache", json={"tiers": []}, headers=ADMIN)
    assert other.status_code == 404  # another org's settings, for a non-operator admin key
    renamed = await client.put("/admin/orgs/org-a", json={"name": "A2"}, headers=ADMIN)
    assert renamed.status_code == 403  # plans are operators' business; settings are kept anyway


async def test_provider_embedder_is_routed_priced_and_a_span(
    redis_server: RedisServer, fake: FakeOpenAIThread, tmp_path: Path
) -> None:
    settings = settings_for(
        redis_server.url, fake.base_url, tmp_path, ("semantic",), embedder={"kind": "provider"}
    )
    async with GatewayClient(settings) as client:
        served = fake.served["embeddings"]
        for _ in range(2):
            await sdk(client, KEY_B).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "Name a colour."}]
            )
            await settle(client)
        assert fake.served["embeddings"] - served == 2  # one per request: lookup, reused to write
    found = await records(settings, 2)
    # a third record was seen once under a loaded full run: say what it was if it comes back
    assert len(found) == 2, [(r.request_id, r.endpoint, r.status_code, r.error_code) for r in found]
    miss, hit = found
    assert miss.cache_status == "miss"
    assert (hit.cache_status, hit.cache_tier) == ("hit", "semantic")
    assert hit.cache_similarity == pytest.approx(1.0, abs=1e-4)
    embed = next(s for s in await spans(settings, hit.request_id) if s.name == "cache.embed")
    assert embed.attributes["model_ref"] == "openai/text-embedding-3-small"
    assert int(embed.attributes["tokens"]) > 0 and float(embed.attributes["cost_usd"]) > 0
