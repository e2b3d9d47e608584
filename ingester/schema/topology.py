"""The nodes of a ClickHouse cluster, as the servers themselves declare them (``remote_servers``
in their config, read from ``system.clusters``), and the settings to reach each.

Invariants:
- The cluster's layout is read from the server the settings name; every node reached is
  addressed by the host name and port that config gives it (a DNS name in Kubernetes).
- ``shard_settings`` picks, for each shard, the first replica that answers ``SELECT 1``: the
  per-shard jobs (rollups, retention) run once per shard, and with replication their writes and
  mutations reach the other replicas through the coordination service.
- No cluster configured (``cluster`` empty): one entry, the settings themselves.
- Blocking; call from a thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from clickhouse_driver import errors as ch_errors

from ingester.schema.cluster import Placement
from shared.clickhouse_client import clickhouse_client
from shared.errors import SinkUnavailableError
from shared.settings import ClickHouseSettings

__all__ = ["Node", "cluster_nodes", "has_coordination", "placement_of", "shard_settings"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Node:
    shard: int
    replica: int
    host: str
    port: int

    def settings(self, base: ClickHouseSettings) -> ClickHouseSettings:
        return base.model_copy(update={"host": self.host, "port": self.port})


def cluster_nodes(client: Any, cluster: str) -> list[Node]:
    """Every replica of every shard of ``cluster``, in shard then replica order."""
    rows = client.execute(
        "SELECT shard_num, replica_num, host_name, port FROM system.clusters "
        "WHERE cluster = %(c)s ORDER BY shard_num, replica_num",
        {"c": cluster},
    )
    if not rows:
        raise ValueError(f"cluster {cluster!r} is not in this server's remote_servers")
    return [Node(int(s), int(r), str(h), int(p)) for s, r, h, p in rows]


def has_coordination(client: Any) -> bool:
    """True when the server has ZooKeeper configured (``system.zookeeper`` exists only then)."""
    rows = client.execute(
        "SELECT count() FROM system.tables WHERE database = 'system' AND name = 'zookeeper'"
    )
    return bool(rows[0][0])


def placement_of(client: Any, cluster: str) -> Placement:
    return Placement(cluster, has_coordination(client)) if cluster else Placement()


def _answers(settings: ClickHouseSettings) -> bool:
    client = clickhouse_client(settings)
    try:
        client.execute("SELECT 1")
        return True
    except (ch_errors.Error, OSError, EOFError) as exc:
        log.warning("clickhouse %s:%s unreachable: %s", settings.host, settings.port, exc)
        return False
    finally:
        client.disconnect()


def shard_settings(settings: ClickHouseSettings) -> list[ClickHouseSettings]:
    """Settings reaching one live replica of each shard (``[settings]`` without a cluster)."""
    if not settings.cluster:
        return [settings]

    client = clickhouse_client(settings)
    try:
        nodes = cluster_nodes(client, settings.cluster)
    finally:
        client.disconnect()
    chosen: list[ClickHouseSettings] = []
    for shard in sorted({n.shard for n in nodes}):
        replicas = [n.settings(settings) for n in nodes if n.shard == shard]
        live = next((replica for replica in replicas if _answers(replica)), None)
        if live is None:
            raise SinkUnavailableError(f"no replica of shard {shard} of {settings.cluster} answers")
        chosen.append(live)
    return chosen
