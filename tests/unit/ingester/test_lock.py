from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path

import msgspec
import pytest

from ingester.lock import (
    LockState,
    ReplayLock,
    break_decision,
    is_stale,
    lock_path,
    read_lock,
)
from shared.streams import Sink

SINK = Sink.REQUESTS


def _write_stale(directory: Path, owner: str = "deadhost:1:abc", age_s: float = 3600) -> LockState:
    """A lock file as a dead holder leaves it: old heartbeat, old mtime, no flock."""
    then = time.time() - age_s
    state = LockState(owner=owner, heartbeat=then, started=then, file="f.jsonl", offset=1234)
    path = lock_path(directory, SINK)
    path.write_bytes(msgspec.json.encode(state))
    os.utime(path, (then, then))
    return state


def test_is_stale_uses_the_newer_of_heartbeat_and_mtime() -> None:
    state = LockState(owner="o", heartbeat=100.0, started=100.0)
    assert is_stale(state, mtime=100.0, now=131.0, stale_after_s=30)
    assert not is_stale(state, mtime=100.0, now=129.0, stale_after_s=30)
    assert not is_stale(state, mtime=125.0, now=131.0, stale_after_s=30)
    assert not is_stale(None, mtime=125.0, now=131.0, stale_after_s=30)
    assert is_stale(None, mtime=0.0, now=131.0, stale_after_s=30)


def test_acquire_writes_state_and_release_removes_the_file(tmp_path: Path) -> None:
    lock = ReplayLock(tmp_path, SINK, owner="me:1:x")
    assert lock.acquire()
    state = read_lock(tmp_path, SINK)
    assert state is not None and state.owner == "me:1:x"
    lock.heartbeat(file="requests.jsonl.replay.1.000", offset=42)
    state = read_lock(tmp_path, SINK)
    assert state is not None and (state.file, state.offset) == ("requests.jsonl.replay.1.000", 42)
    lock.heartbeat(file="", offset=0)  # shorter JSON: the padding keeps it parseable
    state = read_lock(tmp_path, SINK)
    assert state is not None and (state.file, state.offset) == ("", 0)
    lock.release()
    lock.release()  # idempotent
    assert not lock_path(tmp_path, SINK).exists()
    assert read_lock(tmp_path, SINK) is None


def test_a_live_holder_is_never_broken_even_with_an_old_heartbeat(tmp_path: Path) -> None:
    holder = ReplayLock(tmp_path, SINK, owner="holder:1:x", stale_after_s=3600)
    assert holder.acquire()
    path = lock_path(tmp_path, SINK)
    os.utime(path, (0, 0))  # looks ancient, but the flock is held
    other = ReplayLock(tmp_path, SINK, stale_after_s=0)
    assert not other.acquire()
    assert other.blocked_by is not None and other.blocked_by.owner == "holder:1:x"
    assert read_lock(tmp_path, SINK) is not None
    holder.release()
    assert other.acquire()
    other.release()


def test_a_stale_lock_is_broken_and_its_position_inherited(tmp_path: Path) -> None:
    dead = _write_stale(tmp_path)
    lock = ReplayLock(tmp_path, SINK, stale_after_s=30)
    assert lock.acquire()
    assert lock.inherited == dead
    state = read_lock(tmp_path, SINK)
    assert state is not None and state.owner == lock.owner
    lock.release()


def test_a_recent_lock_without_flock_is_not_broken(tmp_path: Path) -> None:
    _write_stale(tmp_path, age_s=5)
    lock = ReplayLock(tmp_path, SINK, stale_after_s=30)
    assert not lock.acquire()
    assert lock.blocked_by is not None and lock.blocked_by.owner == "deadhost:1:abc"
    assert lock_path(tmp_path, SINK).exists()


def test_an_unreadable_lock_counts_as_fresh_until_its_mtime_ages(tmp_path: Path) -> None:
    path = lock_path(tmp_path, SINK)
    path.write_bytes(b"")  # a holder created it and has not written yet
    assert not ReplayLock(tmp_path, SINK, stale_after_s=30).acquire()
    os.utime(path, (time.time() - 60, time.time() - 60))
    lock = ReplayLock(tmp_path, SINK, stale_after_s=30)
    assert lock.acquire()
    assert lock.inherited is None
    lock.release()


def test_release_leaves_a_replacement_alone(tmp_path: Path) -> None:
    lock = ReplayLock(tmp_path, SINK)
    assert lock.acquire()
    path = lock_path(tmp_path, SINK)
    path.unlink()
    path.write_bytes(b"{}")  # another host broke it and took it
    lock.release()
    assert path.read_bytes() == b"{}"


def test_the_heartbeat_thread_keeps_the_lock_fresh(tmp_path: Path) -> None:
    lock = ReplayLock(tmp_path, SINK, stale_after_s=0.15)
    assert lock.acquire()
    first = read_lock(tmp_path, SINK)
    assert first is not None
    deadline = time.monotonic() + 10
    while (state := read_lock(tmp_path, SINK)) is None or state.heartbeat == first.heartbeat:
        assert time.monotonic() < deadline, "heartbeat never refreshed"
        time.sleep(0.02)
    lock.release()


_HOLD = """
import sys, time
from pathlib import Path
from ingester.lock import ReplayLock
from shared.streams import Sink
lock = ReplayLock(Path(sys.argv[1]), Sink.REQUESTS, stale_after_s=0.2, owner="victim:1:x")
assert lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_sigkilled_holder_is_broken_once_its_heartbeat_is_stale(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        assert not ReplayLock(tmp_path, SINK, stale_after_s=0.2).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 10
    lock = ReplayLock(tmp_path, SINK, stale_after_s=0.2)
    while not lock.acquire():
        assert time.monotonic() < deadline, "stale lock never broken"
        time.sleep(0.05)
    assert lock.inherited is not None and lock.inherited.owner == "victim:1:x"
    lock.release()


def _contend(
    directory: str, tried: Barrier, done: Barrier, wins: multiprocessing.Queue[bool]
) -> None:
    lock = ReplayLock(Path(directory), SINK, stale_after_s=1)
    tried.wait()
    won = lock.acquire()
    done.wait()  # hold until every contender has tried
    wins.put(won)
    lock.release()


@pytest.mark.parametrize("round_", range(3))
def test_breakers_racing_for_one_stale_lock_yield_one_winner(tmp_path: Path, round_: int) -> None:
    _write_stale(tmp_path, owner=f"dead:{round_}:x")
    ctx = multiprocessing.get_context("spawn")
    n = 4
    tried, done, wins = ctx.Barrier(n), ctx.Barrier(n), ctx.Queue()
    procs = [
        ctx.Process(target=_contend, args=(str(tmp_path), tried, done, wins)) for _ in range(n)
    ]
    for p in procs:
        p.start()
    results = [wins.get(timeout=30) for _ in range(n)]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert results.count(True) == 1
    assert not lock_path(tmp_path, SINK).exists()


_HOLD_AS_ME = """
import sys, time
from pathlib import Path
from ingester.lock import ReplayLock
from shared.streams import Sink
lock = ReplayLock(Path(sys.argv[1]), Sink.REQUESTS, stale_after_s=3600)
assert lock.acquire()
print(lock.owner, flush=True)
time.sleep(600)
"""


def test_a_dead_holder_on_this_host_is_broken_at_once_not_after_its_heartbeat_ages(
    tmp_path: Path,
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD_AS_ME, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        owner = proc.stdout.readline().strip()
        blocked = ReplayLock(tmp_path, SINK, stale_after_s=3600)
        assert not blocked.acquire()
        assert blocked.holder == f"{owner} (held by a live process)"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    lock = ReplayLock(tmp_path, SINK, stale_after_s=3600)
    assert lock.acquire(), "the owner's pid is gone: nothing to wait for"
    assert lock.inherited is not None and lock.inherited.owner == owner
    lock.release()


def test_break_decision_says_why_and_when() -> None:
    here = socket.gethostname()
    beat = LockState(owner=f"{here}:4242:x", heartbeat=100.0, started=90.0)
    assert break_decision(beat, 100.0, 110.0, 30, host=here, alive=False) == (
        True,
        "its process 4242 is gone",
    )
    breaks, why = break_decision(beat, 100.0, 110.0, 30, host=here, alive=True)
    assert not breaks and why.endswith("(in 20s)")
    far = LockState(owner="far:1:x", heartbeat=100.0, started=90.0)
    breaks, why = break_decision(far, 100.0, 125.0, 30, host=here, alive=None)
    assert not breaks and why.startswith("heartbeat on far 25s ago") and "(in 5s)" in why
    assert break_decision(far, 100.0, 131.0, 30, host=here, alive=None)[0]
    breaks, why = break_decision(None, 100.0, 200.0, 30, host=here, alive=None)
    assert breaks and why == "empty or unreadable lock file, last written 100s ago"
