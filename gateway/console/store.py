"""The console's only ClickHouse access: blocking clickhouse-driver calls in worker threads.

Invariants:
- A ``Client`` is used by one thread at a time: clients live in a pool, a query takes one for
  its duration and puts it back (a broken one is disconnected first; the driver reconnects).
- At most ``pool_size`` queries run at once per gateway worker; further ones wait for a client,
  so a burst of dashboard reads cannot open unbounded connections to ClickHouse.
- Every query carries ``max_execution_time`` so a runaway read cannot hold a worker thread.
- Driver failures become ``ConsoleUnavailableError`` (a 503-style client error), never a 500.
"""

from __future__ import annotations

import asyncio
import logging
import queue
from datetime import datetime
from typing import Any

from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors

from gateway.metrics import access_counters
from shared.clickhouse_client import clickhouse_client
from shared.errors import ClientError
from shared.metrics import counted
from shared.settings import ClickHouseSettings

__all__ = ["ConsoleStore", "ConsoleUnavailableError", "Rows"]

log = logging.getLogger(__name__)

Rows = list[dict[str, Any]]


class ConsoleUnavailableError(ClientError):
    """Analytics storage did not answer; the proxy itself is unaffected."""

    status_code = 503
    code = "ANALYTICS_UNAVAILABLE"


def _plain(value: Any) -> Any:
    """JSON-friendly values. Queries select times as numbers (``created_at_ms``,
    ``toUInt32(...)``); a DateTime that slips through is rendered as ISO text, not guessed."""
    if isinstance(value, datetime):
        return value.isoformat()
    return value


class ConsoleStore:
    failures = counted("failures")
    """Queries ClickHouse did not answer (each one logged)."""

    def __init__(
        self, clickhouse: ClickHouseSettings, *, pool_size: int = 4, max_execution_s: int = 20
    ) -> None:
        self.database = clickhouse.database
        self._settings = clickhouse
        self._max_execution_s = max_execution_s
        self._pool: queue.LifoQueue[Client] = queue.LifoQueue()
        for _ in range(pool_size):
            self._pool.put(self._client())
        self.counters = access_counters("console_store", "failures")

    def _client(self) -> Client:
        reads = {"max_execution_time": self._max_execution_s, "use_uncompressed_cache": 1}
        return clickhouse_client(self._settings, reads)

    def _execute(self, sql: str, params: dict[str, Any]) -> Rows:
        client = self._pool.get()
        try:
            rows, columns = client.execute(sql, params, with_column_types=True)
        except (ch_errors.Error, OSError, EOFError) as exc:
            self.counters.inc("failures")
            log.warning("console query failed: %s: %s", type(exc).__name__, exc)
            client.disconnect()
            raise ConsoleUnavailableError("analytics storage did not answer; retry") from exc
        finally:
            self._pool.put(client)
        names = [name for name, _ in columns]
        return [{n: _plain(v) for n, v in zip(names, row, strict=True)} for row in rows]

    async def rows(self, query: tuple[str, dict[str, Any]]) -> Rows:
        sql, params = query
        return await asyncio.to_thread(self._execute, sql, params)

    def close(self) -> None:
        while not self._pool.empty():
            self._pool.get_nowait().disconnect()
