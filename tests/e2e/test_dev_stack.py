"""Issue 9, item 7: ``floopy-stack up`` as a user runs it (``make run`` runs exactly this). A
SIGKILLed ingester or gateway is restarted and the stack keeps serving; SIGTERM to the stack's
process group stops every child; a restarted stack comes back on the same ports (the gateway's
old connections in TIME-WAIT notwithstanding); a SIGKILLed stack leaves no child behind."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from devstack.servers import free_port
from devstack.stack import DEV_API_KEY
from tests.e2e.test_supervisor import alive, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

BIN = Path(sys.executable).parent


class StackProcess:
    """One ``floopy-stack up`` in a session of its own, like a backgrounded ``make run``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.out = root / "stack.out"
        self.err = root / "stack.err"
        self.seen: set[int] = set()
        root.mkdir(parents=True, exist_ok=True)
        self.banners = self._banners()
        with self.out.open("ab") as out, self.err.open("ab") as err:
            self.process = subprocess.Popen(
                [str(BIN / "floopy-stack"), "up", "--root", str(root)],
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        wait_until(self._up, timeout_s=180, what=f"the stack banner; see {self.err}")
        match = re.search(r"export OPENAI_BASE_URL=(\S+)", self.out.read_text().split("is up")[-1])
        assert match is not None
        self.base_url = match.group(1)

    def _up(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"floopy-stack exited with {self.process.returncode}: {self.err}")
        return self._banners() > self.banners

    def _banners(self) -> int:
        return self.out.read_text().count("Floopy local stack is up.") if self.out.exists() else 0

    def pids(self) -> dict[str, int]:
        pids: dict[str, int] = json.loads((self.root / "children.json").read_text())
        self.seen |= set(pids.values())
        return pids

    def log(self) -> str:
        return self.err.read_text()

    def chat(self) -> str:
        client = openai.OpenAI(base_url=self.base_url, api_key=DEV_API_KEY, max_retries=0)
        try:
            answer = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
        finally:
            client.close()
        return answer.choices[0].message.content or ""

    def gateway_healthy(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            url = self.base_url.removesuffix("/v1") + "/health"
            return httpx.get(url, timeout=2).status_code == 200
        return False

    def kill_everything(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            self.pids()
        for pid in self.seen:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """A stack directory whose remembered ports are free ones, so the test never takes 8080
    (or any port a developer's own stack may want)."""
    root = tmp_path / "stack"
    root.mkdir()
    names = ("redis", "clickhouse", "clickhouse_http", "gateway", "provider", "anthropic")
    (root / "ports.json").write_text(json.dumps({name: free_port() for name in names}))
    yield root


def test_the_dev_stack_restarts_children_stops_cleanly_and_keeps_its_ports(root: Path) -> None:
    stacks: list[StackProcess] = []
    try:
        stacks.append(first := StackProcess(root))
        assert first.chat()
        before = first.pids()

        os.kill(before["ingester-0"], signal.SIGKILL)
        wait_until(lambda: first.pids()["ingester-0"] != before["ingester-0"], what="ingester")
        assert f"ingester-0 (pid {before['ingester-0']}) exited with -9; restarting" in first.log()

        os.killpg(before["gateway"], signal.SIGKILL)
        wait_until(lambda: first.pids()["gateway"] != before["gateway"], what="gateway restart")
        wait_until(first.gateway_healthy, timeout_s=90, what="the restarted gateway")
        assert first.chat(), "the restarted gateway serves on the same URL"
        assert first.process.poll() is None, "a dying child does not stop the stack"

        children = list(first.pids().values())
        os.killpg(first.process.pid, signal.SIGTERM)
        assert first.process.wait(90) == 0
        assert not [pid for pid in children if alive(pid)], "SIGTERM to the group stops all"
        assert "SIGTERM: stopping" in first.log()

        stacks.append(second := StackProcess(root))
        assert second.base_url == first.base_url, "same ports after a restart"
        assert second.chat()
        children = list(second.pids().values())
        second.process.kill()
        second.process.wait()
        wait_until(
            lambda: not any(alive(pid) for pid in children),
            timeout_s=60,
            what="the children of the SIGKILLed stack to die",
        )
    finally:
        for stack in stacks:
            stack.kill_everything()
