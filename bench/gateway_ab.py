"""Same-run A/B of two builds of the gateway: a git revision (``--before``) against the working
tree, alternating, on one Redis and one fake provider.

Each round starts a gateway (1 worker, the load of ``bench.gateway_overhead``: auth, limits,
usage, records and spans, every request a cache miss) from each build in turn, warms it with
``wrk``, then measures ``--seconds`` of ``wrk`` at ``--connections`` and the worker's CPU per
request. Builds alternate so that drift of a shared machine lands on both; the figures of every
round are printed, then each build's range and median, and in how many rounds (each a "before"
then an "after") the working tree used less CPU per request: on a noisy machine the median and
that count carry over where a single round does not. The "before" build runs from a git worktree of
the revision (``python -m gateway.serve`` puts its working directory first on ``sys.path``).

``--pin`` runs each gateway on CPU 0 and Redis, the fake provider and ``wrk`` on CPU 1
(``bench.cpus``): steadier figures, so smaller differences show. ``--redis-cluster`` puts the
gateways on a 3-master Redis Cluster instead of one Redis.

    python -m bench.gateway_ab --before HEAD~1 --rounds 3 --seconds 15
    python -m bench.gateway_ab --before HEAD~1 --rounds 6 --seconds 8 --pin
    python -m bench.gateway_ab --before HEAD~1 --rounds 4 --seconds 8 --pin --redis-cluster
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.cpus import MEASURED_CPUS, SERVER_CPUS, pin
from bench.gateway_overhead import bench_config, cpu_seconds, run_wrk, wrk_script
from devstack.gateway_process import FakeProviderProcess, GatewayProcess
from devstack.servers import RedisCluster, RedisServer

__all__ = ["main"]

_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Round:
    build: str
    requests_per_s: float
    cpu_ms_per_request: float
    errors: str


def worktree(revision: str, directory: Path) -> Path:
    """A detached git worktree of ``revision`` under ``directory`` (remove it when done)."""
    path = directory / "before"
    subprocess.run(
        ["git", "-C", str(_ROOT), "worktree", "add", "--detach", str(path), revision],
        check=True,
        capture_output=True,
    )
    return path


def _measure(  # noqa: PLR0917 - one call site
    build: str,
    cwd: Path,
    directory: Path,
    redis: RedisServer | RedisCluster,
    fake: FakeProviderProcess,
    seconds: float,
    connections: int,
    pinned: bool,
) -> Round:
    config = directory / "floopy.json"
    config.write_text(json.dumps(bench_config()))
    gateway = GatewayProcess(
        directory / build,
        redis_url=redis.url,
        provider_url=fake.base_url,
        config_file=config,
        extra_env={
            "FLOOPY_GATEWAY_LOG_LEVEL": "info",
            "FLOOPY_GATEWAY_ACCESS_LOG": "false",
            "FLOOPY_GATEWAY_REDIS__CLUSTER": str(isinstance(redis, RedisCluster)).lower(),
        },
    )
    gateway.cwd = cwd
    gateway.start(timeout_s=120)
    for pid in gateway.pids if pinned else ():
        pin(pid, MEASURED_CPUS)
    try:
        url = f"{gateway.base_url}/chat/completions"
        script = wrk_script(directory)
        run_wrk(url, 3, connections, script)
        before = cpu_seconds(gateway.pids)
        loaded = run_wrk(url, seconds, connections, script)
        cpu_ms = (cpu_seconds(gateway.pids) - before) / max(loaded.requests, 1) * 1000
    finally:
        gateway.stop()
    return Round(build, loaded.requests_per_s, cpu_ms, loaded.errors)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--before", required=True, help="the git revision to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--pin", action="store_true", help="gateways on CPU 0; Redis, upstream and wrk on CPU 1"
    )
    parser.add_argument("--redis-cluster", action="store_true", help="a 3-master Redis Cluster")
    args = parser.parse_args(argv)
    if args.pin:  # what starts from here inherits it; each gateway is moved to CPU 0
        os.sched_setaffinity(0, SERVER_CPUS)
    with tempfile.TemporaryDirectory(prefix="floopy-ab-") as tmp:
        directory = Path(tmp)
        before = worktree(args.before, directory)
        redis = (
            RedisCluster(directory / "cluster")
            if args.redis_cluster
            else RedisServer(directory / "redis")
        )
        redis.start()
        fake = FakeProviderProcess(directory)
        fake.start()
        rounds: list[Round] = []
        try:
            for n in range(args.rounds):
                for build, cwd in (("before", before), ("after", _ROOT)):
                    r = _measure(
                        build,
                        cwd,
                        directory,
                        redis,
                        fake,
                        args.seconds,
                        args.connections,
                        args.pin,
                    )
                    rounds.append(r)
                    print(
                        f"round {n + 1} {build:6} {r.requests_per_s:8.0f} req/s "
                        f"{r.cpu_ms_per_request:6.3f} ms CPU/req  non-2xx {r.errors}",
                        flush=True,
                    )
        finally:
            fake.stop()
            redis.stop()
            subprocess.run(
                ["git", "-C", str(_ROOT), "worktree", "remove", "--force", str(before)],
                check=False,
                capture_output=True,
            )
        for build in ("before", "after"):
            mine = [r for r in rounds if r.build == build]
            rps = [r.requests_per_s for r in mine]
            cpu = [r.cpu_ms_per_request for r in mine]
            print(
                f"RESULT gateway_ab build={build} revision="
                f"{args.before if build == 'before' else 'working-tree'} "
                f"rps_min={min(rps):.0f} rps_median={statistics.median(rps):.0f} "
                f"rps_max={max(rps):.0f} cpu_ms_min={min(cpu):.3f} "
                f"cpu_ms_median={statistics.median(cpu):.3f} cpu_ms_max={max(cpu):.3f}",
                flush=True,
            )
        wins = sum(
            after.cpu_ms_per_request < before.cpu_ms_per_request
            for before, after in zip(rounds[::2], rounds[1::2], strict=True)
        )
        print(f"RESULT gateway_ab after_used_less_cpu_in={wins}/{args.rounds} rounds", flush=True)


if __name__ == "__main__":
    main()
