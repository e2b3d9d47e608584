"""Issue 9, items 2 and 3, at the lowest layer: a spool append and the replay lock on a file
system that is full to the last byte (a small tmpfs mounted by the test; root only)."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from ingester.lock import ReplayLock, inspect_lock, lock_path, read_lock
from shared.codec import decode_record, encode_record
from shared.records import RequestRecord
from shared.spool.reader import read_batches
from shared.spool.writer import SpoolWriter, spool_path
from shared.streams import Sink
from tests.disk import fill_disk

SINK = Sink.REQUESTS


def _payloads(n: int, start: int = 0) -> list[bytes]:
    return [
        encode_record(
            RequestRecord(
                request_id=f"r{i}",
                org_id="o",
                api_key_id="k",
                created_at_ms=1_700_000_000_000 + i,
                request_body="x" * 700,
            )
        )
        for i in range(start, start + n)
    ]


def _open_fds_to(path: Path) -> int:
    fd_dir = Path(f"/proc/{os.getpid()}/fd")
    return sum(1 for fd in fd_dir.iterdir() if os.path.realpath(fd) == str(path))


def test_a_failed_append_leaves_only_whole_lines(
    tmp_path: Path, small_tmpfs: Callable[[Path, str], Path]
) -> None:
    spool = small_tmpfs(tmp_path / "spool", "256k")
    writer = SpoolWriter(spool, SINK, cap_bytes=2**30, generations=1)
    written, failures, i = 0, 0, 0
    while failures < 3:
        batch = _payloads(7, start=i)
        i += 7
        try:
            writer.append(batch)
            written += len(batch)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            failures += 1
    data = spool_path(spool, SINK).read_bytes()
    assert data.endswith(b"\n"), "a failed append left a torn last line"
    lines = [p for b in read_batches(spool_path(spool, SINK), 1000) for p in b.payloads]
    assert len(lines) == written
    assert [decode_record(SINK, p).request_id for p in lines] == [f"r{n}" for n in range(written)]


def test_the_lock_is_held_on_a_full_disk_and_its_state_written_once_space_frees(
    tmp_path: Path, small_tmpfs: Callable[[Path, str], Path]
) -> None:
    spool = small_tmpfs(tmp_path / "spool", "64k")
    filler = fill_disk(spool)
    lock = ReplayLock(spool, SINK, owner="me:1:x", stale_after_s=30)
    assert lock.acquire(), "a full disk must not stop the replay that would free it"
    assert lock.counters.get("heartbeat_failures") == 1
    view = inspect_lock(spool, SINK)
    assert view is not None and view.state is None and view.held
    assert "held by a live process" in view.describe(0, 30)
    other = ReplayLock(spool, SINK, stale_after_s=0)
    assert not other.acquire(), "an empty lock file whose flock is held is never broken"
    assert "held by a live process" in other.holder

    filler.unlink()
    assert lock.heartbeat(file="f", offset=7)
    state = read_lock(spool, SINK)
    assert state is not None and (state.owner, state.offset) == ("me:1:x", 7)
    lock.release()
    assert not lock_path(spool, SINK).exists()
    assert _open_fds_to(lock_path(spool, SINK)) == 0


def test_a_failing_acquire_leaks_no_descriptor_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever fails after the create (here: the flock), nothing is left behind."""
    lock = ReplayLock(tmp_path, SINK)
    real_flock = __import__("fcntl").flock

    def failing_flock(fd: int, op: int) -> None:
        raise OSError(errno.EIO, "injected")

    monkeypatch.setattr("ingester.lock.fcntl.flock", failing_flock)
    before = len(os.listdir(f"/proc/{os.getpid()}/fd"))
    with pytest.raises(OSError, match="injected"):
        lock.acquire()
    monkeypatch.setattr("ingester.lock.fcntl.flock", real_flock)
    assert len(os.listdir(f"/proc/{os.getpid()}/fd")) == before
    assert not lock_path(tmp_path, SINK).exists()
    assert not lock.held
