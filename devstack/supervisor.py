"""Child processes that restart when they die and never outlive their supervisor.

Invariants:
- Every child runs in its own session (so a terminal's or a process group's signal reaches only
  the supervisor, which stops the children in order) and carries a parent-death signal
  (``prctl(PR_SET_PDEATHSIG)`` set between fork and exec): if the supervisor dies, even by
  SIGKILL, the kernel sends each child ``DEATH_SIGNAL``. A child that finds its parent already
  gone by then signals itself.
- A child that exits while the supervisor is not stopping is started again after a backoff
  (``next_backoff``: the ``shared.backoff`` schedule from 1 s doubling to 30 s, back to 1 s
  once a child stayed up 30 s), with a log line each time.
- SIGINT, SIGTERM and SIGHUP stop the supervisor the same way, whoever sends them and even when
  the shell started it with SIGINT ignored (a background job); stopping is SIGTERM to each
  child's session in reverse start order, SIGKILL after a deadline. Signals that arrive while
  stopping are ignored.
- ``<state dir>/children.json`` maps each child to its current pid, for on-call and tests.

``python -m devstack.supervisor --state DIR NAME=COMMAND …`` supervises arbitrary commands.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType

from shared.backoff import Backoff

__all__ = [
    "DEATH_SIGNAL",
    "STOP_SIGNALS",
    "Child",
    "Stopped",
    "Supervisor",
    "die_with_parent",
    "next_backoff",
    "stop_signals",
]

DEATH_SIGNAL = signal.SIGTERM
"""What a child gets when the supervisor dies: SIGTERM lets Redis, ClickHouse and granian stop
cleanly (granian stops its own workers); every child here exits on it within seconds."""

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)  # loaded before any fork: preexec must not load it


def die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` giving the child ``DEATH_SIGNAL`` when the process that forked it dies."""
    parent = os.getpid()

    def preexec() -> None:
        _libc.prctl(_PR_SET_PDEATHSIG, int(DEATH_SIGNAL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody will signal us
            os.kill(os.getpid(), DEATH_SIGNAL)

    return preexec


RESTART_BACKOFF = Backoff(first_s=1.0, max_s=30.0)
STABLE_AFTER_S = 30.0
"""A child that stayed up this long before dying starts its backoff over."""


def next_backoff(failures: int, ran_for_s: float) -> tuple[int, float]:
    """A child that ran ``ran_for_s`` then died, after ``failures`` deaths in a row before it:
    its deaths in a row now and the wait before restarting it (a stable run starts over)."""
    failures = 1 if ran_for_s >= STABLE_AFTER_S else failures + 1
    return failures, RESTART_BACKOFF.delay_s(failures)


class Stopped(BaseException):
    """A stop signal arrived; its name is the message. A ``BaseException`` so no ``except
    Exception`` on the way (a child's start-up, say) can swallow it."""


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """While inside: SIGINT, SIGTERM and SIGHUP raise ``Stopped`` (SIGINT too when inherited
    ignored). On the way out they are ignored, so stopping is not interrupted."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Stopped(signal.Signals(signum).name)

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


@dataclass
class Child:
    name: str
    start: Callable[[], subprocess.Popen[bytes]]
    """Starts the process (and waits until it is ready, if it should) and returns it."""
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff_s: float = 0.0
    failures: int = 0
    """Deaths in a row (without a stable run between them)."""
    restart_at: float | None = None
    restarts: int = 0


def _say(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", file=sys.stderr, flush=True)


@dataclass
class Supervisor:
    state_dir: Path
    stop_timeout_s: float = 20.0
    say: Callable[[str], None] = _say
    children: list[Child] = field(default_factory=list)

    def add(self, name: str, start: Callable[[], subprocess.Popen[bytes]]) -> Child:
        """Start a child now and keep it running."""
        child = Child(name, start)
        self.children.append(child)
        self._start(child)
        return child

    def spawn(
        self, argv: list[str], *, env: dict[str, str] | None = None, log: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Popen in a session of its own, with the parent-death signal, output to ``log``."""
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(log.open("ab")) if log else subprocess.DEVNULL
            return subprocess.Popen(
                argv,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),  # noqa: PLW1509 - no threads in the supervisor
            )

    def _start(self, child: Child) -> None:
        child.started_at = time.monotonic()
        child.process = child.start()
        child.restart_at = None
        self._write_state()

    def tick(self) -> None:
        """Notice dead children and restart those whose backoff is over."""
        now = time.monotonic()
        for child in self.children:
            process = child.process
            if child.restart_at is None and process is not None and process.poll() is not None:
                with contextlib.suppress(ProcessLookupError):  # what it left in its session
                    os.killpg(process.pid, signal.SIGKILL)
                self._schedule(child, now, f"(pid {process.pid}) exited with {process.returncode}")
            elif child.restart_at is not None and now >= child.restart_at:
                try:
                    self._start(child)
                except Exception as exc:  # noqa: BLE001 - any start-up failure: log, retry
                    self._schedule(child, time.monotonic(), f"failed to start ({exc})")
                    continue
                assert child.process is not None
                self.say(f"{child.name} restarted (pid {child.process.pid})")

    def _schedule(self, child: Child, now: float, what: str) -> None:
        child.failures, child.backoff_s = next_backoff(child.failures, now - child.started_at)
        child.restart_at = now + child.backoff_s
        child.restarts += 1
        self.say(
            f"{child.name} {what}; restarting in {child.backoff_s:.0f}s (restart {child.restarts})"
        )

    def watch(self) -> None:
        """Supervise until a stop signal raises ``Stopped`` (call inside ``stop_signals``)."""
        while True:
            self.tick()
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM each child's session, newest first; SIGKILL what outlives the deadline."""
        for child in reversed(self.children):
            process = child.process
            if process is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.say(f"{child.name} did not stop in {self.stop_timeout_s:.0f}s; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            child.process = None
        self._write_state()

    def _write_state(self) -> None:
        pids = {c.name: c.process.pid for c in self.children if c.process is not None}
        tmp = self.state_dir / "children.json.tmp"
        tmp.write_text(json.dumps(pids))
        tmp.replace(self.state_dir / "children.json")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devstack.supervisor", description=__doc__)
    parser.add_argument("--state", type=Path, required=True, help="where children.json goes")
    parser.add_argument("children", nargs="+", metavar="NAME=COMMAND")
    args = parser.parse_args(argv)
    args.state.mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor(args.state)
    try:
        with stop_signals():
            for spec in args.children:
                name, _, command = spec.partition("=")
                supervisor.add(
                    name,
                    partial(supervisor.spawn, shlex.split(command), log=args.state / f"{name}.log"),
                )
            supervisor.say("supervising")
            supervisor.watch()
    except Stopped as stop:
        supervisor.say(f"{stop}: stopping")
    supervisor.stop()


if __name__ == "__main__":
    main()
