"""The console's only ClickHouse access: blocking clickhouse-driver calls in worker threads.

Invariants:
- A ``Client`` is used by one thread at a time: clients live in a pool, a query takes one for
  its duration and puts it back (a broken one is disconnected first; the driver reconnects).
- At most ``pool_size`` queries run at once per gateway worker; further ones wait for a client,
  so a burst of dashboard reads cannot open unbounded connections to ClickHouse.
- Every query carries ``max_execution_time`` so a runaway read cannot hold a worker thread.
- A read that failed because a connection broke (ours, or a cluster server's link to a shard)
  is sent once more on a fresh connection: reads are idempotent, and a restarted server or one
  stale pooled link should not show a dashboard an error. Any other failure is not retried.
- Driver failures become ``AnalyticsUnavailableError`` (a 503-style client error), never a 500.
"""

from __future__ import annotations

import asyncio
import logging
import queue
from datetime import datetime
from typing import Any

from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors
from tenacity import Retrying, retry_if_exception, stop_after_attempt

from gateway.metrics import access_counters
from shared.backoff import Backoff
from shared.clickhouse_client import clickhouse_client, lost_connection
from shared.errors import AnalyticsUnavailableError
from shared.metrics import counted
from shared.settings import ClickHouseSettings

__all__ = ["ConsoleStore", "Rows"]

log = logging.getLogger(__name__)

Rows = list[dict[str, Any]]


def _plain(value: Any) -> Any:
    """JSON-friendly values. Queries select times as numbers (``created_at_ms``,
    ``toUInt32(...)``); a DateTime that slips through is rendered as ISO text, not guessed."""
    if isinstance(value, datetime):
        return value.isoformat()
    return value


_RESEND = Backoff(first_s=0.05, max_s=0.05)


class ConsoleStore:
    failures = counted("failures")
    """Queries ClickHouse did not answer (each one logged)."""
    resent = counted("resent")
    """Reads sent again after a broken connection (each one logged)."""

    def __init__(
        self, clickhouse: ClickHouseSettings, *, pool_size: int = 4, max_execution_s: int = 20
    ) -> None:
        self.database = clickhouse.database
        self._settings = clickhouse
        self._max_execution_s = max_execution_s
        self._pool: queue.LifoQueue[Client] = queue.LifoQueue()
        for _ in range(pool_size):
            self._pool.put(self._client())
        self.counters = access_counters("console_store", "failures", "resent")

    def _client(self) -> Client:
        reads = {"max_execution_time": self._max_execution_s, "use_uncompressed_cache": 1}
        return clickhouse_client(self._settings, reads)

    def _execute(self, sql: str, params: dict[str, Any]) -> Rows:
        client = self._pool.get()
        attempts = Retrying(
            stop=stop_after_attempt(2),
            wait=_RESEND.wait(),
            retry=retry_if_exception(lost_connection),
            before_sleep=lambda state: self._resend(client, state.outcome),
            reraise=True,
        )
        try:
            rows, columns = attempts(client.execute, sql, params, with_column_types=True)
        except (ch_errors.Error, OSError, EOFError) as exc:
            self.counters.inc("failures")
            log.warning("console query failed: %s: %s", type(exc).__name__, exc)
            client.disconnect()
            raise AnalyticsUnavailableError("analytics storage did not answer; retry") from exc
        finally:
            self._pool.put(client)
        names = [name for name, _ in columns]
        return [{n: _plain(v) for n, v in zip(names, row, strict=True)} for row in rows]

    def _resend(self, client: Client, outcome: Any) -> None:
        self.counters.inc("resent")
        exc = outcome.exception() if outcome is not None else None
        log.warning("console query resent after %s: %s", type(exc).__name__, exc)
        client.disconnect()

    async def rows(self, query: tuple[str, dict[str, Any]]) -> Rows:
        sql, params = query
        return await asyncio.to_thread(self._execute, sql, params)

    def close(self) -> None:
        while not self._pool.empty():
            self._pool.get_nowait().disconnect()
