"""Replay benchmark: how fast one process replays a spool into ClickHouse, and at what memory.

Writes ``--records`` realistic 2-4 KB request records to a spool (in batches, through
``SpoolWriter``), starts its own ClickHouse (``bench.ingest.bench_env``), then times
``Replayer.replay`` once per ``--writers`` (each on a copy of the same spool, into a database of
its own) and prints records/s, the CPU per record of this process and of ClickHouse
(background merges included; with ``--merges-after`` the merges run after the replay and
their CPU is printed apart), and the peak RSS of the replay alone (the kernel's high-water
mark is reset after the spool is written). Bounded by ``--max-seconds``. Not a test.

    python -m bench.replay --records 100000
    python -m bench.replay --records 1000000 --null-table   # the replay process's own ceiling
    python -m bench.replay --records 1000000 --merges-after  # merges' CPU apart from the insert's
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import time
from pathlib import Path

from bench.ingest import (
    NULL_TABLE_HELP,
    PIN_HELP,
    BenchEnv,
    bench_env,
    cpu_seconds,
    make_record,
    rows_hash,
    set_merges,
    storing_nothing,
    wait_for_merges,
)
from ingester.decode import tune_gc_for_batches
from ingester.delivery import Delivery
from ingester.replay import Replayer, pending_files
from ingester.schema.migrate import migrate
from shared.codec import encode_record
from shared.spool.writer import SpoolWriter
from shared.streams import Sink
from shared.tables import RAW_TABLES

__all__ = ["main"]


class _Deadline(Exception):
    """Raised from the progress callback to stop a replay that runs past --max-seconds."""


def _rss_kib(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def write_spool(directory: Path, records: int, batch: int) -> int:
    """Spool ``records`` records, generated ``batch`` at a time; returns the bytes written."""
    rng = random.Random(11)
    now_ms = int(time.time() * 1000)
    writer = SpoolWriter(directory, Sink.REQUESTS, cap_bytes=2**40, generations=3)
    written = 0
    for start in range(0, records, batch):
        payloads = [
            encode_record(make_record(rng, now_ms)) for _ in range(min(batch, records - start))
        ]
        writer.append(payloads)
        written += sum(len(p) + 1 for p in payloads)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--batch-records", type=int, default=5000)
    parser.add_argument(
        "--insert-records",
        default="50000",
        help="records per INSERT (comma-separated: one run per value, after --writers)",
    )
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument(
        "--writers",
        default="bulk",
        help="comma-separated, of: bulk (ingester.native), driver (clickhouse-driver's own "
        "column writer, as before); the same spool is replayed once per writer, in this order",
    )
    parser.add_argument(
        "--gc-walks-batches",
        action="store_true",
        help="the collector as before batches were frozen out of it (to measure the change)",
    )
    parser.add_argument(
        "--null-table",
        action="store_true",
        help=NULL_TABLE_HELP,
    )
    parser.add_argument("--pin", action="store_true", help=PIN_HELP)
    parser.add_argument(
        "--merges-after",
        action="store_true",
        help="the table's background merges stopped during the replay and started after it, "
        "their CPU reported apart: on two cores they share ClickHouse's core with the inserts; "
        "with ClickHouse on its own machine they run beside them",
    )
    args = parser.parse_args(argv)
    tune_gc_for_batches(freeze_batches=not args.gc_walks_batches)  # as the CLI does

    with bench_env(pinned=args.pin) as env:
        spool = env.scratch / "spool"
        size = write_spool(spool, args.records, args.batch_records)
        files = len(pending_files(spool, Sink.REQUESTS))
        print(
            f"spooled {args.records} records, {size / 2**20:.1f} MiB, "
            f"mean {size / args.records:.0f} bytes in {files} file(s)",
            flush=True,
        )
        runs = [
            (writer, int(records))
            for writer in args.writers.split(",")
            for records in args.insert_records.split(",")
        ]
        for run, (writer, insert_records) in enumerate(runs):
            copy = env.scratch / f"spool-{run}"
            shutil.copytree(spool, copy)
            if not _replay_once(env, copy, (writer, insert_records), run, size=size, args=args):
                return 1
    return 0


def _replay_once(
    env: BenchEnv,
    spool: Path,
    how: tuple[str, int],
    run: int,
    *,
    size: int,
    args: argparse.Namespace,
) -> bool:
    """Replay ``spool`` into a fresh database with ``how`` (writer, records per insert); print
    its RESULT line."""
    writer, insert_records = how
    bulk = {"bulk": True, "driver": False}[writer]
    settings = env.clickhouse.model_copy(
        update={"bulk_writer": bulk, "database": f"bench_replay_{run}"}
    )
    migrate(settings)
    table = RAW_TABLES[Sink.REQUESTS]
    if args.null_table:
        storing_nothing(settings, table)
    elif args.merges_after:
        set_merges(settings, table, running=False)
    reset = _reset_peak_rss()
    sampled = [_rss_kib("VmRSS")]
    deadline = time.monotonic() + args.max_seconds

    def progress(done: int, total: int) -> None:
        sampled.append(_rss_kib("VmRSS"))
        if time.monotonic() > deadline:
            raise _Deadline(f"stopped at {done}/{total} bytes")

    delivery = Delivery(settings, env.scratch / "dead")
    replayer = Replayer(
        spool,
        Sink.REQUESTS,
        delivery,
        batch_records=args.batch_records,
        insert_records=insert_records,
    )
    wait_for_merges(settings)
    client_cpu, server_cpu = cpu_seconds(os.getpid()), cpu_seconds(env.server_pid)
    started = time.perf_counter()
    try:
        report = replayer.replay(progress=progress)
    except _Deadline as exc:
        print(f"DEADLINE {exc}", flush=True)
        return False
    finally:
        delivery.close()
    seconds = time.perf_counter() - started
    client_cpu = cpu_seconds(os.getpid()) - client_cpu
    ended = cpu_seconds(env.server_pid)
    deferred = args.merges_after and not args.null_table
    if deferred:
        set_merges(settings, table, running=True)
        wait_for_merges(settings, 300.0, table=table, quiet_s=12.0)
    else:
        wait_for_merges(settings)
    merge_cpu = cpu_seconds(env.server_pid) - ended
    server_cpu = ended - server_cpu if deferred else ended - server_cpu + merge_cpu
    per_record = 1e6 / max(report.records, 1)
    peak = _rss_kib("VmHWM") if reset else max(sampled)
    merges = f"merges_after_cpu_us_per_record={merge_cpu * per_record:.1f} " if deferred else ""
    print(
        f"RESULT writer={writer} insert_records={insert_records} "
        f"table={'null' if args.null_table else 'stored'} "
        f"gc={'walks-batches' if args.gc_walks_batches else 'frozen-batches'} "
        f"records={report.records} status={report.status} seconds={seconds:.2f} "
        f"records_per_s={report.records / seconds:.0f} "
        f"mib_per_s={size / 2**20 / seconds:.1f} spool_mib={size / 2**20:.1f} "
        f"client_cpu_us_per_record={client_cpu * per_record:.1f} "
        f"clickhouse_cpu_us_per_record={server_cpu * per_record:.1f} "
        f"{merges}"
        f"peak_rss_mib={peak / 1024:.0f} ({'VmHWM' if reset else 'sampled VmRSS'}) "
        f"rss_before_mib={sampled[0] / 1024:.0f} "
        f"rows_hash={'-' if args.null_table else rows_hash(settings)}",
        flush=True,
    )
    return True


if __name__ == "__main__":
    sys.exit(main())
