"""`floopy-stack up`: the whole stack on one machine with no Docker engine.

Redis (AOF on: the streams hold records not yet ingested) and ClickHouse run from Debian's
packages in `.stack/` with their data kept between runs; then the schema migration, the ingester
replicas, the fake OpenAI-compatible and Anthropic providers (``claude-*`` models route to the
latter) and the gateway start as child processes under a ``devstack.supervisor.Supervisor``.

Invariants:
- A child that dies (an ingester, the gateway, a server) is restarted with a log line and a
  backoff; the stack keeps running.
- SIGINT (Ctrl-C, and also when a non-interactive shell started it in the background), SIGTERM
  and SIGHUP, sent to the stack or to its process group, stop every child, gateway first so
  the ingesters can drain what it published. If the stack is SIGKILLed its children get a
  parent-death signal: nothing outlives it.
- One stack per state directory (an ``flock`` on ``<root>/stack.lock``).
- Ports are remembered in ``<root>/ports.json`` and reused when free; a port whose old
  connections linger in TIME-WAIT counts as free (``pick_port`` binds with SO_REUSEADDR, as the
  servers do), so a restarted stack prints the same ``OPENAI_BASE_URL``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from devstack.servers import (
    ClickHouseServer,
    ManagedServer,
    RedisServer,
    free_port,
    wait_for_port,
)
from devstack.supervisor import Stopped, Supervisor, die_with_parent, stop_signals

__all__ = ["Stack", "main", "pick_port"]

DEV_API_KEY = "sk-floopy-dev-local"
DEV_ORG = "org-dev"
DEV_CONFIG = f"""\
# The local stack's config seed (FLOOPY_GATEWAY_CONFIG_FILE), applied by every gateway worker at
# start-up; written once, yours to edit. Format: README "Configuration".
[orgs.{DEV_ORG}]
name = "Local development"
# every cache tier on for the demo; Qdrant runs in local mode inside the gateway worker, so the
# semantic tiers are per worker (one worker by default: README "Response cache")
cache = {{ tiers = ["exact", "semantic", "advanced"] }}

[keys.key-dev-local]
org = "{DEV_ORG}"
secret = "{DEV_API_KEY}"   # a known key for a dev stack only; use secret_env or hash elsewhere
permissions = ["proxy", "read", "admin"]

[[templates]]
id = "greeting"
org = "{DEV_ORG}"
messages = [
  {{ role = "system", content = "You are a friendly assistant for {{{{product}}}}." }},
  {{ role = "user", content = "Say hello to {{{{name}}}}." }},
]
"""


def pick_port(preferred: int) -> int:
    """The preferred port when free, so URLs stay the same between runs; any free one otherwise.
    SO_REUSEADDR, as every server here binds: connections of a previous run lingering in
    TIME-WAIT do not make the port look taken (a listener still does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
    return preferred


def _start_server(server: ManagedServer) -> subprocess.Popen[bytes]:
    server.start()
    assert server.process is not None
    return server.process


@dataclass
class Stack:
    """The processes of a local stack and the environment that wires them together."""

    root: Path
    ingesters: int = 1
    gateway_workers: int = 1
    gateway_port: int = 8080
    provider_port: int = 8090
    anthropic_port: int = 8091
    supervisor: Supervisor = field(init=False)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        self._lock_fd = self._lock_root()
        ports = self._remembered_ports()
        self.redis = RedisServer(self.root / "redis", ports.get("redis") or pick_port(6380))
        self.clickhouse = ClickHouseServer(
            self.root / "clickhouse", ports.get("clickhouse") or pick_port(9010)
        )
        self.clickhouse.http_port = ports.get("clickhouse_http") or self.clickhouse.http_port
        self.gateway_port = ports.get("gateway") or pick_port(self.gateway_port)
        self.provider_port = ports.get("provider") or pick_port(self.provider_port)
        self.anthropic_port = ports.get("anthropic") or pick_port(self.anthropic_port)
        for server in (self.redis, self.clickhouse):
            server.preexec_fn = die_with_parent()
        self.supervisor = Supervisor(self.root)

    def _lock_root(self) -> int:
        fd = os.open(self.root / "stack.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(f"another floopy-stack runs from {self.root}") from None
        return fd  # held for the life of the process

    def _remembered_ports(self) -> dict[str, int]:
        path = self.root / "ports.json"
        if not path.exists():
            return {}
        saved: dict[str, int] = json.loads(path.read_text())
        return {name: port for name, port in saved.items() if pick_port(port) == port}

    def _remember_ports(self) -> None:
        ports = {
            "redis": self.redis.port,
            "clickhouse": self.clickhouse.port,
            "clickhouse_http": self.clickhouse.http_port,
            "gateway": self.gateway_port,
            "provider": self.provider_port,
            "anthropic": self.anthropic_port,
        }
        (self.root / "ports.json").write_text(json.dumps(ports))

    @property
    def config_file(self) -> Path:
        return self.root / "floopy.toml"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "FLOOPY_GATEWAY_REDIS__URL": self.redis.url,
            "FLOOPY_GATEWAY_PROVIDERS": json.dumps(self.providers()),
            "FLOOPY_GATEWAY_CONFIG_FILE": str(self.config_file),
            "FLOOPY_GATEWAY_OPERATOR_ORGS": json.dumps([DEV_ORG]),
            "FLOOPY_GATEWAY_PORT": str(self.gateway_port),
            "FLOOPY_GATEWAY_WORKERS": str(self.gateway_workers),
            # the LLM firewall on, classified by the fake provider (devstack.fake_classifier)
            "FLOOPY_GATEWAY_FIREWALL__MODEL": "openai/gpt-4o-mini",
            "FLOOPY_GATEWAY_SPOOL__DIR": str(self.root / "gateway-spool"),
            "FLOOPY_INGESTER_REDIS__URL": self.redis.url,
            "FLOOPY_INGESTER_CLICKHOUSE__PORT": str(self.clickhouse.port),
            "FLOOPY_GATEWAY_CLICKHOUSE__PORT": str(self.clickhouse.port),  # the console reads
            "FLOOPY_INGESTER_SPOOL_DIR": str(self.root / "spool"),
            "FLOOPY_INGESTER_DEAD_LETTER_DIR": str(self.root / "dead-letter"),
        }

    def providers(self) -> list[dict[str, object]]:
        """Claude models go to the fake Anthropic, everything else to the fake OpenAI."""
        return [
            {
                "name": "anthropic",
                "kind": "anthropic",
                "base_url": f"http://127.0.0.1:{self.anthropic_port}",
                "api_key": "sk-ant-fake-upstream",
                "model_prefixes": ["claude-"],
            },
            {
                "name": "openai",
                "kind": "openai",
                "base_url": f"http://127.0.0.1:{self.provider_port}/v1",
                "api_key": "sk-fake-upstream",
            },
        ]

    def _add(self, name: str, argv: list[str]) -> None:
        log = self.root / "logs" / f"{name}.log"
        self.supervisor.add(name, partial(self.supervisor.spawn, argv, env=self.env(), log=log))

    def up(self) -> None:
        if not self.config_file.exists():
            self.config_file.write_text(DEV_CONFIG)
        self.supervisor.add("redis", partial(_start_server, self.redis))
        self.supervisor.add("clickhouse", partial(_start_server, self.clickhouse))
        self._remember_ports()
        bin_dir = Path(sys.executable).parent
        migrate = subprocess.run(
            [str(bin_dir / "floopy-ingester"), "migrate"],
            env=self.env(),
            check=False,
            preexec_fn=die_with_parent(),
        )
        if migrate.returncode != 0:
            raise RuntimeError("schema migration failed; see the output above")
        for i in range(self.ingesters):
            self._add(f"ingester-{i}", [str(bin_dir / "floopy-ingester"), "worker"])
        fake = [sys.executable, "-m", "devstack.fake_openai", "--port", str(self.provider_port)]
        self._add("fake-provider", fake)
        wait_for_port(self.provider_port)
        anthropic = [sys.executable, "-m", "devstack.fake_anthropic"]
        self._add("fake-anthropic", [*anthropic, "--port", str(self.anthropic_port)])
        wait_for_port(self.anthropic_port)
        self._add("gateway", [str(bin_dir / "floopy-gateway")])
        self.wait_for_gateway(timeout_s=90)

    def wait_for_gateway(self, timeout_s: float) -> None:
        """Until ``/health`` answers: granian listens before its workers can serve."""
        url = f"http://127.0.0.1:{self.gateway_port}/health"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"the gateway did not answer {url} in {timeout_s:.0f}s")

    def down(self) -> None:
        """Every child, newest first: the gateway before the ingesters before the servers."""
        self.supervisor.stop()

    def banner(self) -> str:
        base = f"http://127.0.0.1:{self.gateway_port}/v1"
        return "\n".join(
            [
                "Floopy local stack is up.",
                f"  gateway        {base}   (health: http://127.0.0.1:{self.gateway_port}/health)",
                f"  console        http://127.0.0.1:{self.gateway_port}/console?key={DEV_API_KEY}"
                f"   (API spec: /schema/openapi.json)",
                f"  fake provider  http://127.0.0.1:{self.provider_port}/v1   (OpenAI wire format)",
                f"  fake anthropic http://127.0.0.1:{self.anthropic_port}   (Messages API; "
                "models claude-*)",
                f"  providers      http://127.0.0.1:{self.gateway_port}/health/providers",
                "  firewall       on, classifier openai/gpt-4o-mini (the fake): try a prompt "
                "with 'Ignore all previous instructions'",
                f"  redis          {self.redis.url}   (AOF in {self.redis.directory})",
                f"  clickhouse     native 127.0.0.1:{self.clickhouse.port}, "
                f"http 127.0.0.1:{self.clickhouse.http_port}, database floopy",
                f"  ingesters      {self.ingesters} worker(s); spool in {self.root / 'spool'}",
                f"  logs           {self.root / 'logs'}",
                f"  config seed    {self.config_file}   (orgs, keys, templates, routes)",
                "  cache          exact tier in Redis; semantic tiers in Qdrant local mode, "
                f"per gateway worker ({self.gateway_workers}); set FLOOPY_GATEWAY_QDRANT__URL "
                "to share them",
                "",
                "Point any OpenAI SDK app at it:",
                f"  export OPENAI_BASE_URL={base} OPENAI_API_KEY={DEV_API_KEY}",
                "On-call CLI against this stack:",
                f"  export FLOOPY_INGESTER_REDIS__URL={self.redis.url} "
                f"FLOOPY_INGESTER_CLICKHOUSE__PORT={self.clickhouse.port} "
                f"FLOOPY_INGESTER_SPOOL_DIR={self.root / 'spool'} "
                f"FLOOPY_INGESTER_DEAD_LETTER_DIR={self.root / 'dead-letter'}",
                "  .venv/bin/floopy-ingester status",
                "A child that dies is restarted. Ctrl-C (or SIGTERM, SIGHUP) stops the stack; "
                f"data stays in {self.root}.",
            ]
        )


app = typer.Typer(add_completion=False, help="Run Floopy's whole stack locally.")


@app.callback()
def _commands() -> None:
    """Keeps ``up`` a subcommand (typer folds a lone command into the program otherwise)."""


@app.command()
def up(
    root: Annotated[Path, typer.Option(help="State directory")] = Path(".stack"),
    ingesters: Annotated[int, typer.Option(min=1, help="Ingester replicas")] = 1,
    gateway_workers: Annotated[int, typer.Option(min=1, help="Gateway workers")] = 1,
) -> None:
    """Start Redis, ClickHouse, the ingesters, the fake provider and the gateway."""
    try:
        stack = Stack(root.resolve(), ingesters=ingesters, gateway_workers=gateway_workers)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None
    try:
        with stop_signals():
            stack.up()
            print(stack.banner(), flush=True)
            stack.supervisor.watch()
    except Stopped as stop:
        print(f"\n{stop}: stopping…", file=sys.stderr, flush=True)
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        stack.down()
        raise typer.Exit(1) from None
    stack.down()
    print("stopped", file=sys.stderr, flush=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
