"""The only module that inserts into ClickHouse: columnar batches over one clickhouse-driver
Client, with every driver failure translated into the pipeline's error tree.

Invariants:
- Blocking; one ``ClickHouseSink`` per owner thread. The driver drops its connection after any
  error and the next call reconnects, so a sink survives a server restart.
- Every exception leaving ``insert`` is ``SinkUnavailableError`` (transient: retry, then spool)
  or ``PoisonBatchError`` (the rows themselves are bad: never retried as a whole). Poison must
  be proven by the exception's type or a data-error code; anything the server says that is not
  known to be about the data counts as transient, because spooling loses nothing while setting
  a whole healthy batch aside as poison would.
- ``types_check=False`` on purpose: with it the driver packs numbers with ``struct`` and refuses
  out-of-range values (TypeMismatchError, code 53); with ``types_check=True`` clickhouse-driver
  0.2.x masks them silently (300 into UInt8 is stored as 44). Both measured on 18.16.1.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from typing import Any

from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors

from ingester.native import BulkInsertClient
from ingester.schema.ddl import insert_statement
from shared.clickhouse_client import TRANSPORT_ERRORS, clickhouse_client
from shared.errors import PipelineError, PoisonBatchError, SinkUnavailableError
from shared.settings import ClickHouseSettings
from shared.streams import Sink

__all__ = ["POISON_CODES", "ClickHouseSink", "classify"]

log = logging.getLogger(__name__)

POISON_CODES = frozenset(
    {
        6,  # CANNOT_PARSE_TEXT
        26,  # CANNOT_PARSE_QUOTED_STRING
        27,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
        38,  # CANNOT_PARSE_DATE
        41,  # CANNOT_PARSE_DATETIME
        53,  # TYPE_MISMATCH (also the driver's own TypeMismatchError)
        69,  # ARGUMENT_OUT_OF_BOUND
        70,  # CANNOT_CONVERT_TYPE
        72,  # CANNOT_PARSE_NUMBER
        117,  # INCORRECT_DATA
        128,  # TOO_LARGE_ARRAY_SIZE
        131,  # TOO_LARGE_STRING_SIZE
        190,  # SIZES_OF_ARRAYS_DOESNT_MATCH
        349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
    }
)
"""Server (or driver) error codes that mean the rows are bad. Everything else from the server —
TOO_MANY_PARTS (252), timeouts, memory limits, a missing table or column (a migration not yet
run) — is transient: the rows are fine and will go in later."""

_POISON_TYPES: tuple[type[BaseException], ...] = (
    TypeError,
    ValueError,  # includes UnicodeEncodeError
    OverflowError,
    struct.error,
)


def classify(exc: BaseException) -> type[PipelineError] | None:
    """Which pipeline error an exception from the driver means; None if it is not a storage
    failure at all (a bug of ours, which must not be hidden as poison or outage)."""
    if isinstance(exc, SinkUnavailableError | PoisonBatchError):
        return type(exc)
    if isinstance(exc, ch_errors.Error):
        code = getattr(exc, "code", None)
        return PoisonBatchError if code in POISON_CODES else SinkUnavailableError
    if isinstance(exc, TRANSPORT_ERRORS):
        return SinkUnavailableError
    if isinstance(exc, _POISON_TYPES):
        return PoisonBatchError
    return None


class ClickHouseSink:
    """Columnar inserts of sink batches into ``settings.database``."""

    def __init__(self, settings: ClickHouseSettings) -> None:
        self.settings = settings
        # the driver packs arrays and nulls value by value; ingester.native packs whole columns
        client_class = BulkInsertClient if settings.bulk_writer else Client
        self._client = clickhouse_client(settings, client_class=client_class)
        self._statements = {s: insert_statement(settings.database, s) for s in Sink}

    def insert(self, sink: Sink, columns: Sequence[Sequence[Any]]) -> int:
        """Insert one batch; returns the rows ClickHouse confirmed. Raises
        SinkUnavailableError or PoisonBatchError (see the module's invariants)."""
        if not columns or not columns[0]:
            return 0
        try:
            inserted = self._client.execute(
                self._statements[sink], columns, columnar=True, types_check=False
            )
        except Exception as exc:
            kind = classify(exc)
            if kind is None:
                raise
            raise self._translated(kind, exc, sink) from exc
        return int(inserted)

    def ping(self) -> bool:
        """ClickHouse answers ``SELECT 1`` now."""
        try:
            return bool(self._client.execute("SELECT 1") == [(1,)])
        except Exception as exc:
            if classify(exc) is None:
                raise
            log.info("clickhouse ping failed: %s: %s", type(exc).__name__, exc)
            self._client.disconnect()
            return False

    def execute(self, query: str, params: Any = None) -> Any:
        """A non-insert statement (tests, migrations of the same owner); errors translated."""
        try:
            return self._client.execute(query, params)
        except Exception as exc:
            kind = classify(exc)
            if kind is None:
                raise
            raise self._translated(kind, exc, None) from exc

    def close(self) -> None:
        self._client.disconnect()

    def _translated(
        self, kind: type[PipelineError], exc: Exception, sink: Sink | None
    ) -> PipelineError:
        # The driver disconnects on most errors itself; make sure, so the next call reconnects.
        self._client.disconnect()
        label = sink.value if sink else "-"
        return kind(f"{label}: {type(exc).__name__}: {exc}")
