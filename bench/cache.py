"""Response-cache benchmarks (programs, not tests; figures in README "Benchmarks").

``python -m bench.cache exact --rate 200 --seconds 10``
    An exact hit end to end: real Redis, the fake provider, the gateway (1 worker, org with the
    exact tier), one request stored, then the identical request at a fixed rate (open loop).
    In the same run: the fake provider direct at the same rate, and (when its virtualenv exists,
    ``bench.peer``) the LiteLLM proxy with its Redis cache on (``cache: true``, same Redis
    server, another database). Each answer's cache header is checked, so a "hit" figure is made
    of hits.

``python -m bench.cache cpu --requests 3000``
    CPU per miss added by the cache stage: the gateway's CPU time per request under the same
    stream of distinct prompts (every one a miss) for an org with the exact tier and an org with
    none, alternated in rounds; plus the stage's pure work (plan, canonical key, the answer's
    encoding) timed in-process.

``python -m bench.cache semantic --entries 10000,100000``
    Semantic lookups in-process: the local embedder, then a search of N points of one org, model
    and parameter set in Qdrant local mode (the partition a lookup reads), for a hit and a miss.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import timeit
import uuid
from pathlib import Path

import aiohttp
import numpy as np

from bench.gateway_overhead import KEY, Latencies, cpu_seconds, fixed_rate
from bench.peer import LiteLLMProcess, litellm_venv
from devstack.gateway_process import ChildProcess, FakeProviderProcess, GatewayProcess
from devstack.servers import RedisServer

__all__ = ["main"]

KEY_NONE = "sk-floopy-bench-nocache"
MODEL = "gpt-4o-mini"
HIT_BODY: dict[str, object] = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Say hello"}],
}


def _config() -> dict[str, object]:
    limits = {"rate_limit_policy": "100000000;w=60", "daily_tokens": 10**12}
    return {
        "orgs": {
            "org-cache": {"rate_limit": "100000000;w=60", "cache": {"tiers": ["exact"]}},
            "org-none": {"rate_limit": "100000000;w=60", "cache": {"tiers": []}},
        },
        "keys": {
            "key-cache": {"org": "org-cache", "secret": KEY, "limits": limits},
            "key-none": {"org": "org-none", "secret": KEY_NONE, "limits": limits},
        },
    }


class _Stack:
    """Redis, the fake provider and the gateway in a scratch directory."""

    def __init__(self, directory: Path) -> None:
        self.redis = RedisServer(directory / "redis")
        self.fake = FakeProviderProcess(directory)
        config = directory / "floopy.json"
        config.write_text(json.dumps(_config()))
        self.directory = directory
        self.config = config
        self.gateway: GatewayProcess | None = None
        self.started: list[ChildProcess] = []

    def __enter__(self) -> _Stack:
        self.redis.start()
        self.fake.start()
        self.gateway = GatewayProcess(
            self.directory,
            redis_url=self.redis.url,
            provider_url=self.fake.base_url,
            config_file=self.config,
        )
        self.gateway.start(timeout_s=120)
        self.started.append(self.gateway)
        return self

    def __exit__(self, *_: object) -> None:
        for process in reversed(self.started):
            process.stop()
        self.fake.stop()
        self.redis.stop()


async def _cache_header(url: str, key: str, header: str) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=HIT_BODY, headers={"Authorization": f"Bearer {key}"}) as response,
    ):
        await response.read()
        return f"{response.status} {header}={response.headers.get(header, '-')}"


def _row(name: str, figures: Latencies, direct: Latencies) -> str:
    return (
        f"| {name} | {figures.p50_ms:.2f} / {figures.p99_ms:.2f} ms | "
        f"{figures.p50_ms / direct.p50_ms:.2f}x / {figures.p99_ms / direct.p99_ms:.2f}x | "
        f"{figures.sent} sent, {figures.failed} failed |"
    )


def bench_exact(rate: float, seconds: float, peer_rate: float) -> None:
    with tempfile.TemporaryDirectory(prefix="floopy-bench-cache-") as tmp, _Stack(Path(tmp)) as st:
        assert st.gateway is not None
        url = f"{st.gateway.base_url}/chat/completions"
        print("gateway:", asyncio.run(_cache_header(url, KEY, "floopy-cache")), "(stored)")
        print("gateway:", asyncio.run(_cache_header(url, KEY, "floopy-cache")))
        direct_url = f"{st.fake.base_url}/chat/completions"
        direct = asyncio.run(fixed_rate(direct_url, rate, seconds, body=lambda _: HIT_BODY))
        hit = asyncio.run(fixed_rate(url, rate, seconds, body=lambda _: HIT_BODY))
        rows = [
            _row("direct (fake provider)", direct, direct),
            _row("Floopy exact hit", hit, direct),
        ]
        venv = litellm_venv()
        if venv is None:
            print("LiteLLM not compared: no venv (run ../shared/peer-bench/run_bench.sh once)")
        else:
            port = int(st.redis.url.rsplit(":", 1)[1].split("/")[0])
            litellm = LiteLLMProcess(
                Path(tmp),
                venv,
                upstream=st.fake.base_url,
                model=MODEL,
                master_key=KEY,
                settings={
                    "cache": True,
                    "cache_params": {"type": "redis", "host": "127.0.0.1", "port": port},
                },
            )
            litellm.start(timeout_s=180)
            st.started.append(litellm)
            peer_url = f"{litellm.base_url}/chat/completions"
            for _ in range(2):
                print("litellm:", asyncio.run(_cache_header(peer_url, KEY, "x-litellm-cache-key")))
            peer = asyncio.run(fixed_rate(peer_url, peer_rate, seconds, body=lambda _: HIT_BODY))
            direct_p = asyncio.run(
                fixed_rate(direct_url, peer_rate, seconds, body=lambda _: HIT_BODY)
            )
            hit_p = asyncio.run(fixed_rate(url, peer_rate, seconds, body=lambda _: HIT_BODY))
            rows += [
                _row(f"direct @ {peer_rate:g}/s", direct_p, direct_p),
                _row(f"Floopy exact hit @ {peer_rate:g}/s", hit_p, direct_p),
                _row(f"LiteLLM Redis cache hit @ {peer_rate:g}/s", peer, direct_p),
            ]
        print(f"\nexact hits at {rate:g}/s for {seconds:g} s (open loop); p50 / p99")
        print("| target | p50 / p99 | vs direct (p50 / p99) | requests |")
        print("|---|---|---|---|")
        print("\n".join(rows))


def _distinct(i: int) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": f"{uuid.uuid4()} {i}"}]}


def bench_cpu(requests: int, rounds: int, rate: float) -> None:
    with tempfile.TemporaryDirectory(prefix="floopy-bench-cache-") as tmp, _Stack(Path(tmp)) as st:
        assert st.gateway is not None
        url = f"{st.gateway.base_url}/chat/completions"
        per: dict[str, list[float]] = {"exact": [], "none": []}
        for _ in range(rounds):
            for name, key in (("exact", KEY), ("none", KEY_NONE)):
                before = cpu_seconds(st.gateway.pids)
                done = asyncio.run(
                    fixed_rate(url, rate, requests / rounds / rate, key=key, body=_distinct)
                )
                per[name].append((cpu_seconds(st.gateway.pids) - before) / done.sent * 1000)
    exact, none = statistics.median(per["exact"]), statistics.median(per["none"])
    print(f"gateway CPU per miss (median of {rounds} rounds, {requests // rounds} requests each):")
    print(
        f"  exact tier on: {exact:.3f} ms   no tier: {none:.3f} ms   added: {exact - none:+.3f} ms"
    )
    print(f"  rounds: exact {[round(x, 3) for x in per['exact']]}")
    print(f"          none  {[round(x, 3) for x in per['none']]}")
    _pure_cpu()


def _pure_cpu() -> None:
    from gateway.policy.cache import (
        CacheControls,
        CachedAnswer,
        CacheSettings,
        cache_headers,
        encode_answer,
        plan_cache,
    )
    from gateway.policy.cache_key import request_keys

    settings, controls = CacheSettings(), CacheControls()
    raw = json.dumps(_distinct(1)).encode()
    body = b'{"id":"x","object":"chat.completion","choices":[]}' * 8
    decode = __import__("msgspec").json.decode

    def stage_work() -> None:
        plan = plan_cache(settings, controls, key_switch=True, now_ms=0)
        request_keys(decode(raw), endpoint="/v1/chat/completions", org_id="o", seed=plan.seed)
        cache_headers(plan.status)
        encode_answer(CachedAnswer(body=body, model=MODEL, created_at_ms=1))

    n = 20_000
    seconds = min(timeit.repeat(stage_work, number=n, repeat=5))
    print(
        f"  the stage's pure work per miss (plan, key, headers, answer encoding): "
        f"{seconds / n * 1e6:.1f} µs"
    )


async def _semantic(entries: int, queries: int) -> dict[str, float]:
    from gateway.clients.semantic_cache import SemanticCache
    from gateway.clients.vector_store import VectorStore
    from gateway.policy.cache import CacheTier
    from shared.settings import QdrantSettings

    store = VectorStore.open(QdrantSettings(collection_prefix="bench", timeout_s=600))
    cache = SemanticCache(store)
    rng = np.random.default_rng(7)
    dims = 384
    scope = {"org_id": "o", "model": MODEL, "seed": "", "params_hash": "p"}
    try:
        await cache.open(dims)
        name = "cache_semantic_384"
        points = rng.standard_normal((entries, dims)).astype(np.float32)
        points /= np.linalg.norm(points, axis=1, keepdims=True)
        for start in range(0, entries, 2000):
            batch = [
                (f"k{i}", points[i].tolist(), {**scope, "key_hash": f"k{i}", "created_at_ms": 0})
                for i in range(start, min(entries, start + 2000))
            ]
            await store.upsert_many(name, batch)
        timings: dict[str, list[float]] = {"hit": [], "miss": []}
        for q in range(queries):
            hit = points[q % entries] + rng.standard_normal(dims).astype(np.float32) * 0.003
            miss = rng.standard_normal(dims).astype(np.float32)
            for kind, raw in (("hit", hit), ("miss", miss)):
                vector = raw / np.linalg.norm(raw)
                began = time.perf_counter()
                found = await cache.search(
                    CacheTier.SEMANTIC,
                    vector.tolist(),
                    scope=scope,
                    threshold=0.98,
                    limit=1,
                    oldest_ms=0,
                )
                timings[kind].append((time.perf_counter() - began) * 1000)
                assert bool(found) == (kind == "hit"), (kind, found)
        return {f"{k}_{p}": _q(v, p) for k, v in timings.items() for p in (50, 99)}
    finally:
        await store.aclose()


def _q(values: list[float], pct: int) -> float:
    return statistics.quantiles(values, n=100)[pct - 1]


def bench_semantic(sizes: list[int], queries: int) -> None:
    from gateway.clients.embeddings import LocalEmbedder
    from gateway.settings import EmbedderSettings

    embedder = LocalEmbedder.load(EmbedderSettings())
    texts = [f"What is the capital of country number {i}?" for i in range(queries)]
    embed_ms = []
    for text in texts:
        began = time.perf_counter()
        embedder.embed_sync([text])
        embed_ms.append((time.perf_counter() - began) * 1000)
    print(
        f"local embedder (multilingual-e5-small q4, 1 thread): p50 {_q(embed_ms, 50):.1f} ms, "
        f"p99 {_q(embed_ms, 99):.1f} ms per short prompt"
    )
    print("| points (one org, model, parameter set) | search hit p50 / p99 | miss p50 / p99 |")
    print("|---|---|---|")
    for size in sizes:
        t = asyncio.run(_semantic(size, queries))
        print(
            f"| {size:,} | {t['hit_50']:.1f} / {t['hit_99']:.1f} ms | "
            f"{t['miss_50']:.1f} / {t['miss_99']:.1f} ms |"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Response-cache benchmarks")
    sub = parser.add_subparsers(dest="what", required=True)
    exact = sub.add_parser("exact")
    exact.add_argument("--rate", type=float, default=200)
    exact.add_argument("--peer-rate", type=float, default=50)
    exact.add_argument("--seconds", type=float, default=10)
    cpu = sub.add_parser("cpu")
    cpu.add_argument("--requests", type=int, default=3000)
    cpu.add_argument("--rounds", type=int, default=6)
    cpu.add_argument("--rate", type=float, default=150)
    semantic = sub.add_parser("semantic")
    semantic.add_argument("--entries", default="10000,100000")
    semantic.add_argument("--queries", type=int, default=200)
    args = parser.parse_args(argv)
    if args.what == "exact":
        bench_exact(args.rate, args.seconds, args.peer_rate)
    elif args.what == "cpu":
        bench_cpu(args.requests, args.rounds, args.rate)
    else:
        bench_semantic([int(s) for s in args.entries.split(",")], args.queries)


if __name__ == "__main__":
    main()
