"""End-to-end lag: from the moment the client has its answer to the moment the request's row is
visible in ClickHouse, at a steady load.

A program, not a test. Starts real Redis and ClickHouse (Debian's packages, temp dirs), one
ingester worker with its default settings (batch age, read block), the fake provider and the
gateway (1 worker), then sends a fixed rate of chat completions for ``--seconds``. A poller asks
ClickHouse every ``--poll-ms`` which of the outstanding request ids are visible; each id's lag is
its first sighting minus the end of its response, so the resolution is the poll interval plus one
query.

    python -m bench.e2e_lag --rate 100 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from clickhouse_driver import Client

from bench.load import open_loop
from devstack.gateway_process import FakeProviderProcess, GatewayProcess
from devstack.servers import ClickHouseServer, RedisServer

__all__ = ["main"]

KEY = "sk-floopy-bench-lag"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}


@dataclass
class Tracker:
    """Response end times by request id, and the lag of each id once its row was seen."""

    answered_at: dict[str, float] = field(default_factory=dict)
    lag_ms: dict[str, float] = field(default_factory=dict)
    failed: int = 0
    sending: bool = True

    def outstanding(self) -> list[str]:
        return [rid for rid in self.answered_at if rid not in self.lag_ms]


async def send(url: str, rate: float, seconds: float, tracker: Tracker) -> None:
    """Open loop: one request every 1/rate s, whatever the answers do."""
    headers = {"Authorization": f"Bearer {KEY}"}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def one() -> None:
            response = await client.post(url, json=BODY, headers=headers)
            done = time.time()
            request_id = response.headers.get("floopy-request-id")
            if response.status_code != 200 or request_id is None:
                tracker.failed += 1
                return
            tracker.answered_at[request_id] = done

        await open_loop(rate, seconds, one)
    tracker.sending = False


def visible(client: Client, ids: list[str]) -> list[str]:
    rows = client.execute(
        "SELECT request_id FROM requests WHERE request_id IN %(ids)s", {"ids": tuple(ids)}
    )
    return [row[0] for row in rows]


async def poll(client: Client, tracker: Tracker, poll_s: float, drain_s: float) -> None:
    deadline: float | None = None
    while True:
        ids = tracker.outstanding()
        if ids:
            seen = await asyncio.to_thread(visible, client, ids)
            now = time.time()
            for request_id in seen:
                tracker.lag_ms[request_id] = (now - tracker.answered_at[request_id]) * 1000
        if not tracker.sending:
            deadline = deadline or time.monotonic() + drain_s
            if not tracker.outstanding() or time.monotonic() > deadline:
                return
        await asyncio.sleep(poll_s)


def start_ingester(directory: Path, redis: RedisServer, clickhouse: ClickHouseServer) -> ExitStack:
    env = {
        "FLOOPY_INGESTER_REDIS__URL": redis.url,
        "FLOOPY_INGESTER_CLICKHOUSE__PORT": str(clickhouse.port),
        "FLOOPY_INGESTER_SPOOL_DIR": str(directory / "spool"),
        "FLOOPY_INGESTER_DEAD_LETTER_DIR": str(directory / "dead-letter"),
    }
    bin_dir = Path(sys.executable).parent
    full_env = {**os.environ, **env}
    subprocess.run([str(bin_dir / "floopy-ingester"), "migrate"], env=full_env, check=True)
    stack = ExitStack()
    log = stack.enter_context((directory / "ingester.log").open("ab"))
    process = subprocess.Popen(
        [str(bin_dir / "floopy-ingester"), "worker"], env=full_env, stdout=log, stderr=log
    )

    def stop() -> None:
        process.terminate()
        process.wait(30)

    stack.callback(stop)
    return stack


def report(tracker: Tracker, rate: float, seconds: float) -> None:
    lags = sorted(tracker.lag_ms.values())
    answered = len(tracker.answered_at)
    missing = answered - len(lags)
    print(
        f"steady load {rate:g} req/s for {seconds:g} s: "
        f"{answered} answered, {tracker.failed} failed"
    )
    if len(lags) < 2:
        print("too few rows seen to report a lag")
        return
    q = statistics.quantiles(lags, n=100)
    print(
        f"lag response → row visible: p50 {q[49]:.0f} ms  p90 {q[89]:.0f} ms  p99 {q[98]:.0f} ms  "
        f"max {lags[-1]:.0f} ms  (not seen within the drain window: {missing})"
    )
    print(
        f"RESULT e2e_lag p50_ms={q[49]:.0f} p99_ms={q[98]:.0f} max_ms={lags[-1]:.0f} "
        f"rows={len(lags)} missing={missing}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=100.0, help="requests/s")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--poll-ms", type=float, default=50.0)
    parser.add_argument("--drain-s", type=float, default=30.0, help="wait for the last rows")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="floopy-lag-") as tmp, ExitStack() as stack:
        directory = Path(tmp)
        redis = RedisServer(directory / "redis")
        redis.start()
        stack.callback(redis.stop)
        clickhouse = ClickHouseServer(directory / "clickhouse")
        clickhouse.start()
        stack.callback(clickhouse.stop)
        stack.enter_context(start_ingester(directory, redis, clickhouse))
        fake = FakeProviderProcess(directory)
        fake.start()
        stack.callback(fake.stop)
        gateway = GatewayProcess(
            directory,
            redis_url=redis.url,
            provider_url=fake.base_url,
            api_keys={KEY: {"org_id": "org-bench", "key_id": "key-bench"}},
        )
        gateway.start()
        stack.callback(gateway.stop)
        client = Client(host="127.0.0.1", port=clickhouse.port, database="floopy")
        stack.callback(client.disconnect)
        tracker = Tracker()

        async def run() -> None:
            await asyncio.gather(
                send(f"{gateway.base_url}/chat/completions", args.rate, args.seconds, tracker),
                poll(client, tracker, args.poll_ms / 1000, args.drain_s),
            )

        asyncio.run(run())
        report(tracker, args.rate, args.seconds)


if __name__ == "__main__":
    main()
