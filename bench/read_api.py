"""Read-API benchmark: p50/p95 per endpoint against a ClickHouse holding many synthetic records.

A program, not a test. It starts the real gateway (``floopy-gateway``, one worker, its own
Redis in a temp dir) pointed at an existing database, then calls every read-API endpoint
``--runs`` times in sequence (after two warm-up calls), varying ids and filters between runs,
and prints one ``RESULT`` line per endpoint. Load the data first:

    python -m devstack.synthetic --records 10000000 --port 9000 --database bench10m
    python -m bench.read_api --port 9000 --database bench10m --runs 20

The metrics endpoints read only the rollup tables (see ``gateway.console.queries``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from clickhouse_driver import Client

from devstack.servers import RedisServer, free_port

__all__ = ["main"]

KEY = "sk-floopy-bench-read"
DAY_MS = 86_400_000

Params = Callable[[random.Random], tuple[str, dict[str, Any]]]


def _sample(port: int, database: str, org: str) -> dict[str, list[Any]]:
    """Ids to ask for: recent requests (with their times), sessions and users of one org."""
    client = Client(host="127.0.0.1", port=port, database=database)
    try:
        reqs = client.execute(
            "SELECT request_id, created_at_ms, session_id, user_id FROM requests "
            "WHERE org_id = %(o)s AND created_at > now() - 86400 LIMIT 2000",
            {"o": org},
        )
        (last_ms,) = client.execute(
            "SELECT max(created_at_ms) FROM requests WHERE org_id = %(o)s", {"o": org}
        )[0]
    finally:
        client.disconnect()
    return {
        "requests": [(r[0], r[1]) for r in reqs],
        "sessions": sorted({r[2] for r in reqs if r[2]}),
        "users": sorted({r[3] for r in reqs if r[3]}),
        "last_ms": [int(last_ms)],
    }


def _endpoints(sample: dict[str, list[Any]]) -> dict[str, Params]:
    end = sample["last_ms"][0] + 1

    def span(days: float) -> dict[str, Any]:
        return {"start": int(end - days * DAY_MS), "end": end}

    def pick(rng: random.Random, name: str) -> Any:
        return rng.choice(sample[name])

    return {
        "requests 24h": lambda rng: ("/requests", span(1)),
        "requests 7d": lambda rng: ("/requests", span(7)),
        "requests 30d errors": lambda rng: (
            "/requests",
            {**span(30), "status": [502, 504], "provider": "anthropic"},
        ),
        "requests 24h filtered": lambda rng: (
            "/requests",
            {**span(1), "model": "gpt-4o-mini", "status": 200, "min_latency_ms": 500},
        ),
        "requests 7d property": lambda rng: (
            "/requests",
            {**span(7), "property": f"feature:{rng.choice(['chat', 'search', 'classify'])}"},
        ),
        "requests 24h search": lambda rng: (
            "/requests",
            {**span(1), "q": rng.choice(["refund", "berlin", "invoice", "password"])},
        ),
        "requests 7d by cost": lambda rng: ("/requests", {**span(7), "sort": "cost"}),
        "requests 30d user": lambda rng: ("/requests", {**span(30), "user_id": pick(rng, "users")}),
        "request detail": lambda rng: (
            "/requests/" + (r := pick(rng, "requests"))[0],
            {"at": r[1]},
        ),
        "request detail no hint": lambda rng: ("/requests/" + pick(rng, "requests")[0], {}),
        "sessions 24h": lambda rng: ("/sessions", span(1)),
        "sessions 7d": lambda rng: ("/sessions", span(7)),
        "sessions 30d page 3": lambda rng: (
            "/sessions",
            {**span(30), "cursor": "WzEwMF0"},  # offset 100
        ),
        "session detail": lambda rng: ("/sessions/" + pick(rng, "sessions"), {}),
        "users 30d": lambda rng: ("/users", span(30)),
        "user timeline 30d": lambda rng: ("/users/" + pick(rng, "users"), span(30)),
        "property keys 30d": lambda rng: ("/properties", span(30)),
        "property values 30d": lambda rng: ("/properties/feature", span(30)),
        "property series 30d": lambda rng: ("/properties/feature/series", span(30)),
        "metrics 24h hourly": lambda rng: ("/metrics", {**span(1), "bucket": "1h"}),
        "metrics 30d daily": lambda rng: ("/metrics", {**span(30), "bucket": "1d"}),
        "metrics 7d by model": lambda rng: (
            "/metrics",
            {**span(7), "bucket": "6h", "group_by": "model"},
        ),
    }


def _start_gateway(root: Path, port: int, database: str, org: str) -> subprocess.Popen[bytes]:
    redis = RedisServer(root / "redis")
    redis.start()
    gateway_port = free_port()
    config = root / "floopy.json"
    config.write_text(
        json.dumps(
            {
                "orgs": {org: {"name": "bench"}},
                "keys": {"bench": {"org": org, "secret": KEY, "permissions": ["read"]}},
            }
        )
    )
    env = {
        **os.environ,
        "FLOOPY_GATEWAY_PORT": str(gateway_port),
        "FLOOPY_GATEWAY_REDIS__URL": redis.url,
        "FLOOPY_GATEWAY_CONFIG_FILE": str(config),
        "FLOOPY_GATEWAY_CLICKHOUSE__PORT": str(port),
        "FLOOPY_GATEWAY_CLICKHOUSE__DATABASE": database,
        "FLOOPY_GATEWAY_ACCESS_LOG": "false",
    }
    log = (root / "gateway.log").open("ab")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "floopy-gateway")],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    proc.redis = redis  # type: ignore[attr-defined]
    proc.url = f"http://127.0.0.1:{gateway_port}"  # type: ignore[attr-defined]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{proc.url}/health", timeout=1).status_code == 200:  # type: ignore[attr-defined]
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"gateway did not start; see {root}/gateway.log")


def _measure(client: httpx.Client, params: Params, runs: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    timings = []
    for i in range(runs + 2):
        path, query = params(rng)
        t0 = time.perf_counter()
        r = client.get("/console/api" + path, params=query)
        elapsed = time.perf_counter() - t0
        if r.status_code != 200:
            raise SystemExit(f"{path} {query}: {r.status_code} {r.text[:300]}")
        if i >= 2:
            timings.append(elapsed)
    return timings


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000, help="ClickHouse native port")
    parser.add_argument("--database", default="bench10m")
    parser.add_argument("--org", default="org-00")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--only", default="", help="substring of endpoint names to run")
    args = parser.parse_args()

    client = Client(host="127.0.0.1", port=args.port, database=args.database)
    (rows,) = client.execute("SELECT count() FROM requests")[0]
    client.disconnect()
    sample = _sample(args.port, args.database, args.org)
    root = Path(tempfile.mkdtemp(prefix="floopy-bench-read-"))
    proc = _start_gateway(root, args.port, args.database, args.org)
    results = {}
    try:
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(base_url=proc.url, headers=headers, timeout=60) as http:  # type: ignore[attr-defined]
            print(f"{rows:,} raw rows in {args.database}; {args.runs} runs per endpoint")
            for i, (name, params) in enumerate(_endpoints(sample).items()):
                if args.only and args.only not in name:
                    continue
                t = _measure(http, params, args.runs, seed=i)
                results[name] = {
                    "p50_ms": 1000 * statistics.median(t),
                    "p95_ms": 1000 * _p(t, 0.95),
                }
                print(
                    f"RESULT {name:<24} p50 {results[name]['p50_ms']:7.0f} ms   "
                    f"p95 {results[name]['p95_ms']:7.0f} ms   max {1000 * max(t):7.0f} ms",
                    flush=True,
                )
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        proc.redis.kill()  # type: ignore[attr-defined]
    out = Path("bench/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "read_api.json").write_text(json.dumps({"rows": rows, "results": results}, indent=2))


if __name__ == "__main__":
    main()
