"""The gateway and the fake provider as real child processes on free loopback ports, for
end-to-end tests and benchmarks.

Invariants: each process gets its own session (``start_new_session``) so ``stop`` reaches
granian's workers too; output goes to a log file in the given directory; ``stop`` is SIGTERM
(the gateway flushes its publisher), then SIGKILL after a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from devstack.servers import free_port, kill_group, terminate

__all__ = ["ChildProcess", "FakeProviderProcess", "GatewayProcess"]


class ChildProcess:
    name = "child"
    health_path = "/health"

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.cwd: Path | None = None
        """Where the child runs: ``python -m`` puts it first on ``sys.path``, so a checkout of
        another commit runs that commit's code (``bench.gateway_ab``)."""
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.name}-{self.port}.log"

    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self, timeout_s: float = 60.0) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv(),
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.cwd,
            )
        self.wait_healthy(timeout_s)

    def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{self.port}{self.health_path}"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early; see {self.log_path}")
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
            time.sleep(0.1)
        self.kill()
        raise TimeoutError(f"{self.name} not healthy after {timeout_s}s; see {self.log_path}")

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.process is not None:
            terminate(self.process, timeout_s, group=True)
        self.process = None

    def kill(self) -> None:
        if self.process is not None:
            kill_group(self.process)
        self.process = None

    @property
    def pids(self) -> list[int]:
        """The process and its children (granian's workers), from /proc."""
        if self.process is None:
            return []
        found = [self.process.pid]
        for path in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = path.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self.process.pid:
                    found.append(int(path.parent.name))
        return found


class FakeProviderProcess(ChildProcess):
    name = "fake-openai"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "devstack.fake_openai", "--port", str(self.port)]


class GatewayProcess(ChildProcess):
    """``floopy-gateway`` configured through its environment, like production: keys from a
    config seed file (``config_file``) or the deprecated ``api_keys`` table (seeded too)."""

    name = "gateway"

    def __init__(
        self,
        directory: Path,
        *,
        redis_url: str,
        provider_url: str,
        api_keys: Mapping[str, Mapping[str, str]] | None = None,
        config_file: Path | None = None,
        workers: int = 1,
        extra_env: Mapping[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        super().__init__(directory, port)
        self.settings_env = {
            "FLOOPY_GATEWAY_REDIS__URL": redis_url,
            "FLOOPY_GATEWAY_PROVIDER__BASE_URL": provider_url,
            "FLOOPY_GATEWAY_PROVIDER__API_KEY": "sk-upstream-fake",
            "FLOOPY_GATEWAY_API_KEYS": json.dumps(api_keys or {}),
            "FLOOPY_GATEWAY_PORT": str(self.port),
            "FLOOPY_GATEWAY_WORKERS": str(workers),
            **(extra_env or {}),
        }
        if config_file is not None:
            self.settings_env["FLOOPY_GATEWAY_CONFIG_FILE"] = str(config_file)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "gateway.serve"]

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.settings_env}
