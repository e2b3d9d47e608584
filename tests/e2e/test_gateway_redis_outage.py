"""Redis stops under a steady request loop: requests keep succeeding, records wait in the
gateway's buffer, and every one of them reaches the stream once Redis is back."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import httpx
import pytest
import redis

from devstack.gateway_process import FakeProviderProcess, GatewayProcess
from devstack.servers import RedisServer
from shared.streams import Sink, stream_key

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

KEY = "sk-floopy-outage"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def _send(client: httpx.Client, count: int) -> None:
    for _ in range(count):
        response = client.post("/v1/chat/completions", json=BODY)
        assert response.status_code == 200, response.text


def _xlen(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(cast(int, client.xlen(stream_key(Sink.REQUESTS))))
    finally:
        client.close()


def test_records_survive_a_redis_outage(
    redis_factory: Callable[[], RedisServer], tmp_path: Path
) -> None:
    server = redis_factory()
    fake = FakeProviderProcess(tmp_path)
    fake.start()
    # an operator's admin key: /health shows its counters to no other
    seed = {
        "orgs": {"org": {}},
        "keys": {"key": {"org": "org", "secret": KEY, "permissions": ["admin"]}},
    }
    (tmp_path / "floopy.json").write_text(json.dumps(seed))
    gateway = GatewayProcess(
        tmp_path,
        redis_url=server.url,
        provider_url=fake.base_url,
        config_file=tmp_path / "floopy.json",
        extra_env={
            "FLOOPY_GATEWAY_OPERATOR_ORGS": '["org"]',
            "FLOOPY_GATEWAY_PUBLISHER__RETRY_MAX_S": "0.3",
            "FLOOPY_GATEWAY_REDIS__SOCKET_TIMEOUT_S": "0.5",
            "FLOOPY_GATEWAY_REDIS__CONNECT_TIMEOUT_S": "0.5",
        },
    )
    gateway.start()
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{gateway.port}", headers={"Authorization": f"Bearer {KEY}"}
    )
    try:
        _send(client, 30)
        server.stop()
        _send(client, 60)  # Redis is down: every request still succeeds
        health = client.get("/health").json()
        assert health["redis"]["reachable"] is False
        assert health["publisher"]["buffered"] > 0 and health["publisher"]["dropped"] == 0
        server.start()
        _send(client, 30)
        deadline = time.monotonic() + 30
        while _xlen(server.url) < 120 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _xlen(server.url) == 120
        health = client.get("/health").json()
        assert health["publisher"]["buffered"] == 0 and health["publisher"]["dropped"] == 0
        assert health["publisher"]["failures"] > 0
    finally:
        client.close()
        gateway.stop()
        fake.stop()
