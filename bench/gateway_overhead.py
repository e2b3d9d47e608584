"""Gateway overhead: the same load sent straight to the fake provider and through the gateway,
in the same run (DESIGN.md §9: ratios, because absolute figures drift on shared machines).

Starts real Redis (devstack.servers), the fake provider and the gateway (1 worker, logging and
the access log on) on loopback, then for each target:

- a moderate fixed rate from an async client (open loop: requests leave on schedule whatever the
  answers do), for p50/p99 latency and the gateway's overhead over direct;
- ``wrk`` at 32 connections for throughput (req/s) and its latency percentiles;

and prints the gateway worker's CPU time per request and RSS. Bounded by ``--seconds``.

    python -m bench.gateway_overhead --rate 200 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from devstack.gateway_process import FakeProviderProcess, GatewayProcess
from devstack.servers import RedisServer

__all__ = ["main"]

KEY = "sk-floopy-bench"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Latencies:
    p50_ms: float
    p99_ms: float
    sent: int
    failed: int


async def fixed_rate(url: str, rate: float, seconds: float) -> Latencies:
    """Open-loop load: one request every 1/rate s, each timed from its scheduled start."""
    payload = json.dumps(BODY).encode()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    latencies: list[float] = []
    failed = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:

        async def one() -> None:
            nonlocal failed
            start = time.perf_counter()
            async with session.post(url, data=payload, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    failed += 1
            latencies.append((time.perf_counter() - start) * 1000)

        for _ in range(20):  # warm the connections up
            await one()
        latencies.clear()
        tasks = []
        began = time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = began + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    quantiles = statistics.quantiles(latencies, n=100)
    return Latencies(quantiles[49], quantiles[98], len(latencies), failed)


@dataclass
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: str


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(url: str, seconds: float, connections: int, script: Path) -> WrkResult:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    ).stdout
    percent = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.MULTILINE))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return WrkResult(
        float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        _ms(percent["50"]),
        _ms(percent["99"]),
        int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        errors.group(1) if errors else "0",
    )


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _wrk_script(directory: Path) -> Path:
    script = directory / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = '{json.dumps(BODY)}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {KEY}"\n'
    )
    return script


def bench_config() -> dict[str, object]:
    """One org with the default rate limit (10,000/min: never reached at the fixed rate, but
    checked on every request) and one key with its own generous limits: auth, limits and
    usage accounting all run, as in production."""
    return {
        "orgs": {"org-bench": {"name": "bench", "rate_limit": "100000000;w=60"}},
        "keys": {
            "key-bench": {
                "org": "org-bench",
                "secret": KEY,
                "limits": {"rate_limit_policy": "100000000;w=60", "daily_tokens": 10**12},
            }
        },
    }


def bench(directory: Path, rate: float, seconds: float, connections: int) -> None:
    redis = RedisServer(directory / "redis")
    redis.start()
    fake = FakeProviderProcess(directory)
    fake.start()
    config = directory / "floopy.json"
    config.write_text(json.dumps(bench_config()))
    gateway = GatewayProcess(
        directory,
        redis_url=redis.url,
        provider_url=fake.base_url,
        config_file=config,
        extra_env={"FLOOPY_GATEWAY_LOG_LEVEL": "info", "FLOOPY_GATEWAY_ACCESS_LOG": "true"},
    )
    try:
        gateway.start()
        worker = gateway.pids[-1]
        targets = {
            "direct": f"{fake.base_url}/chat/completions",
            "gateway": f"{gateway.base_url}/chat/completions",
        }
        fixed = {name: asyncio.run(fixed_rate(url, rate, seconds)) for name, url in targets.items()}
        script = _wrk_script(directory)
        loaded: dict[str, WrkResult] = {}
        cpu_before = cpu_seconds(gateway.pids)
        loaded["gateway"] = run_wrk(targets["gateway"], seconds, connections, script)
        cpu_per_request_ms = (
            (cpu_seconds(gateway.pids) - cpu_before) / loaded["gateway"].requests * 1000
        )
        loaded["direct"] = run_wrk(targets["direct"], seconds, connections, script)
        report(fixed, loaded, rate, connections, cpu_per_request_ms, rss_mib(worker))
    finally:
        gateway.stop()
        fake.stop()
        redis.stop()


def report(  # noqa: PLR0917 - one call site, all figures of one run
    fixed: dict[str, Latencies],
    loaded: dict[str, WrkResult],
    rate: float,
    connections: int,
    cpu_ms: float,
    rss: float,
) -> None:
    d, g = fixed["direct"], fixed["gateway"]
    print(
        f"fixed rate {rate:g} req/s ({g.sent} requests each, "
        f"failed direct/gateway {d.failed}/{g.failed})"
    )
    print(f"  direct   p50 {d.p50_ms:7.3f} ms  p99 {d.p99_ms:7.3f} ms")
    print(f"  gateway  p50 {g.p50_ms:7.3f} ms  p99 {g.p99_ms:7.3f} ms")
    print(
        f"  overhead p50 {g.p50_ms - d.p50_ms:+7.3f} ms  p99 {g.p99_ms - d.p99_ms:+7.3f} ms"
        f"  (ratio p50 {g.p50_ms / d.p50_ms:.2f}, p99 {g.p99_ms / d.p99_ms:.2f})"
    )
    dl, gl = loaded["direct"], loaded["gateway"]
    print(f"wrk, {connections} connections")
    print(
        f"  direct   {dl.requests_per_s:9.0f} req/s  p50 {dl.p50_ms:7.2f} ms  "
        f"p99 {dl.p99_ms:7.2f} ms  non-2xx {dl.errors}"
    )
    print(
        f"  gateway  {gl.requests_per_s:9.0f} req/s  p50 {gl.p50_ms:7.2f} ms  "
        f"p99 {gl.p99_ms:7.2f} ms  non-2xx {gl.errors}"
    )
    print(f"  ratio gateway/direct req/s {gl.requests_per_s / dl.requests_per_s:.2f}")
    print(
        f"gateway: CPU {cpu_ms:.3f} ms per request (all gateway processes), "
        f"worker RSS {rss:.1f} MiB"
    )
    print(
        f"RESULT gateway_overhead p50_overhead_ms={g.p50_ms - d.p50_ms:.3f} "
        f"p99_overhead_ms={g.p99_ms - d.p99_ms:.3f} gateway_rps_32c={gl.requests_per_s:.0f} "
        f"direct_rps_32c={dl.requests_per_s:.0f} cpu_ms_per_request={cpu_ms:.3f} rss_mib={rss:.1f}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=200.0, help="fixed rate, requests/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk")
    with tempfile.TemporaryDirectory(prefix="floopy-bench-") as tmp:
        bench(Path(tmp), args.rate, args.seconds, args.connections)


if __name__ == "__main__":
    main()
