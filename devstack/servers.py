"""Real Redis and ClickHouse servers in a private directory on a free port.

Invariants: a server owns its directory (data survives ``stop``/``kill`` + ``start``, which
reuse the port and the directory); nothing is started on a fixed port, so tests and a running
local stack never collide; ``kill`` is SIGKILL, for fault injection.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

__all__ = [
    "ClickHouseServer",
    "ManagedServer",
    "RedisCluster",
    "RedisServer",
    "free_port",
    "kill_group",
    "terminate",
    "wait_for_port",
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 30.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s}s")


def _require(binary: str) -> str:
    path = shutil.which(binary) or shutil.which(binary, path="/usr/sbin")
    if path is None:
        raise RuntimeError(f"{binary} not found: run `bash deploy/local/bootstrap.sh` first")
    return path


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process and its session (started with ``start_new_session``), and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def terminate(process: subprocess.Popen[bytes], timeout_s: float, *, group: bool) -> None:
    """SIGTERM (to the whole session when ``group``), then SIGKILL after ``timeout_s``."""
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(process.pid, signal.SIGTERM)
        else:
            process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        kill_group(process)


class ManagedServer:
    """A server process bound to a directory and a port that stay the same across restarts."""

    name = "server"

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.preexec_fn: Callable[[], None] | None = None
        """Run in the child before exec (the dev stack gives its servers a parent-death signal)."""
        directory.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Write config files before the first start."""

    def start(self, timeout_s: float = 60.0) -> None:
        self.prepare()
        with (self.directory / f"{self.name}.out").open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=self.preexec_fn,  # noqa: PLW1509 - None except in the dev stack
            )
        try:
            wait_for_port(self.port, timeout_s)
            self.wait_ready(timeout_s)
        except TimeoutError:
            self.kill()
            raise

    def wait_ready(self, timeout_s: float) -> None:
        """Block until the server answers queries, not just accepts connections."""

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.process is not None:
            terminate(self.process, timeout_s, group=False)
        self.process = None

    def kill(self) -> None:
        if self.process is not None:
            kill_group(self.process)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @contextlib.contextmanager
    def hung(self) -> Iterator[None]:
        """The server stopped (SIGSTOP) for the block: its kernel still accepts connections and
        buffers what clients send, nothing answers; it resumes (SIGCONT) and runs what it was
        sent, whatever the block raised."""
        if self.process is None:
            raise RuntimeError(f"{self.name} is not running")
        self.process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.process.send_signal(signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> ManagedServer:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class RedisServer(ManagedServer):
    """redis-server with AOF on: the streams hold records not yet ingested. ``cluster_node``:
    a node for ``RedisCluster`` (cluster mode, its ``nodes.conf`` in the directory)."""

    name = "redis"

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        *,
        cluster_node: bool = False,
        appendfsync: str = "everysec",
    ) -> None:
        super().__init__(directory, port)
        self.cluster_node = cluster_node
        self.appendfsync = appendfsync
        self.bus_port = free_port() if cluster_node else 0
        """The cluster bus (default port + 10000, which may be taken or out of range)."""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        cluster = [
            *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
            *("--cluster-port", str(self.bus_port)),
            # a master down must not stop the others serving their slots (no replicas here)
            *("--cluster-require-full-coverage", "no", "--cluster-node-timeout", "3000"),
        ]
        return [
            _require("redis-server"),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.directory),
            "--appendonly",
            "yes",
            "--appendfsync",
            self.appendfsync,
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(self.directory / "redis.log"),
            *(cluster if self.cluster_node else []),
        ]


class RedisCluster:
    """A Redis Cluster of ``masters`` nodes (no replicas) from Debian's ``redis-server``, made
    with ``redis-cli --cluster create``, each node in its own directory on a free port.

    AOF is fsynced on every write (``appendfsync always``): a node SIGKILLed and restarted
    comes back with every write it acknowledged, which the fault tests rely on. A killed node's
    slots answer CLUSTERDOWN until it is back (no replica to fail over to)."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        self.directory = directory
        self.nodes = [
            RedisServer(directory / f"node{i}", cluster_node=True, appendfsync="always")
            for i in range(masters)
        ]

    @property
    def url(self) -> str:
        """Any node will do as the seed: the client discovers the others."""
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    def start(self, timeout_s: float = 60.0) -> None:
        for node in self.nodes:
            node.start(timeout_s)
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [_require("redis-cli"), "--cluster", "create", *addresses, "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=timeout_s,
        )
        self.wait_ok(timeout_s)

    def wait_ok(self, timeout_s: float = 60.0) -> None:
        """Until every node reports ``cluster_state:ok`` (all slots served)."""
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            while True:
                info = subprocess.run(
                    [_require("redis-cli"), "-p", str(node.port), "cluster", "info"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                    check=False,
                ).stdout
                if "cluster_state:ok" in info:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis cluster node {node.port} not ok: {info[:200]}")
                time.sleep(0.1)

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisCluster:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()


_CLICKHOUSE_CONFIG = """<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{dir}/log/server.log</log><errorlog>{dir}/log/error.log</errorlog>
    <size>50M</size><count>2</count><console>0</console></logger>
  <listen_host>127.0.0.1</listen_host>
  <tcp_port>{tcp_port}</tcp_port>
  <http_port>{http_port}</http_port>
  <path>{dir}/data/</path>
  <tmp_path>{dir}/tmp/</tmp_path>
  <user_files_path>{dir}/user_files/</user_files_path>
  <format_schema_path>{dir}/format_schemas/</format_schema_path>
  <mark_cache_size>268435456</mark_cache_size>
  <uncompressed_cache_size>268435456</uncompressed_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
  <users>
    <default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile><quota>default</quota></default>
  </users>
  <profiles><default><max_threads>2</max_threads></default></profiles>
  <quotas><default></default></quotas>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <interserver_http_host>127.0.0.1</interserver_http_host>
  <interserver_http_port>{interserver_port}</interserver_http_port>
{extra}
</yandex>
"""


class ClickHouseServer(ManagedServer):
    """clickhouse-server (Debian's 18.16 here) with its own config, data and logs.

    ``extra_config`` is XML put inside the config's root as is: a cluster's ``remote_servers``,
    ``zookeeper`` and ``macros`` (``devstack.clickhouse_cluster`` writes them)."""

    name = "clickhouse"

    def __init__(self, directory: Path, port: int | None = None, *, extra_config: str = "") -> None:
        super().__init__(directory, port)
        self.http_port = free_port()
        self.interserver_port = free_port()
        self.extra_config = extra_config

    def prepare(self) -> None:
        for sub in ("data", "tmp", "user_files", "format_schemas", "log"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        (self.directory / "config.xml").write_text(
            _CLICKHOUSE_CONFIG.format(
                dir=self.directory,
                tcp_port=self.port,
                http_port=self.http_port,
                interserver_port=self.interserver_port,
                extra=self.extra_config,
            )
        )

    def command(self) -> list[str]:
        return [_require("clickhouse-server"), f"--config-file={self.directory / 'config.xml'}"]

    def wait_ready(self, timeout_s: float) -> None:
        from clickhouse_driver import Client
        from clickhouse_driver.errors import Error as ClickHouseError

        deadline = time.monotonic() + timeout_s
        while True:
            client = Client(host="127.0.0.1", port=self.port, connect_timeout=1)
            try:
                client.execute("SELECT 1")
                return
            except (OSError, EOFError, ClickHouseError):
                if time.monotonic() > deadline:
                    raise TimeoutError("clickhouse did not answer SELECT 1") from None
                time.sleep(0.1)
            finally:
                client.disconnect()
