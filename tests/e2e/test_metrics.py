"""Issue 12: ``GET /metrics`` on the gateway (two granian workers, multiprocess mode) and on an
ingester (its metrics port) in Prometheus text format; the figures move as traffic goes
through, and ``/health`` reads the same counters."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack.servers import ClickHouseServer, RedisServer, free_port
from tests.e2e.harness import ORG_ID, Floopy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

REQUESTS = 12
OPS_KEY = "sk-floopy-metrics-operator"


@pytest.fixture
def stack(
    tmp_path: Path, redis_server: RedisServer, clickhouse_server: ClickHouseServer
) -> Iterator[tuple[Floopy, int]]:
    floopy = Floopy(tmp_path, redis_server, clickhouse_server)
    floopy.extra_env = {
        "FLOOPY_GATEWAY_REDIS__STREAM_SHARDS": "2",
        "FLOOPY_GATEWAY_OPERATOR_ORGS": f'["{ORG_ID}"]',
    }
    floopy.config["keys"]["key-ops"] = {
        "org": ORG_ID,
        "secret": OPS_KEY,
        "permissions": ["admin"],
    }
    ingester_port = free_port()
    floopy.start_provider()
    floopy.start_ingester(
        FLOOPY_INGESTER_METRICS_PORT=str(ingester_port),
        FLOOPY_INGESTER_METRICS_HOST="127.0.0.1",
        FLOOPY_INGESTER_METRICS_INTERVAL_S="0.5",
        FLOOPY_INGESTER_REDIS__STREAM_SHARDS="2",
    )
    floopy.start_gateway(workers=2)
    try:
        yield floopy, ingester_port
    finally:
        floopy.stop_all()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
"""A scrape: every sample as (name, sorted labels) -> value."""


def scrape(url: str) -> Samples:
    """Every sample as (name, sorted labels) -> value."""
    text = httpx.get(url, timeout=5, headers={"authorization": f"Bearer {OPS_KEY}"}).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: Samples, name: str, **want: str) -> float:
    return sum(
        value
        for (sample, labels), value in samples.items()
        if sample == name and all((k, v) in labels for k, v in want.items())
    )


def test_metrics_move_with_traffic(stack: tuple[Floopy, int]) -> None:
    floopy, ingester_port = stack
    gateway_url = f"{floopy.gateway_url}/metrics"
    ingester_url = f"http://127.0.0.1:{ingester_port}/metrics"
    floopy.wait_for(lambda: httpx.get(ingester_url, timeout=1).status_code == 200, what="ingester")
    gw0, ing0 = scrape(gateway_url), scrape(ingester_url)

    client = floopy.sdk(max_retries=0)
    for i in range(REQUESTS):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"metrics {i}"}]
        )
    with pytest.raises(Exception, match="401"):
        floopy.sdk(api_key="sk-floopy-not-a-key", max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "no"}]
        )
    floopy.wait_for(lambda: floopy.request_counts()[1] == REQUESTS + 1, what="rows")

    def ingested() -> bool:
        now = scrape(ingester_url)
        done = total(now, "floopy_ingester_records_total", sink="requests", event="acked")
        return (
            done - total(ing0, "floopy_ingester_records_total", sink="requests", event="acked")
            >= REQUESTS + 1
        )

    floopy.wait_for(ingested, what="ingester counters")
    time.sleep(1.2)  # one more round of the stream gauges
    gw, ing = scrape(gateway_url), scrape(ingester_url)

    def moved(now: Samples, before: Samples, name: str, **labels: str) -> float:
        return total(now, name, **labels) - total(before, name, **labels)

    ok = {"status": "200", "provider": "openai", "model": "gpt-4o-mini"}
    assert moved(gw, gw0, "floopy_requests_total", **ok) == REQUESTS
    assert moved(gw, gw0, "floopy_requests_total", status="401", model="-") == 1
    assert moved(gw, gw0, "floopy_request_duration_seconds_count", status="200") == REQUESTS
    assert moved(gw, gw0, "floopy_stage_duration_seconds_count", stage="auth") == REQUESTS + 1
    assert moved(gw, gw0, "floopy_stage_duration_seconds_count", stage="dispatch") == REQUESTS
    assert moved(gw, gw0, "floopy_records_published_total") >= REQUESTS + 1  # and spans
    assert total(gw, "floopy_records_dropped_total") == 0
    assert ("floopy_breaker_state", (("provider", "openai"),)) in gw
    assert moved(gw, gw0, "floopy_gateway_events_total", component="key_cache") >= 1

    assert (
        moved(ing, ing0, "floopy_ingester_records_total", sink="requests", event="inserted")
        == REQUESTS + 1
    )
    assert moved(ing, ing0, "floopy_clickhouse_insert_duration_seconds_count", sink="requests") >= 1
    for shard in ("0", "1"):
        labels = (("shard", shard), ("sink", "requests"))
        assert ("floopy_stream_pending", labels) in ing, sorted(k for k in ing if "stream" in k[0])
        assert ing[("floopy_stream_pending", labels)] == 0
        assert ing[("floopy_stream_lag", labels)] == 0
    assert ("floopy_spool_bytes", (("sink", "requests"),)) in ing

    assert httpx.get(gateway_url, timeout=5).status_code == 403  # the counters need the key
    auth = {"authorization": f"Bearer {OPS_KEY}"}
    health = httpx.get(f"{floopy.gateway_url}/health", timeout=5, headers=auth).json()
    # one worker's share of the same counter (which worker answers is the kernel's choice; the
    # mechanism itself is checked in tests/unit/shared/test_metrics.py)
    published = health["publisher"]["published"]
    assert 0 <= published <= total(gw, "floopy_records_published_total")
