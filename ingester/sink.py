"""The only module that inserts into ClickHouse: columnar batches over a clickhouse-driver
client (two, taking turns, for the groups of a replay), with every driver failure translated
into the pipeline's error tree.

Invariants:
- Blocking; one ``ClickHouseSink`` per owner thread. The driver drops its connection after any
  error and the next call reconnects, so a sink survives a server restart.
- Every exception leaving ``insert`` (every failure ``insert_groups`` yields) is
  ``SinkUnavailableError`` (transient: retry, then spool) or ``PoisonBatchError`` (the rows
  themselves are bad: never retried as a whole). Poison must be proven by the exception's
  type or a data-error code; anything the server says that is not known to be about the data
  counts as transient, because spooling loses nothing while setting a whole healthy batch
  aside as poison would.
- ``types_check=False`` on purpose: with it the driver packs numbers with ``struct`` and refuses
  out-of-range values (TypeMismatchError, code 53); with ``types_check=True`` clickhouse-driver
  0.2.x masks them silently (300 into UInt8 is stored as 44). Both measured on 18.16.1.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

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
        self._client = self._new_client()
        self._clients = [self._client]
        """The second is made when a second group is sent (``insert_groups``): a sink that
        inserts one group at a time (the stream consumer's) never has one."""
        self._statements = {s: insert_statement(settings.database, s) for s in Sink}

    def _new_client(self) -> BulkInsertClient:
        client: BulkInsertClient = clickhouse_client(self.settings, client_class=BulkInsertClient)
        client.bulk = self.settings.bulk_writer  # the driver packs arrays value by value
        return client

    def _turn(self, turn: int) -> BulkInsertClient:
        if turn % 2 == len(self._clients):
            self._clients.append(self._new_client())
        return self._clients[turn % 2]

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

    def insert_groups(
        self, sink: Sink, groups: Iterable[Iterable[Sequence[Sequence[Any]]]]
    ) -> Iterator[int | PipelineError]:
        """Each group of blocks (columns) as one INSERT, the blocks sent as the group yields
        them; yields, in order, each group's rows ClickHouse confirmed or the
        ``SinkUnavailableError``/``PoisonBatchError`` it failed with.

        The server gathers the blocks of one INSERT into parts of up to
        ``min_insert_block_size_rows``/``_bytes`` (1,048,576 rows / 256 MiB by default), so ten
        blocks of 5,000 rows make one part instead of ten: on 18.16 with 3.5 KB records, 53 ->
        18 us of server CPU per record, merges included. It writes that part once the data
        ended, so two connections take turns: a group is sent while the server still writes
        the one before, whose answer is read after.

        An insert that failed is not atomic: some of its blocks may be stored (re-inserting
        them is harmless). No insert is in flight when a failure is yielded, so the caller may
        use the sink at once. An exception of a group itself (reading a file) is raised as is,
        never taken for the server's."""
        pending: tuple[BulkInsertClient, int | PipelineError] | None = None
        try:
            for turn, blocks in enumerate(groups):
                client = self._turn(turn)
                sent = self._send(client, sink, blocks)
                if pending is None:
                    pending = (client, sent)
                    continue
                previous = self._answer(sink, *pending)
                if isinstance(previous, PipelineError):
                    pending, current = None, self._answer(sink, client, sent)
                    yield previous
                    yield current
                else:
                    pending = (client, sent)
                    yield previous
            if pending is not None:
                last, pending = self._answer(sink, *pending), None
                yield last
        finally:
            if pending is not None:  # the caller stopped early: drop the insert in flight
                pending[0].disconnect()

    def _send(
        self, client: BulkInsertClient, sink: Sink, blocks: Iterable[Sequence[Sequence[Any]]]
    ) -> int | PipelineError:
        source_error: BaseException | None = None

        def guarded() -> Iterator[Sequence[Sequence[Any]]]:
            nonlocal source_error
            source = iter(blocks)
            while True:
                try:
                    columns = next(source)
                except StopIteration:
                    return
                except BaseException as exc:
                    source_error = exc
                    raise
                if columns and columns[0]:
                    yield columns

        try:
            return int(client.send_insert(self._statements[sink], guarded()))
        except Exception as exc:
            if source_error is not None:
                client.disconnect()
                raise source_error from None
            kind = classify(exc)
            if kind is None:
                raise
            return self._translated(kind, exc, sink, client)

    def _answer(
        self, sink: Sink, client: BulkInsertClient, sent: int | PipelineError
    ) -> int | PipelineError:
        if isinstance(sent, PipelineError):
            return sent
        try:
            client.end_insert()
        except Exception as exc:
            kind = classify(exc)
            if kind is None:
                raise
            return self._translated(kind, exc, sink, client)
        return sent

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
        for client in self._clients:
            client.disconnect()

    def _translated(
        self,
        kind: type[PipelineError],
        exc: Exception,
        sink: Sink | None,
        client: BulkInsertClient | None = None,
    ) -> PipelineError:
        # The driver disconnects on most errors itself; make sure, so the next call reconnects.
        (client or self._client).disconnect()
        label = sink.value if sink else "-"
        error = kind(f"{label}: {type(exc).__name__}: {exc}")
        error.__cause__ = exc
        return error
