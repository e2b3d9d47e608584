"""Redis fault drill: the whole stack under load while its Redis is SIGKILLed (then restarted)
and hung (SIGSTOP, then SIGCONT), again and again; then every answered request's raw rows are
counted in ClickHouse, without ``FINAL``. The e2e tests make one fault each; this program makes
``--faults`` of them in one run, so a window that opens once in a hundred faults shows.

Each fault starts once ``--every`` more requests were sent and lasts until ``--during`` requests
were answered (from the gateway's buffer and outage spool) and a time drawn between 0.6 s and
``--max-down-s`` passed (``--seed``): longer than the gateway's Redis timeout (0.5 s here), so
a call sent to a hung Redis is given up on and runs later; some outages end within the
gateway's spool grace (1 s), some after its buffer went to disk. Kills and hangs alternate.
The load is the fault tests' (``tests.e2e.load.Load``: 6 clients of the openai SDK). What it
prints: requests answered, request ids with no row (lost), raw rows past the first of a
request id (doubled) and of a span, and the gateway's ``publisher.deduplicated`` (copies its
fences kept out of the streams).

    python -m bench.redis_fault_drill --faults 10
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import tempfile
import time
from pathlib import Path

import httpx

from bench.ingest import set_merges
from devstack.servers import ClickHouseServer, RedisServer
from shared.settings import ClickHouseSettings
from tests.e2e.harness import ORG_ID, Floopy
from tests.e2e.load import Load

__all__ = ["main"]

OPS_KEY = "sk-floopy-drill-ops"
"""An operator's admin key: ``/health`` shows its counters to those only."""


async def _faults(load: Load, redis: RedisServer, args: argparse.Namespace) -> None:
    draw = random.Random(args.seed)
    for n in range(args.faults):
        down_s = draw.uniform(0.6, args.max_down_s)
        await load.until_sent(load.sent + args.every)
        kind = "killed" if n % 2 == 0 else "hung"
        load.phase = kind
        started = time.monotonic()
        if kind == "killed":
            await asyncio.to_thread(redis.kill)
            try:
                await _answered(load, args.during, down_s)
            finally:
                await asyncio.to_thread(redis.start)
        else:
            with redis.hung():
                await _answered(load, args.during, down_s)
        load.phase = "between"
        print(f"fault {n + 1}: redis {kind} {time.monotonic() - started:.1f} s", flush=True)
    load.stopping = True


async def _answered(load: Load, more: int, at_least_s: float) -> None:
    """Until ``more`` requests more were answered, and ``at_least_s`` passed."""
    target, until = len(load.answered) + more, time.monotonic() + at_least_s
    while len(load.answered) < target or time.monotonic() < until:  # noqa: ASYNC110 - a counter
        await asyncio.sleep(0.02)


def _stop_merges(floopy: Floopy) -> None:
    """A background merge of the ReplacingMergeTree tables would collapse a doubled record
    before it is counted; with merges stopped, every copy inserted stays a raw row."""
    floopy.wait_for(
        lambda: {"requests", "spans"} <= {t for (t,) in floopy.query("SHOW TABLES")},
        timeout_s=30,
        what="the ingester's tables",
    )
    settings = ClickHouseSettings(port=floopy.clickhouse.port, database=floopy.database)
    for table in ("requests", "spans"):
        set_merges(settings, table, running=False)


def _deduplicated(floopy: Floopy) -> int:
    ops = {"Authorization": f"Bearer {OPS_KEY}"}
    health = httpx.get(f"{floopy.gateway_url}/health", headers=ops, timeout=5).json()
    return int(health["publisher"]["deduplicated"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--faults", type=int, default=10)
    parser.add_argument("--every", type=int, default=150, help="requests sent between faults")
    parser.add_argument("--during", type=int, default=100, help="requests answered per fault")
    parser.add_argument("--max-down-s", type=float, default=5.0, help="longest fault")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--wait-s", type=float, default=120.0, help="for the rows, at the end")
    parser.add_argument("--logs", type=Path, help="copy the processes' logs here at the end")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="floopy-drill-") as tmp:
        root = Path(tmp)
        redis = RedisServer(root / "redis")
        clickhouse = ClickHouseServer(root / "clickhouse")
        redis.start()
        clickhouse.start()
        floopy = Floopy(root / "stack", redis, clickhouse)
        floopy.root.mkdir()
        try:
            floopy.start_provider()
            floopy.start_ingester(FLOOPY_INGESTER_CLAIM_MIN_IDLE_S="300")
            _stop_merges(floopy)
            floopy.config["keys"]["key-ops"] = {
                "org": ORG_ID,
                "secret": OPS_KEY,
                "permissions": ["admin"],
            }
            floopy.start_gateway(
                FLOOPY_GATEWAY_OPERATOR_ORGS=f'["{ORG_ID}"]',
                FLOOPY_GATEWAY_REDIS__SOCKET_TIMEOUT_S="0.5",
                FLOOPY_GATEWAY_REDIS__CONNECT_TIMEOUT_S="0.5",
                FLOOPY_GATEWAY_PUBLISHER__RETRY_MAX_S="0.3",
            )
            load = Load(floopy)
            asyncio.run(load.run(lambda load: _faults(load, redis, args)))
            print(load.report())
            for failure in load.failures[:3]:
                print("failed:", failure)
            deadline = time.monotonic() + args.wait_s
            missing, doubled = floopy.missing_and_doubled(load.answered)
            while missing and time.monotonic() < deadline:
                time.sleep(1)
                missing, doubled = floopy.missing_and_doubled(load.answered)
            time.sleep(2)  # a late copy would come with the same drain
            missing, doubled = floopy.missing_and_doubled(load.answered)
            ((spans_doubled,),) = floopy.query(
                "SELECT count() - uniqExact(request_id, span_id) FROM spans"
            )
            for part, n in floopy.query(
                "SELECT _part, count() FROM requests WHERE request_id IN "
                "(SELECT request_id FROM requests GROUP BY request_id HAVING count() > 1) "
                "GROUP BY _part ORDER BY _part"
            ):
                print(f"doubled rows in part {part}: {n}")
            print(
                f"RESULT redis_fault_drill faults={args.faults} answered={len(load.answered)} "
                f"failed={len(load.failures)} missing={len(missing)} "
                f"doubled={sum(n - 1 for n in doubled.values())} spans_doubled={spans_doubled} "
                f"deduplicated={_deduplicated(floopy)}",
                flush=True,
            )
        finally:
            floopy.stop_all()
            if args.logs:
                args.logs.mkdir(parents=True, exist_ok=True)
                for log in floopy.root.glob("*.log"):
                    shutil.copy(log, args.logs)
            clickhouse.stop()
            redis.stop()


if __name__ == "__main__":
    main()
