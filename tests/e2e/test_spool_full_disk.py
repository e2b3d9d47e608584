"""Issue 9, items 2 and 3, end to end: the spool on a small tmpfs (mounted by the test; root
only) fills up while ClickHouse is down under load, to the last byte, so spool appends fail
part-way (ENOSPC) and the replay lock's first write fails too. Then ClickHouse returns, the disk
still full: the worker's replay runs by itself (the lock's JSON is best effort, the flock is the
lock) and frees the disk, a CLI replay beside it prints one line, no torn line became a dead
letter, no descriptor leaked, and every answered request is in ClickHouse once."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devstack.servers import ClickHouseServer, RedisServer
from ingester.replay import pending_files
from shared.streams import Sink
from tests.disk import fill_disk
from tests.e2e.harness import BIN, Floopy
from tests.e2e.load import Load
from tests.e2e.test_ingester_faults import pending, until_logged

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


@pytest.fixture
def own_clickhouse(clickhouse_factory: Callable[[], ClickHouseServer]) -> ClickHouseServer:
    return clickhouse_factory()


@pytest.fixture
def floopy_small_spool(
    tmp_path: Path,
    redis_server: RedisServer,
    own_clickhouse: ClickHouseServer,
    small_tmpfs: Callable[[Path, str], Path],
) -> Iterator[Floopy]:
    stack = Floopy(tmp_path, redis_server, own_clickhouse)
    small_tmpfs(stack.spool_dir, "2m")
    stack.start_provider()
    # XAUTOCLAIM after 300 s: whatever arrives within the test's wait was settled by the worker
    stack.start_ingester(
        FLOOPY_INGESTER_CLAIM_MIN_IDLE_S="300", FLOOPY_INGESTER_ERROR_BACKOFF_S="0.5"
    )
    stack.start_gateway()
    yield stack
    stack.stop_all()


def torn_files(directory: Path) -> list[str]:
    return [
        p.name
        for sink in Sink
        for p in pending_files(directory, sink)
        if p.stat().st_size and not p.read_bytes().endswith(b"\n")
    ]


def open_lock_fds(pid: int) -> list[str]:
    fd_dir = Path(f"/proc/{pid}/fd")
    targets = [os.path.realpath(fd) for fd in fd_dir.iterdir()]
    return [t for t in targets if t.endswith(".replaying")]


def run_cli(floopy: Floopy, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(BIN / "floopy-ingester"), *args]
    return subprocess.run(argv, env=floopy.env(), capture_output=True, text=True, check=False)


def dead_letters(floopy: Floopy) -> int:
    directory = floopy.root / "dead-letter"
    return (
        sum(len(p.read_bytes().splitlines()) for p in directory.glob("*"))
        if directory.is_dir()
        else 0
    )


async def test_a_full_spool_disk_delays_nothing_once_clickhouse_returns(
    floopy_small_spool: Floopy, own_clickhouse: ClickHouseServer
) -> None:
    floopy = floopy_small_spool
    spool = floopy.spool_dir

    async def fill_the_disk() -> None:
        await until_logged(floopy, "spooled", 1)
        fill_disk(spool)  # the spool files' last pages still have room: appends tear there
        await until_logged(floopy, "spool write failed on requests", 2)
        assert not torn_files(spool), "a failed append left a torn line"

    load = Load(floopy, limit=700)
    await load.run_fault(
        at=100,
        until=500,
        down=own_clickhouse.kill,
        up=own_clickhouse.start,
        meanwhile=fill_the_disk,
        phases=("clickhouse down", "clickhouse back, disk full"),
    )
    cli = await asyncio.to_thread(run_cli, floopy, "replay")
    print(cli.stdout, cli.stderr)
    assert "Traceback" not in cli.stdout + cli.stderr
    floopy.wait_for(
        lambda: not floopy.missing_and_doubled(load.answered)[0],
        timeout_s=60,
        what="every answered request in clickhouse with the spool disk still full",
    )
    floopy.wait_for(lambda: not any(pending_files(spool, s) for s in Sink), what="spool replayed")
    floopy.wait_for(lambda: pending(floopy) == {"requests": 0, "spans": 0}, timeout_s=15)
    missing, doubled = floopy.missing_and_doubled(load.answered)
    assert not missing
    print(f"request ids with more than one raw row: {len(doubled)}")
    assert dead_letters(floopy) == 0, "torn spool lines became dead letters"
    ingester = floopy.processes["ingester"]
    assert open_lock_fds(ingester.pid) == []
    status = await asyncio.to_thread(run_cli, floopy, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    rows = {line.split("│")[1].strip(): line for line in status.stdout.splitlines() if "│" in line}
    assert rows["replay lock"].count("-") == len(Sink), rows["replay lock"]
