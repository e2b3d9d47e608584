"""CPU of one upstream call: ``gateway.clients.upstream_http.UpstreamHTTP`` (httpx requests
straight to the aiohttp transport) against an ``httpx.AsyncClient`` over the same transport
(what the gateway used before, and what ``bench/bare_forwarder.py`` still uses), in the same
run, against the fake provider.

Each round sends ``--calls`` whole chat calls from 16 concurrent loops per way, alternating the
ways, and prints the CPU time of this process per call (the fake provider runs in its own
process); the ratio of the two is what carries over between machines.

    python -m bench.upstream_call --calls 4000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import uvloop
from httpx_aiohttp import AiohttpTransport
from pydantic import SecretStr

from devstack.gateway_process import FakeProviderProcess
from gateway.clients.upstream_http import UpstreamHTTP
from gateway.settings import ProviderSettings

__all__ = ["main"]

_BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}]}'
_JSON = {"Content-Type": "application/json"}
_LOOPS = 16


async def _cpu_us_per_call(call: Callable[[], Awaitable[object]], calls: int) -> float:
    async def loop() -> None:
        for _ in range(calls // _LOOPS):
            await call()

    start = time.process_time()
    await asyncio.gather(*(loop() for _ in range(_LOOPS)))
    return (time.process_time() - start) / calls * 1e6


async def _bench(base_url: str, calls: int, rounds: int) -> None:
    settings = ProviderSettings(
        name="fake", kind="openai", base_url=base_url, api_key=SecretStr("sk-x")
    )
    upstream = UpstreamHTTP(settings, {"Authorization": "Bearer sk-x"})
    await upstream.open()
    client = httpx.AsyncClient(
        transport=AiohttpTransport(
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
            trust_env=False,
        ),
        headers={"Authorization": "Bearer sk-x"},
        timeout=httpx.Timeout(settings.timeout_s, connect=settings.connect_timeout_s),
        trust_env=False,
    )
    url = httpx.URL(base_url + "/chat/completions")
    ways: dict[str, Callable[[], Awaitable[object]]] = {
        "httpx.AsyncClient": lambda: client.post(url, content=_BODY, headers=_JSON),
        "UpstreamHTTP": lambda: upstream.post(url, _BODY, _JSON),
    }
    figures: dict[str, list[float]] = {name: [] for name in ways}
    try:
        for call in ways.values():  # warm both pools
            await _cpu_us_per_call(call, calls // 4)
        for n in range(rounds):
            for name, call in ways.items():
                us = await _cpu_us_per_call(call, calls)
                figures[name].append(us)
                print(f"round {n + 1} {name:18} {us:7.1f} us CPU per call", flush=True)
    finally:
        await client.aclose()
        await upstream.aclose()
    client_us = statistics.median(figures["httpx.AsyncClient"])
    ours_us = statistics.median(figures["UpstreamHTTP"])
    print(
        f"RESULT upstream_call client_us={client_us:.1f} upstream_http_us={ours_us:.1f} "
        f"ratio={ours_us / client_us:.2f}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="floopy-upstream-") as tmp:
        fake = FakeProviderProcess(Path(tmp))
        fake.start()
        try:
            uvloop.run(_bench(fake.base_url, args.calls, args.rounds))
        finally:
            fake.stop()


if __name__ == "__main__":
    main()
