"""Ingest scale-out benchmark: N stream shards consumed by N ``floopy-ingester worker``
processes (each assigned one shard), for each N given; records/s into ClickHouse.

Starts its own ClickHouse and, per N, a fresh Redis (one node, or with ``--cluster`` a 3-master
Redis Cluster from ``devstack.servers``), preloads the same realistic 2-4 KB records spread
evenly over the N shards of the requests sink (as the gateway spreads them by request id),
starts the N workers and times from the first row in ClickHouse to the last (start-up is not
counted). Also reports the CPU seconds the workers and ClickHouse used, to show where the
machine's cores went.

    python -m bench.ingest_scaleout --records 60000 --processes 1,2,4
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from clickhouse_driver import Client

from bench.ingest import BenchEnv, bench_env, generate_payloads
from devstack.servers import RedisCluster, RedisServer
from ingester.decode import tune_gc_for_batches
from ingester.schema.migrate import migrate
from shared.streams import RECORD_FIELD, Sink, stream_key

__all__ = ["main"]


@dataclass(frozen=True)
class Run:
    processes: int
    records: int
    seconds: float
    worker_cpu_s: float
    clickhouse_cpu_s: float

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (Linux /proc), children excluded."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _preload(client: redis.Redis, prefix: str, shards: int, payloads: list[bytes]) -> None:
    keys = [stream_key(Sink.REQUESTS, prefix, shard) for shard in range(shards)]
    for start in range(0, len(payloads), 2000):
        pipe = client.pipeline(transaction=False)
        for i, payload in enumerate(payloads[start : start + 2000], start):
            pipe.xadd(keys[i % shards], {RECORD_FIELD: payload})
        pipe.execute()


def run_once(
    env: BenchEnv, payloads: list[bytes], n: int, *, cluster: bool, batch: int, deadline_s: float
) -> Run:
    directory = env.scratch / f"redis-{n}"
    server: RedisServer | RedisCluster = (
        RedisCluster(directory) if cluster else RedisServer(directory)
    )
    arq = RedisServer(env.scratch / f"arq-{n}") if cluster else None
    server.start()
    if arq is not None:
        arq.start()
    prefix = f"scale{n}"
    direct = (
        redis.RedisCluster.from_url(server.url) if cluster else redis.Redis.from_url(server.url)
    )
    _preload(direct, prefix, n, payloads)
    database = f"bench_scale_{n}"
    migrate(env.clickhouse.model_copy(update={"database": database}))
    common = {
        **os.environ,
        "FLOOPY_INGESTER_REDIS__URL": server.url,
        "FLOOPY_INGESTER_REDIS__CLUSTER": "true" if cluster else "false",
        "FLOOPY_INGESTER_REDIS__STREAM_SHARDS": str(n),
        "FLOOPY_INGESTER_REDIS__KEY_PREFIX": prefix,
        "FLOOPY_INGESTER_CLICKHOUSE__PORT": str(env.clickhouse.port),
        "FLOOPY_INGESTER_CLICKHOUSE__DATABASE": database,
        "FLOOPY_INGESTER_DEAD_LETTER_DIR": str(env.scratch / "dead"),
        "FLOOPY_INGESTER_BATCH_RECORDS": str(batch),
        "FLOOPY_INGESTER_LOG_LEVEL": "WARNING",
        **({"FLOOPY_INGESTER_ARQ_REDIS_URL": arq.url} if arq is not None else {}),
    }
    worker_bin = str(Path(sys.executable).parent / "floopy-ingester")
    procs = [
        subprocess.Popen(
            [worker_bin, "worker"],
            env={
                **common,
                "FLOOPY_INGESTER_SHARDS": f"[{i}]",
                "FLOOPY_INGESTER_SPOOL_DIR": str(env.scratch / f"spool-{n}-{i}"),
            },
            start_new_session=True,
        )
        for i in range(n)
    ]
    client = Client(host="127.0.0.1", port=env.clickhouse.port, database=database)
    clickhouse_pid = _clickhouse_pid(env)
    done = first = 0
    started = time.perf_counter()
    cpu0 = ch0 = 0.0
    deadline = time.monotonic() + deadline_s
    try:
        while done < len(payloads) and time.monotonic() < deadline:
            time.sleep(0.02)
            done = int(client.execute("SELECT count() FROM requests")[0][0])
            if not first and done:
                first, started = done, time.perf_counter()
                cpu0 = sum(_cpu_seconds(p.pid) for p in procs)
                ch0 = _cpu_seconds(clickhouse_pid)
        seconds = time.perf_counter() - started
        worker_cpu = sum(_cpu_seconds(p.pid) for p in procs) - cpu0
        clickhouse_cpu = _cpu_seconds(clickhouse_pid) - ch0
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(30)
        client.disconnect()
        direct.close()
        server.kill()
        if arq is not None:
            arq.kill()
    return Run(n, done - first, seconds, worker_cpu, clickhouse_cpu)


def _clickhouse_pid(env: BenchEnv) -> int:
    """The ClickHouse server bench_env started (the one listening on its port)."""
    out = subprocess.run(
        ["pgrep", "-f", f"{env.scratch}/clickhouse/config.xml"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    return int(out[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=60_000)
    parser.add_argument("--processes", default="1,2,4", help="comma-separated N values")
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--cluster", action="store_true", help="a 3-master Redis Cluster")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="per N")
    args = parser.parse_args(argv)
    tune_gc_for_batches()
    payloads = generate_payloads(args.records)
    mean = sum(map(len, payloads)) / len(payloads)
    print(f"{len(payloads)} records, mean {mean:.0f} bytes, {os.cpu_count()} cores", flush=True)
    with bench_env() as env:
        for n in map(int, args.processes.split(",")):
            run = run_once(
                env,
                payloads,
                n,
                cluster=args.cluster,
                batch=args.batch,
                deadline_s=args.max_seconds,
            )
            print(
                f"RESULT processes={run.processes} shards={run.processes} "
                f"redis={'cluster' if args.cluster else 'node'} records={run.records} "
                f"seconds={run.seconds:.2f} records_per_s={run.records_per_s:.0f} "
                f"worker_cpu_s={run.worker_cpu_s:.1f} clickhouse_cpu_s={run.clickhouse_cpu_s:.1f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
