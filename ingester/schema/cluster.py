"""Where tables live on a ClickHouse cluster, and the DDL that puts them there. Pure: no I/O.

The one naming rule (``stored_table``): on a single server a table's rows are stored under its
own name; on a cluster every shard stores them in ``<name>_local`` and ``<name>`` is a
``Distributed`` table over those. So whatever reads or inserts through the logical name —
the console's read API, the ingester's inserts — works unchanged on both, and only the jobs
that must touch each shard's own rows (rollup recomputes, retention mutations, DDL) ask
``stored_table`` for the local name.

Invariants:
- Raw tables are sharded by ``cityHash64`` of a column fixed by the record's identity
  (``TableSpec.shard_by``): a record delivered twice lands on the same shard, where
  ``ReplacingMergeTree`` / ``LIMIT 1 BY`` deduplicate it exactly as on one server.
- Rollup rows are computed per shard from that shard's raw rows; each is a partial sum (and
  t-digest state) of its bucket, and every reader aggregates them (``sum``, ``…Merge``), so the
  ``Distributed`` rollup tables answer what one server's would. No row is inserted through
  them (they have no sharding key; an insert fails loudly).
- Per-shard state (``rollup_state``, ``org_settings``) keeps its name and is not distributed.
- With a coordination service (ZooKeeper), every local table is ``Replicated…MergeTree`` under
  ``/clickhouse/tables/{shard}/<db>/<table>`` with ``{replica}``: the servers' ``macros``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "LOCAL_SUFFIX",
    "Placement",
    "distributed_ddl",
    "local_ddl",
    "placed_ddl",
    "replicated_engine",
    "stored_table",
]

LOCAL_SUFFIX = "_local"
_ENGINE = re.compile(r"ENGINE = (\w*MergeTree)\(([^)]*)\)")
_TABLE = re.compile(r"^CREATE TABLE IF NOT EXISTS `([^`]+)`\.`([^`]+)`")


def stored_table(name: str, cluster: str) -> str:
    """The table holding the rows of logical table ``name`` on one server."""
    return f"{name}{LOCAL_SUFFIX}" if cluster else name


@dataclass(frozen=True)
class Placement:
    """Single server (``cluster`` empty) or one node of ``cluster``; ``replicated`` when that
    node has a coordination service, so local tables are ``Replicated…MergeTree``."""

    cluster: str = ""
    replicated: bool = False

    def stored(self, name: str) -> str:
        return stored_table(name, self.cluster)


def replicated_engine(engine: str, args: str, database: str, table: str) -> str:
    """``ReplacingMergeTree(version)`` → ``ReplicatedReplacingMergeTree('<path>', '{replica}',
    version)``; the path is per shard, so the replicas of one shard share it."""
    path = f"'/clickhouse/tables/{{shard}}/{database}/{table}', '{{replica}}'"
    inner = f"{path}, {args}" if args.strip() else path
    return f"Replicated{engine}({inner})"


def local_ddl(ddl: str, placement: Placement, *, distributed: bool) -> str:
    """A single-server ``CREATE TABLE IF NOT EXISTS`` made into its form on a cluster node:
    renamed to ``<name>_local`` when a ``Distributed`` table will carry the name, and its engine
    replicated when the node has a coordination service. Unchanged on a single server."""
    head = _TABLE.match(ddl)
    if head is None:
        raise ValueError(f"not a CREATE TABLE IF NOT EXISTS of ours: {ddl[:60]!r}")
    database, name = head.groups()
    table = placement.stored(name) if distributed else name
    out = ddl.replace(f"`{database}`.`{name}`", f"`{database}`.`{table}`", 1)
    if placement.replicated:
        out = _ENGINE.sub(
            lambda m: "ENGINE = " + replicated_engine(m[1], m[2], database, table), out, count=1
        )
    return out


def distributed_ddl(database: str, name: str, cluster: str, shard_by: str = "") -> str:
    """``<name>`` as a ``Distributed`` table over ``<name>_local`` on every shard of
    ``cluster``; inserts through it are sharded by ``cityHash64(shard_by)``."""
    key = f", cityHash64(`{shard_by}`)" if shard_by else ""
    local = stored_table(name, cluster)
    return (
        f"CREATE TABLE IF NOT EXISTS `{database}`.`{name}` AS `{database}`.`{local}`\n"
        f"ENGINE = Distributed(`{cluster}`, `{database}`, `{local}`{key})"
    )


def placed_ddl(ddl: str, placement: Placement, shard_by: str = "") -> list[tuple[str, str]]:
    """(table, statement) pairs that create a logical table where ``placement`` says: the
    statement itself on a single server; on a cluster node the local table, then the
    ``Distributed`` table carrying the logical name. Each table named is one to migrate."""
    head = _TABLE.match(ddl)
    if head is None:
        raise ValueError(f"not a CREATE TABLE IF NOT EXISTS of ours: {ddl[:60]!r}")
    database, name = head.groups()
    if not placement.cluster:
        return [(name, ddl)]
    return [
        (placement.stored(name), local_ddl(ddl, placement, distributed=True)),
        (name, distributed_ddl(database, name, placement.cluster, shard_by)),
    ]
