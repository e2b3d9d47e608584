"""A real ClickHouse cluster on this machine: N shards x R replicas of Debian's clickhouse-server,
optionally with Debian's ZooKeeper as the coordination service, each in a private directory on
free ports.

Invariants: every server gets the same ``remote_servers`` entry (so any of them can serve a
``Distributed`` table), its own ``macros`` (shard, replica) and, with ZooKeeper, the same
``zookeeper`` section; with replicas the cluster sets ``internal_replication`` so a
``Distributed`` insert writes one replica per shard and replication copies it. Servers keep
their directories and ports across ``kill``/``start`` (fault injection).
"""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

from devstack.servers import ClickHouseServer, ManagedServer

__all__ = ["ClickHouseCluster", "ZooKeeperServer", "cluster_config"]

_ZOOKEEPER_CLASSPATH = "/usr/share/java/zookeeper.jar"


class ZooKeeperServer(ManagedServer):
    """A standalone ZooKeeper (Debian's ``zookeeper`` package) on a free port."""

    name = "zookeeper"

    def prepare(self) -> None:
        (self.directory / "data").mkdir(parents=True, exist_ok=True)
        (self.directory / "zoo.cfg").write_text(
            "tickTime=500\ninitLimit=10\nsyncLimit=5\n"
            f"dataDir={self.directory / 'data'}\nclientPort={self.port}\n"
            "clientPortAddress=127.0.0.1\nadmin.enableServer=false\n"
            "maxSessionTimeout=60000\n4lw.commands.whitelist=srvr\n"
        )

    def wait_ready(self, timeout_s: float) -> None:
        """The port accepts connections before the server serves sessions (a client's handshake
        then fails): wait until ``srvr`` reports its mode."""
        deadline = time.monotonic() + timeout_s
        while b"Mode:" not in self._srvr():
            if time.monotonic() > deadline:
                raise TimeoutError("zookeeper did not start serving")
            time.sleep(0.1)

    def _srvr(self) -> bytes:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                conn.sendall(b"srvr")
                return conn.recv(4096)
        except OSError:
            return b""

    def command(self) -> list[str]:
        java = shutil.which("java")
        if java is None or not Path(_ZOOKEEPER_CLASSPATH).exists():
            raise RuntimeError("zookeeper not installed: apt-get install zookeeper")
        return [
            java,
            "-Xmx256m",
            "-cp",
            _ZOOKEEPER_CLASSPATH,
            "org.apache.zookeeper.server.ZooKeeperServerMain",
            str(self.directory / "zoo.cfg"),
        ]


def cluster_config(
    name: str,
    shards: list[list[tuple[str, int]]],
    *,
    shard: int,
    replica: int,
    zookeeper_port: int | None,
) -> str:
    """The XML one server of the cluster needs: ``remote_servers``, its ``macros`` and the
    ``zookeeper`` section when there is one. ``shards`` lists (host, tcp port) per replica."""
    internal = "true" if any(len(replicas) > 1 for replicas in shards) else "false"
    shard_xml = "".join(
        f"<shard><internal_replication>{internal}</internal_replication>"
        + "".join(f"<replica><host>{h}</host><port>{p}</port></replica>" for h, p in replicas)
        + "</shard>"
        for replicas in shards
    )
    xml = f"  <remote_servers><{name}>{shard_xml}</{name}></remote_servers>\n"
    xml += f"  <macros><shard>{shard}</shard><replica>r{replica}</replica></macros>\n"
    if zookeeper_port is not None:
        xml += (
            f"  <zookeeper><node><host>127.0.0.1</host><port>{zookeeper_port}</port></node>"
            "<session_timeout_ms>30000</session_timeout_ms></zookeeper>\n"
        )
    return xml


class ClickHouseCluster:
    """``shards`` x ``replicas`` servers named ``name`` in ``remote_servers``; with
    ``zookeeper=True`` a ZooKeeper is started first and every server is pointed at it."""

    def __init__(
        self,
        directory: Path,
        *,
        name: str = "floopy",
        shards: int = 2,
        replicas: int = 1,
        zookeeper: bool = False,
    ) -> None:
        self.name = name
        self.zookeeper = ZooKeeperServer(directory / "zookeeper") if zookeeper else None
        self.servers: list[list[ClickHouseServer]] = [
            [ClickHouseServer(directory / f"s{s}r{r}") for r in range(replicas)]
            for s in range(shards)
        ]
        layout = [[("127.0.0.1", server.port) for server in row] for row in self.servers]
        zk_port = self.zookeeper.port if self.zookeeper else None
        for s, row in enumerate(self.servers):
            for r, server in enumerate(row):
                server.extra_config = cluster_config(
                    name, layout, shard=s + 1, replica=r + 1, zookeeper_port=zk_port
                )

    @property
    def all_servers(self) -> list[ClickHouseServer]:
        return [server for row in self.servers for server in row]

    @property
    def first(self) -> ClickHouseServer:
        return self.servers[0][0]

    def start(self) -> None:
        if self.zookeeper is not None:
            self.zookeeper.start()
        for server in self.all_servers:
            server.start()

    def kill(self) -> None:
        for server in self.all_servers:
            server.kill()
        if self.zookeeper is not None:
            self.zookeeper.kill()
