"""`floopy-stack up`: the whole stack on one machine with no Docker engine.

Redis (AOF on: the streams hold records not yet ingested) and ClickHouse run from Debian's
packages in `.stack/` with their data kept between runs; then the schema migration, the ingester
replicas, the fake OpenAI-compatible and Anthropic providers (``claude-*`` models route to the
latter) and the gateway start as child processes. Ctrl-C stops everything, gateway first so the
ingesters can drain what it published.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer

from devstack.servers import ClickHouseServer, RedisServer, free_port, wait_for_port

__all__ = ["Stack", "main"]

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
    """The preferred port when free, so URLs stay the same between runs; any free one otherwise."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
    return preferred


@dataclass
class Stack:
    """The processes of a local stack and the environment that wires them together."""

    root: Path
    ingesters: int = 1
    gateway_workers: int = 1
    gateway_port: int = 8080
    provider_port: int = 8090
    anthropic_port: int = 8091
    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        ports = self._remembered_ports()
        self.redis = RedisServer(self.root / "redis", ports.get("redis") or pick_port(6380))
        self.clickhouse = ClickHouseServer(
            self.root / "clickhouse", ports.get("clickhouse") or pick_port(9010)
        )
        self.gateway_port = pick_port(self.gateway_port)
        self.provider_port = pick_port(self.provider_port)
        self.anthropic_port = pick_port(self.anthropic_port)

    def _remembered_ports(self) -> dict[str, int]:
        path = self.root / "ports.json"
        if not path.exists():
            return {}
        saved: dict[str, int] = json.loads(path.read_text())
        return {name: port for name, port in saved.items() if pick_port(port) == port}

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

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (self.root / "logs" / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                argv, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.children.append((name, proc))
        return proc

    def up(self) -> None:
        if not self.config_file.exists():
            self.config_file.write_text(DEV_CONFIG)
        self.redis.start()
        self.clickhouse.start()
        (self.root / "ports.json").write_text(
            json.dumps({"redis": self.redis.port, "clickhouse": self.clickhouse.port})
        )
        bin_dir = Path(sys.executable).parent
        migrate = subprocess.run(
            [str(bin_dir / "floopy-ingester"), "migrate"], env=self.env(), check=False
        )
        if migrate.returncode != 0:
            raise RuntimeError("schema migration failed; see the output above")
        for i in range(self.ingesters):
            self.spawn(f"ingester-{i}", [str(bin_dir / "floopy-ingester"), "worker"])
        self.spawn(
            "fake-provider",
            [sys.executable, "-m", "devstack.fake_openai", "--port", str(self.provider_port)],
        )
        wait_for_port(self.provider_port)
        self.spawn(
            "fake-anthropic",
            [sys.executable, "-m", "devstack.fake_anthropic", "--port", str(self.anthropic_port)],
        )
        wait_for_port(self.anthropic_port)
        self.spawn("gateway", [str(bin_dir / "floopy-gateway")])
        wait_for_port(self.gateway_port, timeout_s=60)

    def down(self) -> None:
        for name, proc in reversed(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                print(f"{name} did not stop in 20 s; killing it", file=sys.stderr)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.children.clear()
        self.clickhouse.stop()
        self.redis.stop()

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
                f"FLOOPY_INGESTER_SPOOL_DIR={self.root / 'spool'}",
                "  .venv/bin/floopy-ingester status",
                "Ctrl-C stops the stack (data stays in .stack/).",
            ]
        )

    def watch(self) -> None:
        """Block until Ctrl-C or a child dies; a dead child is reported, not silently restarted."""
        while True:
            for name, proc in self.children:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with {proc.returncode}; see {self.root}/logs/{name}.log"
                    )
            time.sleep(0.5)


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM stops the stack the same way Ctrl-C does."""
    raise KeyboardInterrupt


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
    stack = Stack(root.resolve(), ingesters=ingesters, gateway_workers=gateway_workers)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        stack.up()
        print(stack.banner(), flush=True)
        stack.watch()
    except KeyboardInterrupt:
        print("\nstopping…", file=sys.stderr)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        stack.down()
        raise typer.Exit(1) from None
    stack.down()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
