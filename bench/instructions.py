"""Instructions per request, counted by valgrind's callgrind: the bare forwarder against the
gateway (and, with ``--before``, a git revision of the gateway against the working tree).

CPU time per request swings 10-20% between identical runs on a shared machine, so an effect of
a few percent cannot be seen end to end. Instructions executed are repeatable: callgrind counts
them whatever else the machine is doing. They are not time (cache misses and branches differ),
but for an interpreter-bound request path they follow it closely, and they tell whether a
change removed work.

Each target is served in one process under callgrind (granian's embedded server on uvloop: the
same Rust HTTP core and ASGI callbacks as a ``floopy-gateway`` worker, without the fork, so
``callgrind_control`` reaches it), against a real Redis and the fake provider. After
``--warmup`` requests the counters are zeroed, ``--requests`` are sent ``--concurrency`` at a
time (distinct prompts: every request a cache miss, with auth, limits, usage, records and
spans), and the counters are dumped: instructions per request include the gateway's background
drains. Under callgrind a request takes ~50x longer: keep ``--requests`` in the hundreds.

    python -m bench.instructions --requests 400
    python -m bench.instructions --before HEAD~1 --no-bare
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

from bench.gateway_ab import worktree as make_worktree
from bench.gateway_overhead import _PROMPT, BODY, KEY, start_servers
from devstack.gateway_process import ChildProcess

__all__ = ["main"]

_ROOT = Path(__file__).resolve().parents[1]


SERVE = """
import sys, uvloop
from granian.constants import Interfaces
from granian.server.embed import Server
if sys.argv[1] == "bare":
    from bench.bare_forwarder import app_factory
else:
    from gateway.app import app_factory
port = int(sys.argv[2])
server = Server(app_factory(), address="127.0.0.1", port=port, interface=Interfaces.ASGI)
uvloop.run(server.serve())
"""
"""One target served in this process, run as ``python -c`` in the build's directory (its
working directory comes first on ``sys.path``: a worktree of ``--before`` serves its own code)."""


class CallgrindTarget(ChildProcess):
    """``serve <target>`` under callgrind; counters read with ``callgrind_control``."""

    health_path = "/health"

    def __init__(self, directory: Path, target: str, env: dict[str, str]) -> None:
        super().__init__(directory)
        self.name = target
        self._env = env

    def argv(self) -> list[str]:
        return [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={self.directory}/callgrind.out.%p",
            sys.executable,
            "-c",
            SERVE,
            self.name,
            str(self.port),
        ]

    def env(self) -> dict[str, str]:
        return {**os.environ, **self._env}

    def control(self, *args: str) -> None:
        assert self.process is not None
        subprocess.run(
            ["callgrind_control", *args, str(self.process.pid)], check=True, capture_output=True
        )

    def instructions_since_zero(self) -> int:
        """Dump the counters and read the dump's total (``callgrind_control -d`` writes
        ``callgrind.out.<pid>.<n>``, counted from the last zero or dump)."""
        assert self.process is not None
        pattern = f"callgrind.out.{self.process.pid}.*"
        before = set(self.directory.glob(pattern))
        self.control("-d")
        deadline = time.monotonic() + 60
        while not (new := set(self.directory.glob(pattern)) - before):
            if time.monotonic() > deadline:
                raise TimeoutError("callgrind wrote no dump")
            time.sleep(0.2)
        dump = max(new, key=lambda p: p.stat().st_mtime)
        for _ in range(50):  # written by the target process: wait until it is whole
            match = re.search(rb"^summary: (\d+)", dump.read_bytes(), re.MULTILINE)
            if match:
                return int(match.group(1))
            time.sleep(0.2)
        raise RuntimeError(f"no summary line in {dump}")


async def _load(url: str, requests: int, concurrency: int) -> int:
    """``requests`` POSTs of distinct prompts, ``concurrency`` at a time; the failures."""
    head, tail = json.dumps(BODY).split(_PROMPT)
    run = uuid.uuid4().hex[:8]
    failed = 0
    numbers = iter(range(requests))
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def worker() -> None:
            nonlocal failed
            for i in numbers:
                body = f"{head}{_PROMPT} {run}-{i}{tail}"
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    failed += response.status != 200

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failed


def measure(  # noqa: PLR0917 - one call site per target
    directory: Path,
    target: str,
    env: dict[str, str],
    cwd: Path,
    warmup: int,
    requests: int,
    concurrency: int,
) -> float:
    """Instructions per request of one target."""
    process = CallgrindTarget(directory / f"{target}-{uuid.uuid4().hex[:6]}", target, env)
    process.cwd = cwd
    process.start(timeout_s=900)
    try:
        url = f"http://127.0.0.1:{process.port}/v1/chat/completions"
        failed = asyncio.run(_load(url, warmup, concurrency))
        process.control("-z")
        failed += asyncio.run(_load(url, requests, concurrency))
        total = process.instructions_since_zero()
    finally:
        process.stop(timeout_s=120)
    if failed:
        raise RuntimeError(f"{target}: {failed} requests failed; see {process.log_path}")
    return total / requests


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--before", help="also count a git revision of the gateway")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare forwarder")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind not found: apt-get install valgrind")
    with tempfile.TemporaryDirectory(prefix="floopy-instr-") as tmp:
        count(Path(tmp), args)


def count(directory: Path, args: argparse.Namespace) -> None:
    redis, fake, config = start_servers(directory)
    gateway_env = {
        "FLOOPY_GATEWAY_REDIS__URL": redis.url,
        "FLOOPY_GATEWAY_PROVIDER__BASE_URL": fake.base_url,
        "FLOOPY_GATEWAY_PROVIDER__API_KEY": "sk-upstream-fake",
        "FLOOPY_GATEWAY_CONFIG_FILE": str(config),
        "FLOOPY_GATEWAY_LOG_LEVEL": "warning",
    }
    worktree = make_worktree(args.before, directory) if args.before else None
    runs: list[tuple[str, str, dict[str, str], Path]] = []
    if not args.no_bare:
        runs.append(("bare", "bare", {"FLOOPY_BARE_UPSTREAM": fake.base_url}, _ROOT))
    if worktree is not None:
        runs.append((f"gateway@{args.before}", "gateway", gateway_env, worktree))
    runs.append(("gateway", "gateway", gateway_env, _ROOT))
    found: dict[str, float] = {}
    try:
        for name, target, env, cwd in runs:
            found[name] = measure(
                directory, target, env, cwd, args.warmup, args.requests, args.concurrency
            )
            print(f"{name:<24}{found[name]:14,.0f} instructions per request", flush=True)
    finally:
        fake.stop()
        redis.stop()
        if worktree is not None:
            subprocess.run(
                ["git", "-C", str(_ROOT), "worktree", "remove", "--force", str(worktree)],
                check=False,
                capture_output=True,
            )
    fields = [f"{name.replace('@', '_at_')}={value:.0f}" for name, value in found.items()]
    if "bare" in found:
        print(f"gateway/bare: {found['gateway'] / found['bare']:.3f}")
        fields.append(f"gateway_over_bare={found['gateway'] / found['bare']:.3f}")
    if worktree is not None:
        before = found["gateway@" + args.before]
        print(f"working tree / {args.before}: {found['gateway'] / before:.3f}")
        fields.append(f"after_over_before={found['gateway'] / before:.3f}")
    print("RESULT instructions " + " ".join(fields))


if __name__ == "__main__":
    main()
