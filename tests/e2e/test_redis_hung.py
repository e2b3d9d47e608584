"""Redis hangs (SIGSTOP: connections stay open, nothing answers) under a running gateway, then
comes back (SIGCONT). A hang differs from a crash: what the gateway had written to the socket
before it gave up is still there, and Redis runs it when it resumes. Requests keep being answered
meanwhile (the limits fail open after the socket timeout); afterwards every answered request has
one raw row in ClickHouse and its usage is counted exactly once: a batch of records or of usage
that timed out while Redis hung, and that Redis ran when it resumed, is sent again (records) or
was spooled (usage), and the records' fences (``gateway.clients.publisher``) and the usage
entries' identities (``UsageCounters.add``) keep the second copy out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from devstack.servers import ClickHouseServer, RedisServer
from tests.e2e.harness import Floopy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

REQUESTS = 300


async def test_a_hung_redis_neither_stops_answers_nor_loses_records_or_usage(
    tmp_path: Path, redis_factory: Callable[[], RedisServer], clickhouse_server: ClickHouseServer
) -> None:
    redis_server = redis_factory()
    floopy = Floopy(tmp_path, redis_server, clickhouse_server)
    try:
        floopy.start_provider()
        floopy.start_ingester()
        floopy.start_gateway(
            FLOOPY_GATEWAY_PUBLISHER__RETRY_MAX_S="0.3",
            FLOOPY_GATEWAY_REDIS__SOCKET_TIMEOUT_S="0.5",
            FLOOPY_GATEWAY_REDIS__CONNECT_TIMEOUT_S="0.5",
        )
        warm = await floopy.send_sessions([f"warm-{i}" for i in range(20)], 1)
        floopy.wait_for(lambda: floopy.session_rows("warm-%")[1] == 20, what="the warm-up rows")

        started = time.monotonic()
        sending = asyncio.create_task(floopy.send_sessions([f"hung-{i}" for i in range(REQUESTS)]))
        await asyncio.sleep(0.5)  # some requests before the hang, some during, some after
        with redis_server.hung():
            await asyncio.sleep(4)
        answered = await sending
        print(f"{len(answered)} requests answered in {time.monotonic() - started:.1f}s")
        assert len(answered) == REQUESTS

        floopy.wait_for(
            lambda: floopy.session_rows("hung-%")[1] == REQUESTS,
            timeout_s=90,
            what=f"{REQUESTS} sessions in ClickHouse (have {floopy.session_rows('hung-%')})",
        )
        await asyncio.sleep(1)  # a late duplicate would come with the same drain
        raw, sessions, doubled = floopy.session_rows("hung-%")
        assert (raw, sessions, doubled) == (REQUESTS, REQUESTS, 0), "a record added twice"

        tokens, counted = await asyncio.to_thread(
            floopy.tokens_recorded_and_counted, redis_server.url
        )
        print(f"usage counted {counted} tokens for {tokens} recorded")
        assert counted == tokens, "each request's usage counted exactly once"
        assert len(warm) == 20
    finally:
        floopy.stop_all()
