"""The console's reads against a real ClickHouse, through a TCP relay that can cut the
connection in the middle of a query the way a restarting server or a broken shard link does."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from devstack.servers import ClickHouseServer
from gateway.console.store import ConsoleStore
from shared.errors import AnalyticsUnavailableError
from tests.integration.ingester.clickhouse_helpers import unique_settings

pytestmark = pytest.mark.integration


class CuttingRelay:
    """Forwards TCP to ``port``; once ``arm(n, times)`` is called, the ``n``-th client-to-server
    write after it (and after each cut, ``times`` cuts in all) is not forwarded and its
    connection is closed on both sides."""

    def __init__(self, port: int) -> None:
        self._target = ("127.0.0.1", port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._countdown: int | None = None
        self._writes = 0
        self._times = 0
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, writes: int, times: int = 1) -> None:
        with self._lock:
            self._countdown, self._writes, self._times = writes, writes, times

    def _cut_now(self) -> bool:
        with self._lock:
            if self._countdown is None:
                return False
            self._countdown -= 1
            if self._countdown > 0:
                return False
            self.cuts += 1
            self._times -= 1
            self._countdown = self._writes if self._times else None
            return True

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._target)
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if upstream and self._cut_now():
                    break
                sink.sendall(chunk)
        except OSError:
            pass
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def relay(clickhouse_server: ClickHouseServer) -> Iterator[CuttingRelay]:
    relay = CuttingRelay(clickhouse_server.port)
    yield relay
    relay.close()


@pytest.fixture
def store(clickhouse_server: ClickHouseServer, relay: CuttingRelay) -> Iterator[ConsoleStore]:
    settings = unique_settings(clickhouse_server, connect_timeout_s=2.0)
    store = ConsoleStore(settings.model_copy(update={"port": relay.port}), pool_size=1)
    yield store
    store.close()


async def test_a_read_cut_mid_query_is_sent_again_and_answers(
    store: ConsoleStore, relay: CuttingRelay
) -> None:
    assert await store.rows(("SELECT 1 AS one", {})) == [{"one": 1}]
    relay.arm(2)  # the pooled client pings first (write 1); the query is write 2
    assert await store.rows(("SELECT number AS n FROM system.numbers LIMIT 3", {})) == [
        {"n": 0},
        {"n": 1},
        {"n": 2},
    ]
    assert relay.cuts == 1
    assert store.counters.get("resent") == 1
    assert store.counters.get("failures") == 0


async def test_a_query_the_server_refuses_is_not_sent_again(store: ConsoleStore) -> None:
    with pytest.raises(AnalyticsUnavailableError):
        await store.rows(("SELECT no_such_column FROM system.one", {}))
    assert store.counters.get("resent") == 0
    assert store.counters.get("failures") == 1
    assert await store.rows(("SELECT 1 AS one", {})) == [{"one": 1}]


async def test_a_connection_cut_twice_is_a_503_once(
    store: ConsoleStore, relay: CuttingRelay
) -> None:
    assert await store.rows(("SELECT 1 AS one", {})) == [{"one": 1}]
    # the resend reconnects (hello, write 1) and sends the query (write 2): cut that too
    relay.arm(2, times=2)
    with pytest.raises(AnalyticsUnavailableError):
        await store.rows(("SELECT 2 AS two", {}))
    assert relay.cuts == 2
    assert store.counters.get("resent") == 1
    assert store.counters.get("failures") == 1
