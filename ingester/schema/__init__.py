"""The ClickHouse schema of the ingester's sinks: table specs and their DDL (``ddl``, pure) and
idempotent migrations (``migrate``). Every reader must query these tables with ``FINAL`` (or an
equivalent ``GROUP BY`` on the record identity): delivery is at least once."""

from __future__ import annotations

from ingester.schema.ddl import TABLES, Capabilities, server_capabilities
from ingester.schema.migrate import MIGRATIONS, migrate

__all__ = ["MIGRATIONS", "TABLES", "Capabilities", "migrate", "server_capabilities"]
