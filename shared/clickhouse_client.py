"""The one builder of clickhouse-driver clients. The ingester (inserts, migrations, rollups,
retention) and the gateway's console both read their connection settings through it, so a new
setting (a timeout, TLS) is added once and neither process imports the other for it.

Invariants:
- A client is made without a database: statements name ``db.table``, so a client works before
  the database exists (migrations create it).
- An insert into a ``Distributed`` table (a cluster) returns only once every shard has its rows
  (``insert_distributed_sync``), not when the receiving server has queued them: the ingester
  acks entries after that, never before. Set always: it changes nothing for plain tables or
  for reads.
- A client is not thread-safe: one owner thread at a time (the console pools them).
"""

from __future__ import annotations

from collections.abc import Mapping

from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors

from shared.settings import ClickHouseSettings

__all__ = ["TRANSPORT_ERRORS", "clickhouse_client", "lost_connection"]

TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    ch_errors.NetworkError,
    ch_errors.SocketTimeoutError,
    ch_errors.UnexpectedPacketFromServerError,
    ch_errors.UnknownPacketFromServerError,
    ch_errors.ChecksumDoesntMatchError,
    ch_errors.PartiallyConsumedQueryError,
    EOFError,
    OSError,  # connection refused/reset, socket timeouts
)
"""The driver's own connection to the server broke; the server's answer, if any, is lost."""

_LINK_CODES = frozenset(
    {
        # UNEXPECTED_PACKET_FROM_CLIENT: a Distributed read with LIMIT cancelled its shard
        # query mid-send (a server race up to ClickHouse 20.x, ClickHouse#17254)
        101,
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        279,  # ALL_CONNECTION_TRIES_FAILED
    }
)


def lost_connection(exc: BaseException) -> bool:
    """Whether a query failed because a connection broke — ours to the server, or one between
    the servers of a cluster (a ``Distributed`` read forwards to every shard) — rather than
    because of the query. Such a read can be sent again as is."""
    if isinstance(exc, ch_errors.ServerException):
        return exc.code in _LINK_CODES
    return isinstance(exc, TRANSPORT_ERRORS)


def clickhouse_client(
    settings: ClickHouseSettings,
    query_settings: Mapping[str, int | str] | None = None,
    *,
    client_class: type[Client] = Client,
) -> Client:
    """A client for ``settings``; ``query_settings`` are added to every query it sends (the
    console's ``max_execution_time``, say). ``client_class``: the ingester's sink passes its
    ``Client`` subclass that packs inserts in bulk (``ingester.native``)."""
    return client_class(
        host=settings.host,
        port=settings.port,
        user=settings.user,
        password=settings.password,
        connect_timeout=settings.connect_timeout_s,
        send_receive_timeout=settings.send_receive_timeout_s,
        sync_request_timeout=settings.connect_timeout_s,
        settings={"insert_distributed_sync": 1, **(query_settings or {})},
    )
