"""Issue 9, item 7, with real processes under ``devstack.supervisor`` (what ``floopy-stack``
runs on): a dead child is restarted with a log line and a growing backoff; SIGINT, SIGTERM and
SIGHUP to the supervisor or to its process group stop every child, SIGINT even when inherited
ignored (a background job of a non-interactive shell); a SIGKILLed supervisor leaves no child."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(predicate: Callable[[], bool], timeout_s: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Supervised:
    def __init__(self, state: Path, children: dict[str, str], *, ignore_sigint: bool) -> None:
        self.state = state
        self.log = state / "supervisor.err"
        state.mkdir(parents=True, exist_ok=True)

        def background_job() -> None:  # what a non-interactive shell does for `cmd &`
            signal.signal(signal.SIGINT, signal.SIG_IGN)

        argv = [sys.executable, "-m", "devstack.supervisor", "--state", str(state)]
        with self.log.open("ab") as err:
            self.process = subprocess.Popen(
                [*argv, *(f"{name}={cmd}" for name, cmd in children.items())],
                stderr=err,
                start_new_session=True,
                preexec_fn=background_job if ignore_sigint else None,  # noqa: PLW1509 - test
            )
        wait_until(lambda: "supervising" in self.output(), what="the supervisor to start")
        self.seen = set(self.pids().values())

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def pids(self) -> dict[str, int]:
        pids: dict[str, int] = json.loads((self.state / "children.json").read_text())
        self.seen = getattr(self, "seen", set()) | set(pids.values())
        return pids

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        for pid in self.seen:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[Callable[..., Supervised]]:
    made: list[Supervised] = []

    def make(ignore_sigint: bool = False) -> Supervised:
        made.append(
            Supervised(
                tmp_path / "state",
                {"a": "sleep 600", "b": "sleep 601"},
                ignore_sigint=ignore_sigint,
            )
        )
        return made[-1]

    yield make
    for sup in made:
        sup.close()


def test_a_dead_child_is_restarted_with_a_log_line_and_a_growing_backoff(
    supervised: Callable[..., Supervised],
) -> None:
    sup = supervised()
    first = sup.pids()
    os.kill(first["a"], signal.SIGKILL)
    wait_until(lambda: sup.pids()["a"] != first["a"], what="a restarted")
    assert f"a (pid {first['a']}) exited with -9; restarting in 1s (restart 1)" in sup.output()
    # the new pid is written as the child starts, the line just after it
    wait_until(
        lambda: f"a restarted (pid {sup.pids()['a']})" in sup.output(), what="the restart logged"
    )
    second = sup.pids()["a"]
    os.kill(second, signal.SIGKILL)
    wait_until(lambda: sup.pids()["a"] != second, what="a restarted again")
    assert f"a (pid {second}) exited with -9; restarting in 2s (restart 2)" in sup.output()
    assert sup.pids()["b"] == first["b"], "the other child was left alone"
    assert alive(sup.pids()["a"]) and sup.process.poll() is None


@pytest.mark.parametrize("to_group", [False, True], ids=["to-process", "to-group"])
@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name
)
def test_a_stop_signal_stops_every_child(
    supervised: Callable[..., Supervised], sig: signal.Signals, to_group: bool
) -> None:
    sup = supervised(ignore_sigint=True)
    children = list(sup.pids().values())
    assert all(alive(pid) for pid in children)
    if to_group:
        os.killpg(sup.process.pid, sig)
    else:
        sup.process.send_signal(sig)
    assert sup.process.wait(15) == 0
    assert not [pid for pid in children if alive(pid)]
    assert f"{sig.name}: stopping" in sup.output()


def test_children_do_not_outlive_a_sigkilled_supervisor(
    supervised: Callable[..., Supervised],
) -> None:
    sup = supervised()
    children = list(sup.pids().values())
    sup.process.kill()
    sup.process.wait()
    wait_until(lambda: not any(alive(pid) for pid in children), what="the orphans to die")
