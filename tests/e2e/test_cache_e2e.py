"""The cache through real processes: the gateway under granian, the fake provider, an ingester,
Redis and ClickHouse. Hits and misses from the ``openai`` SDK (streamed and not) land in
ClickHouse with their cache fields, and the rollups' cache hits and cost saved equal the raw
rows' — also after every record was delivered a second time."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from openai.types.chat import ChatCompletionMessageParam
from redis import Redis

from devstack.servers import ClickHouseServer, RedisServer
from ingester.delivery import Delivery
from ingester.rollups import Rollups
from shared.codec import decode_record
from shared.settings import ClickHouseSettings
from shared.streams import RECORD_FIELD, Sink, stream_key
from tests.e2e.harness import API_KEY, ORG_ID, Floopy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

QUESTIONS = ["What is the capital of France?", "Name a prime number.", "Say hello."]


@pytest.fixture
def floopy(
    tmp_path: Path, redis_server: RedisServer, clickhouse_server: ClickHouseServer
) -> Iterator[Floopy]:
    stack = Floopy(tmp_path, redis_server, clickhouse_server)
    stack.config["orgs"][ORG_ID]["cache"] = {"tiers": ["exact"]}
    stack.start_provider()
    stack.start_ingester()
    stack.start_gateway()
    yield stack
    stack.stop_all()


def _ask(floopy: Floopy, question: str, *, stream: bool) -> str:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": question}]
    if stream:
        streamed = floopy.sdk().chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=messages,
            stream=True,
        )
        text = "".join(c.choices[0].delta.content or "" for c in streamed.parse() if c.choices)
        assert text.startswith("Hello from the fake provider")
        return streamed.headers["floopy-cache"]
    response = floopy.sdk().chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=messages,
    )
    return response.headers["floopy-cache"]


def test_hits_reach_clickhouse_and_the_rollups_under_redelivery(floopy: Floopy) -> None:
    statuses = []
    for round_ in range(4):
        for i, question in enumerate(QUESTIONS):
            statuses.append(_ask(floopy, question, stream=(round_ + i) % 2 == 1))
            if round_ == 0:  # the miss's write runs after the response: let it land

                def written(n: int = i) -> bool:
                    return _stored(floopy) > n

                floopy.wait_for(written, 10, "the cache write")
    assert statuses[:3] == ["MISS"] * 3 and statuses[3:] == ["HIT"] * 9
    total = len(statuses)
    floopy.wait_for(lambda: floopy.request_counts()[1] == total, what="every row")
    raw = floopy.query(
        "SELECT countIf(cache_status = 'hit'), countIf(cache_tier = 'exact'), "
        "sum(ifNull(cost_saved_usd, 0)), sum(ifNull(cost_usd, 0)) FROM requests FINAL"
    )[0]
    assert raw[0] == raw[1] == 9
    assert raw[2] == pytest.approx(3 * raw[3])  # each question's miss cost, saved three times

    ch = ClickHouseSettings(port=floopy.clickhouse.port, database=floopy.database)
    _redeliver_all(floopy, ch)
    assert floopy.request_counts() == (total, total)
    rollups = Rollups(ch)
    try:
        rollups.ensure_tables()
        rollups.rebuild(0, 2**31)
    finally:
        rollups.close()
    rolled = floopy.query(
        "SELECT sum(requests), sum(cache_hits), sum(cost_saved_usd) FROM rollup_hourly FINAL"
    )[0]
    assert (rolled[0], rolled[1]) == (total, 9)
    assert rolled[2] == pytest.approx(raw[2])


def _stored(floopy: Floopy) -> int:
    redis = Redis.from_url(floopy.redis.url)
    try:
        return len(cast(list[bytes], redis.keys(f"{floopy.tag}:cache:*")))
    finally:
        redis.close()


def _redeliver_all(floopy: Floopy, ch: ClickHouseSettings) -> None:
    """Insert every record of the stream a second time, as a redelivery or replay would."""
    redis = Redis.from_url(floopy.redis.url)
    try:
        entries = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            redis.xrange(stream_key(Sink.REQUESTS, floopy.tag)),
        )
    finally:
        redis.close()
    payloads = [fields[RECORD_FIELD] for _, fields in entries]
    assert {decode_record(Sink.REQUESTS, p).org_id for p in payloads} == {ORG_ID}
    delivery = Delivery(ch, floopy.root / "redelivery-dead")
    try:
        report = delivery.deliver(Sink.REQUESTS, payloads)
    finally:
        delivery.close()
    assert report.inserted == len(payloads)


NODE_SDK = Path(__file__).resolve().parents[1] / "node"


def test_the_node_sdk_consumes_a_replayed_stream(floopy: Floopy) -> None:
    """The official openai Node SDK (installed by bootstrap.sh from package-lock.json) reads a
    streamed hit exactly as it read the provider's stream: same text, a usage chunk."""
    assert (NODE_SDK / "node_modules" / "openai").is_dir(), "run deploy/local/bootstrap.sh"

    def ask() -> dict[str, Any]:
        done = subprocess.run(
            ["node", str(NODE_SDK / "stream_hit.mjs")],
            env={
                **os.environ,
                "FLOOPY_BASE_URL": f"{floopy.gateway_url}/v1",
                "FLOOPY_API_KEY": API_KEY,
                "FLOOPY_PROMPT": "Node asks: what is the capital of France?",
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        answer: dict[str, Any] = json.loads(done.stdout)
        return answer

    stored = _stored(floopy)
    first = ask()
    # the answer is written to the cache after the response (a batch of writes, ~2 ms later)
    floopy.wait_for(lambda: _stored(floopy) > stored, 10, "the cache write")
    second = ask()
    assert (first["cache"], second["cache"]) == ("MISS", "HIT")
    assert second["tier"] == "exact"
    assert first["text"].startswith("Hello from the fake provider")
    assert second["text"] == first["text"]
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    assert [second["usage"][k] for k in counts] == [first["usage"][k] for k in counts]
    assert second["usage"]["total_tokens"] > 0
    assert second["chunks"] > 2
