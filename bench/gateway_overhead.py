"""Gateway overhead: the same load sent straight to the fake provider and through the gateway,
in the same run (docs/architecture.md §8: ratios, because absolute figures drift on shared
machines).

Starts real Redis (devstack.servers), the fake provider, the bare forwarder, the gateway (1
worker; auth, limits, usage accounting, records and spans to Redis; granian's access log as the
gateway's default, off, or on with ``FLOOPY_GATEWAY_ACCESS_LOG=true``) and, when its virtualenv
exists, the LiteLLM proxy (``bench.peer``), all on loopback; then for each target:

- a moderate fixed rate from an async client (open loop: requests leave on schedule whatever the
  answers do), for p50/p99 latency and the gateway's overhead over direct;
- ``wrk`` at 32 connections for throughput (req/s) and its latency percentiles;

and prints the gateway worker's CPU time per request and RSS. Bounded by ``--seconds``.

``--pin`` gives each proxy (its granian processes and their threads) CPU 0, and Redis, the fake
provider, ``wrk`` and this program CPU 1: on two cores an unpinned proxy competes with its own
load generator and upstream, and its req/s is a share of what they leave it.

``--rounds N`` then runs ``wrk`` N more times against the bare forwarder, the gateway and
LiteLLM (when compared), each round starting with another, and prints each round's ratios and
their medians: on a shared machine one pass of each swings by 10-20%, so a ratio from one pass
says little.

    python -m bench.gateway_overhead --rate 200 --seconds 10
    python -m bench.gateway_overhead --seconds 6 --rounds 7 --no-peer
    python -m bench.gateway_overhead --seconds 6 --rounds 7 --pin
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.cpus import MEASURED_CPUS, SERVER_CPUS, pin
from bench.load import open_loop
from bench.peer import BareForwarderProcess, LiteLLMProcess, litellm_venv
from devstack.gateway_process import ChildProcess, FakeProviderProcess, GatewayProcess
from devstack.servers import RedisServer

__all__ = ["main"]

KEY = "sk-floopy-bench"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}
_PROMPT = "Say hello"


_RUN = uuid.uuid4().hex[:12]


def distinct_body(i: int) -> dict[str, object]:
    """The i-th request's body: the same shape as ``BODY``, a prompt never sent before in this
    run. The exact response cache is on by default, so a repeated body would measure cache
    hits, not the proxy path every first request takes (``bench.cache`` measures hits)."""
    return {**BODY, "messages": [{"role": "user", "content": f"{_PROMPT} {_RUN}-{i}"}]}


_TICKS = os.sysconf("SC_CLK_TCK")
_CALLS = itertools.count()


@dataclass
class Latencies:
    p50_ms: float
    p99_ms: float
    sent: int
    failed: int


async def fixed_rate(
    url: str,
    rate: float,
    seconds: float,
    *,
    key: str = KEY,
    body: Callable[[int], dict[str, object]] | None = None,
    headers: dict[str, str] | None = None,
) -> Latencies:
    """Open-loop load: one request every 1/rate s, each timed from its scheduled start.
    ``body(i)``: the i-th request's body (default: ``distinct_body``, so every request is a
    response-cache miss that goes upstream)."""
    request_headers = {
        "Authorization": f"Bearer {key}",
        "Content-Type": "application/json",
        **(headers or {}),
    }
    latencies: list[float] = []
    failed = 0
    count = next(_CALLS) * 10_000_000  # each call's bodies distinct from every other call's
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:

        async def one() -> None:
            nonlocal failed, count
            count += 1
            payload = json.dumps((body or distinct_body)(count)).encode()
            start = time.perf_counter()
            async with session.post(url, data=payload, headers=request_headers) as response:
                await response.read()
                if response.status != 200:
                    failed += 1
            latencies.append((time.perf_counter() - start) * 1000)

        for _ in range(20):  # warm the connections up
            await one()
        latencies.clear()
        await open_loop(rate, seconds, one)
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
    # the nonce keeps each run's bodies apart from every other run's (``wrk_script``)
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script)]
    out = subprocess.run(
        [*argv, url, "--", uuid.uuid4().hex[:12]],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    ).stdout
    percent = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.MULTILINE))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)$", out, re.MULTILINE)
    if "50" not in percent or "99" not in percent:
        # wrk prints no distribution when no request completed
        print(f"wrk against {url} printed no latency distribution:\n{out}")
    return WrkResult(
        float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        _ms(percent["50"]) if "50" in percent else math.nan,
        _ms(percent["99"]) if "99" in percent else math.nan,
        int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        (errors.group(1) if errors else "0")
        + (f" (socket errors: {socket_errors.group(1)})" if socket_errors else ""),
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


def wrk_script(directory: Path) -> Path:
    """A distinct body per request (the run's nonce and a counter in the prompt, like
    ``distinct_body``): every request a cache miss, proxied upstream."""
    script = directory / "post.lua"
    head, tail = json.dumps(BODY).split(_PROMPT)
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {KEY}"\n'
        "local n, nonce = 0, ''\n"
        "init = function(args) nonce = args[1] or '' end\n"
        "request = function()\n"
        "  n = n + 1\n"
        f"  return wrk.format(nil, nil, nil, '{head}{_PROMPT} ' .. nonce .. '-' .. n .. '{tail}')\n"
        "end\n"
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


def start_servers(directory: Path) -> tuple[RedisServer, FakeProviderProcess, Path]:
    """Redis, the fake provider and the config seed of ``bench_config`` (stop the two after)."""
    redis = RedisServer(directory / "redis")
    redis.start()
    fake = FakeProviderProcess(directory)
    fake.start()
    config = directory / "floopy.json"
    config.write_text(json.dumps(bench_config()))
    return redis, fake, config


@dataclass
class Figures:
    """One target's figures: the fixed-rate run, the wrk run, and (for a proxy) its cost."""

    fixed: Latencies
    loaded: WrkResult
    cpu_ms_per_request: float | None = None
    rss_mib: float | None = None


def measure(  # noqa: PLR0917 - one call site
    url: str,
    process: ChildProcess | None,
    rate: float,
    seconds: float,
    connections: int,
    script: Path,
) -> Figures:
    fixed = asyncio.run(fixed_rate(url, rate, seconds))
    if process is None:
        return Figures(fixed, run_wrk(url, seconds, connections, script))
    loaded, cpu_ms = loaded_cpu(url, process, seconds, connections, script)
    return Figures(fixed, loaded, cpu_ms, max(rss_mib(pid) for pid in process.pids))


def loaded_cpu(
    url: str, process: ChildProcess, seconds: float, connections: int, script: Path
) -> tuple[WrkResult, float]:
    """One ``wrk`` run through ``process``, and the process's CPU ms per request."""
    cpu_before = cpu_seconds(process.pids)
    loaded = run_wrk(url, seconds, connections, script)
    cpu_ms = (cpu_seconds(process.pids) - cpu_before) / max(loaded.requests, 1) * 1000
    return loaded, cpu_ms


def rounds_report(  # noqa: PLR0917 - one call site
    bare: tuple[str, ChildProcess],
    gateway: tuple[str, ChildProcess],
    rounds: int,
    seconds: float,
    connections: int,
    script: Path,
    peer: tuple[str, ChildProcess] | None = None,
) -> None:
    """Alternating wrk runs of the bare forwarder, the gateway and (when given) LiteLLM: each
    round's ratios, then the medians (each round starts with another target)."""
    print(f"\n{rounds} rounds of wrk at {connections} connections, {seconds:g} s each")
    print(
        f"{'round':>5}{'bare req/s':>12}{'gw req/s':>10}{'ratio':>7}{'bare CPU':>10}{'gw CPU':>8}"
        f"{'CPU ratio':>10}" + (f"{'peer req/s':>12}{'gw/peer':>9}" if peer else "")
    )
    targets = [bare, gateway, *([peer] if peer else [])]
    rps_ratios, cpu_ratios, peer_ratios, rows = [], [], [], []
    for i in range(rounds):
        order = targets[i % len(targets) :] + targets[: i % len(targets)]
        got = {url: loaded_cpu(url, proc, seconds, connections, script) for url, proc in order}
        (b_run, b_cpu), (g_run, g_cpu) = got[bare[0]], got[gateway[0]]
        b_rps, g_rps = b_run.requests_per_s, g_run.requests_per_s
        rps_ratios.append(g_rps / b_rps)
        cpu_ratios.append(g_cpu / b_cpu)
        rows.append((b_rps, g_rps, b_cpu, g_cpu))
        line = (
            f"{i + 1:>5}{b_rps:12.0f}{g_rps:10.0f}{rps_ratios[-1]:7.2f}{b_cpu:10.3f}{g_cpu:8.3f}"
            f"{cpu_ratios[-1]:10.2f}"
        )
        if peer:
            p_rps = got[peer[0]][0].requests_per_s
            peer_ratios.append(g_rps / p_rps)
            line += f"{p_rps:12.0f}{peer_ratios[-1]:9.1f}"
        print(line)
    med = [statistics.median(column) for column in zip(*rows, strict=True)]
    print(
        f"{'med':>5}{med[0]:12.0f}{med[1]:10.0f}{statistics.median(rps_ratios):7.2f}"
        f"{med[2]:10.3f}{med[3]:8.3f}{statistics.median(cpu_ratios):10.2f}"
        + (f"{'':>12}{statistics.median(peer_ratios):9.1f}" if peer else "")
    )
    print(
        f"RESULT gateway_overhead_rounds rounds={rounds} "
        f"rps_ratio_median={statistics.median(rps_ratios):.3f} "
        f"rps_ratio_min={min(rps_ratios):.3f} rps_ratio_max={max(rps_ratios):.3f} "
        f"cpu_ratio_median={statistics.median(cpu_ratios):.3f} "
        f"gateway_cpu_ms_median={med[3]:.3f} bare_cpu_ms_median={med[2]:.3f}"
        + (
            f" litellm_rps_ratio_median={statistics.median(peer_ratios):.2f}"
            f" litellm_rps_ratio_min={min(peer_ratios):.2f}"
            if peer
            else ""
        )
    )


def bench(  # noqa: PLR0917 - one call site
    directory: Path,
    rate: float,
    seconds: float,
    connections: int,
    peer_rate: float,
    peer: bool,
    rounds: int = 0,
    pinned: bool = False,
) -> None:
    if pinned:  # what starts from here inherits it; each proxy is moved to its own core below
        os.sched_setaffinity(0, SERVER_CPUS)
    redis, fake, config = start_servers(directory)
    gateway = GatewayProcess(
        directory,
        redis_url=redis.url,
        provider_url=fake.base_url,
        config_file=config,
        extra_env={
            "FLOOPY_GATEWAY_LOG_LEVEL": "info",
            "FLOOPY_GATEWAY_ACCESS_LOG": os.environ.get("FLOOPY_GATEWAY_ACCESS_LOG", "false"),
        },
    )
    bare = BareForwarderProcess(directory, fake.base_url)
    venv = litellm_venv() if peer else None
    litellm = (
        LiteLLMProcess(
            directory, venv, upstream=fake.base_url, model=str(BODY["model"]), master_key=KEY
        )
        if venv
        else None
    )
    started: list[ChildProcess] = []
    try:
        for process in (gateway, bare, *([litellm] if litellm else [])):
            process.start(timeout_s=120)
            started.append(process)
            for pid in process.pids if pinned else ():
                pin(pid, MEASURED_CPUS)
        script = wrk_script(directory)
        figures = {
            "direct": measure(
                f"{fake.base_url}/chat/completions", None, rate, seconds, connections, script
            ),
            "bare": measure(
                f"{bare.base_url}/chat/completions", bare, rate, seconds, connections, script
            ),
            "gateway": measure(
                f"{gateway.base_url}/chat/completions", gateway, rate, seconds, connections, script
            ),
        }
        if litellm is not None:
            figures["litellm"] = measure(
                f"{litellm.base_url}/chat/completions",
                litellm,
                peer_rate,
                seconds,
                connections,
                script,
            )
            figures["gateway@peer-rate"] = Figures(
                asyncio.run(fixed_rate(f"{gateway.base_url}/chat/completions", peer_rate, seconds)),
                figures["gateway"].loaded,
            )
            figures["direct@peer-rate"] = Figures(
                asyncio.run(fixed_rate(f"{fake.base_url}/chat/completions", peer_rate, seconds)),
                figures["direct"].loaded,
            )
        elif peer:
            print("LiteLLM not compared: no venv (run ../shared/peer-bench/run_bench.sh once)")
        report(figures, rate, peer_rate, connections)
        if rounds:
            rounds_report(
                (f"{bare.base_url}/chat/completions", bare),
                (f"{gateway.base_url}/chat/completions", gateway),
                rounds,
                seconds,
                connections,
                script,
                (f"{litellm.base_url}/chat/completions", litellm) if litellm else None,
            )
    finally:
        for process in reversed(started):
            process.stop()
        fake.stop()
        redis.stop()


def report(figures: dict[str, Figures], rate: float, peer_rate: float, connections: int) -> None:
    direct = figures["direct"]
    print(
        f"{'target':<18}{'rate':>6}{'p50 ms':>9}{'p99 ms':>9}{'+p50':>8}{'+p99':>8}"
        f"{'req/s@' + str(connections) + 'c':>12}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'CPU ms/req':>12}{'RSS MiB':>9}"
    )
    for name, f in figures.items():
        base = figures["direct@peer-rate"] if name == "litellm" else direct
        at = peer_rate if name in {"litellm", "gateway@peer-rate", "direct@peer-rate"} else rate
        cpu = f"{f.cpu_ms_per_request:12.3f}" if f.cpu_ms_per_request is not None else " " * 12
        rss = f"{f.rss_mib:9.0f}" if f.rss_mib is not None else " " * 9
        print(
            f"{name:<18}{at:>6g}{f.fixed.p50_ms:9.3f}{f.fixed.p99_ms:9.3f}"
            f"{f.fixed.p50_ms - base.fixed.p50_ms:+8.3f}{f.fixed.p99_ms - base.fixed.p99_ms:+8.3f}"
            f"{f.loaded.requests_per_s:12.0f}{f.loaded.p50_ms:9.2f}{f.loaded.p99_ms:9.2f}"
            f"{cpu}{rss}  failed {f.fixed.failed}, non-2xx {f.loaded.errors}"
        )
    g, b = figures["gateway"], figures["bare"]
    print(
        f"ratios (req/s at {connections} connections): gateway/bare "
        f"{g.loaded.requests_per_s / b.loaded.requests_per_s:.2f}, gateway/direct "
        f"{g.loaded.requests_per_s / direct.loaded.requests_per_s:.2f}"
    )
    fields = [
        f"p50_overhead_ms={g.fixed.p50_ms - direct.fixed.p50_ms:.3f}",
        f"p99_overhead_ms={g.fixed.p99_ms - direct.fixed.p99_ms:.3f}",
        f"gateway_rps_{connections}c={g.loaded.requests_per_s:.0f}",
        f"bare_rps_{connections}c={b.loaded.requests_per_s:.0f}",
        f"direct_rps_{connections}c={direct.loaded.requests_per_s:.0f}",
        f"cpu_ms_per_request={g.cpu_ms_per_request:.3f}",
        f"rss_mib={g.rss_mib:.0f}",
    ]
    if "litellm" in figures:
        lite = figures["litellm"]
        print(
            f"ratios vs LiteLLM: req/s {g.loaded.requests_per_s / lite.loaded.requests_per_s:.1f}x,"
            f" CPU per request {(lite.cpu_ms_per_request or 0) / (g.cpu_ms_per_request or 1):.1f}x"
            f" less, p50 at {peer_rate:g} req/s "
            f"{figures['gateway@peer-rate'].fixed.p50_ms:.2f} ms vs {lite.fixed.p50_ms:.2f} ms"
        )
        fields += [
            f"litellm_rps_{connections}c={lite.loaded.requests_per_s:.0f}",
            f"litellm_cpu_ms_per_request={lite.cpu_ms_per_request:.3f}",
        ]
    print("RESULT gateway_overhead " + " ".join(fields))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=200.0, help="fixed rate, requests/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--peer-rate", type=float, default=50.0, help="fixed rate for LiteLLM (it tops out ~110)"
    )
    parser.add_argument("--no-peer", action="store_true", help="skip LiteLLM even if installed")
    parser.add_argument(
        "--rounds", type=int, default=0, help="then N alternating wrk rounds, bare vs gateway"
    )
    parser.add_argument(
        "--pin", action="store_true", help="each proxy on CPU 0; Redis, upstream and wrk on CPU 1"
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk")
    with tempfile.TemporaryDirectory(prefix="floopy-bench-") as tmp:
        bench(
            Path(tmp),
            args.rate,
            args.seconds,
            args.connections,
            args.peer_rate,
            peer=not args.no_peer,
            rounds=args.rounds,
            pinned=args.pin,
        )


if __name__ == "__main__":
    main()
