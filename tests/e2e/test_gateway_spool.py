"""Issue 9, item 6: the gateway is SIGKILLed in the middle of a Redis outage. Records and usage
its two workers held reached the disk spool they share; the next gateway (two workers again,
racing to drain) on the same volume sends them once Redis is back: every answered request is in
ClickHouse exactly once (raw rows, no FINAL), and the key's usage counters count every request
once."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

import httpx
import pytest

from devstack.servers import ClickHouseServer, RedisServer
from gateway.clients.outage_spool import USAGE
from gateway.clients.publisher import spooled_record
from shared.codec import decode_records
from shared.spool.reader import count_lines, read_batches
from shared.spool.writer import pending_files
from shared.streams import Sink
from tests.e2e.harness import API_KEY, KEY_ID, ORG_ID, Floopy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

REQUESTS = 2_000


class _FastFailure(TypedDict):
    """The gateway's settings to give up on Redis quickly (a TypedDict: mypy then knows it
    holds none of ``start_gateway``'s own parameters)."""

    FLOOPY_GATEWAY_PUBLISHER__RETRY_MAX_S: str
    FLOOPY_GATEWAY_REDIS__SOCKET_TIMEOUT_S: str
    FLOOPY_GATEWAY_REDIS__CONNECT_TIMEOUT_S: str


def _health(floopy: Floopy) -> dict[str, Any]:
    """One worker's view (whichever answers)."""
    result: dict[str, Any] = httpx.get(f"{floopy.gateway_url}/health", timeout=5).json()
    return result


def _until_every_worker_knows_the_key(floopy: Floopy, workers: int) -> None:
    """A worker that never saw the key refuses it while Redis is down, by design, and which
    worker accepts a connection is the kernel's choice: ask /health with the key, one connection
    each, until every worker has answered it (and so cached the key)."""
    seen: set[int] = set()
    deadline = time.monotonic() + 60
    while len(seen) < workers:
        assert time.monotonic() < deadline, f"only workers {seen} answered /health"
        answer = httpx.get(
            f"{floopy.gateway_url}/health",
            headers={"Authorization": f"Bearer {API_KEY}", "Connection": "close"},
            timeout=5,
        ).json()
        seen.add(answer["worker"]["pid"])


def _on_disk(directory: Path, name: str) -> int:
    """Lines of a spool name on disk (one per record or usage entry)."""
    return sum(count_lines(p) for p in pending_files(directory, name) if p.exists())


def _spans_on_disk(directory: Path) -> int:
    """Span records in the spool's spans entries (each a request's spans)."""
    return sum(
        len(decode_records(Sink.SPANS, spooled_record(line)))
        for path in pending_files(directory, "spans")
        if path.exists()
        for batch in read_batches(path, 1_000)
        for line in batch.payloads
    )


async def test_gateway_sigkilled_in_a_redis_outage_loses_and_doubles_nothing(
    tmp_path: Path, redis_factory: Callable[[], RedisServer], clickhouse_server: ClickHouseServer
) -> None:
    redis_server = redis_factory()
    floopy = Floopy(tmp_path, redis_server, clickhouse_server)
    fast_failure: _FastFailure = {
        "FLOOPY_GATEWAY_PUBLISHER__RETRY_MAX_S": "0.3",
        "FLOOPY_GATEWAY_REDIS__SOCKET_TIMEOUT_S": "0.5",
        "FLOOPY_GATEWAY_REDIS__CONNECT_TIMEOUT_S": "0.5",
    }
    # the key is an operator's admin key too, so /health names the worker that answered
    floopy.config["keys"][KEY_ID]["permissions"] = ["proxy", "read", "admin"]
    floopy.extra_env["FLOOPY_GATEWAY_OPERATOR_ORGS"] = json.dumps([ORG_ID])
    try:
        floopy.start_provider()
        floopy.start_ingester()
        floopy.start_gateway(workers=2, **fast_failure)
        _until_every_worker_knows_the_key(floopy, workers=2)
        warm = await floopy.send_sessions([f"warm-{i}" for i in range(20)], 1)
        floopy.wait_for(lambda: floopy.session_rows("warm-%")[0] == 20, what="the warm-up rows")

        await asyncio.to_thread(redis_server.stop)
        started = time.monotonic()
        answered = await floopy.send_sessions([f"out-{i}" for i in range(REQUESTS)])
        print(f"{len(answered)} requests answered in {time.monotonic() - started:.1f}s")
        assert len(answered) == REQUESTS
        spool_dir = tmp_path / "gateway-spool"
        floopy.wait_for(
            lambda: (
                _on_disk(spool_dir, "requests") == REQUESTS
                and _on_disk(spool_dir, USAGE) == REQUESTS
            ),
            what="every record and usage entry of the outage on disk",
        )
        health = _health(floopy)
        assert health["redis"]["reachable"] is False
        # the counters are shown to an operator key only (issue 10); liveness is enough here
        print(f"before SIGKILL, one worker: {health}")
        assert _on_disk(spool_dir, "spans") == REQUESTS  # one entry holds a request's spans
        assert _spans_on_disk(spool_dir) >= 2 * REQUESTS

        floopy.stop("gateway", sig=signal.SIGKILL)
        await asyncio.to_thread(redis_server.start)
        floopy.start_gateway(workers=2, **fast_failure)

        floopy.wait_for(
            lambda: floopy.session_rows("out-%")[1] == REQUESTS,
            timeout_s=90,
            what=f"{REQUESTS} outage sessions in ClickHouse (have {floopy.session_rows('out-%')})",
        )
        await asyncio.sleep(1)  # a duplicate would arrive in the same drain; give it time
        assert floopy.session_rows("out-%") == (REQUESTS, REQUESTS, 0)
        assert floopy.session_rows("warm-%") == (20, 20, 0)
        assert not any(pending_files(spool_dir, name) for name in (*Sink, USAGE))

        tokens, counted = await asyncio.to_thread(
            floopy.tokens_recorded_and_counted, redis_server.url
        )
        assert counted == tokens, "each request's usage counted exactly once"
        assert len(warm) == 20
    finally:
        floopy.stop_all()
