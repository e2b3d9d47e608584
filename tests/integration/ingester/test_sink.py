from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from devstack.servers import ClickHouseServer
from ingester.columns import build_columns
from ingester.schema.migrate import migrate
from ingester.sink import ClickHouseSink
from shared.codec import decode_record
from shared.errors import PoisonBatchError, SinkUnavailableError
from shared.settings import ClickHouseSettings
from shared.streams import Sink
from tests.integration.ingester.clickhouse_helpers import query, request_payload, unique_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(clickhouse_server: ClickHouseServer) -> ClickHouseSettings:
    settings = unique_settings(clickhouse_server)
    migrate(settings)
    return settings


@pytest.fixture
def sink(settings: ClickHouseSettings) -> Iterator[ClickHouseSink]:
    sink = ClickHouseSink(settings)
    yield sink
    sink.close()


def _columns(*payloads: bytes) -> list[list[object]]:
    records = [decode_record(Sink.REQUESTS, p) for p in payloads]
    return [list(c) for c in build_columns(Sink.REQUESTS, records)]


def test_insert_round_trips_values(sink: ClickHouseSink, settings: ClickHouseSettings) -> None:
    assert sink.insert(Sink.REQUESTS, _columns(request_payload(1), request_payload(2))) == 2
    rows = query(
        settings,
        "SELECT request_id, toUInt32(created_at), created_at_ms, property_keys, "
        "property_values, stage_names, cost_usd, firewall_score FROM {db}.requests FINAL "
        "ORDER BY created_at_ms",
    )
    assert rows[0][1:] == (1_790_000_000, 1_790_000_000_001, ["n"], ["1"], ["auth"], 0.001, None)
    assert [r[0] for r in rows] == [
        "00000000-0000-0000-0000-000000000001",
        "00000000-0000-0000-0000-000000000002",
    ]


def test_empty_batch_inserts_nothing(sink: ClickHouseSink) -> None:
    assert sink.insert(Sink.SPANS, build_columns(Sink.SPANS, [])) == 0


def test_out_of_range_value_is_poison_and_the_sink_still_works(
    sink: ClickHouseSink, settings: ClickHouseSettings
) -> None:
    with pytest.raises(PoisonBatchError, match="prompt_tokens"):
        sink.insert(Sink.REQUESTS, _columns(request_payload(1, prompt_tokens=-5)))
    assert sink.insert(Sink.REQUESTS, _columns(request_payload(2))) == 1
    assert query(settings, "SELECT count() FROM {db}.requests FINAL") == [(1,)]


def test_missing_table_is_transient_not_poison(clickhouse_server: ClickHouseServer) -> None:
    """Rows for a database not migrated yet are fine rows: spool them, don't dead-letter."""
    sink = ClickHouseSink(unique_settings(clickhouse_server))
    try:
        with pytest.raises(SinkUnavailableError):
            sink.insert(Sink.REQUESTS, _columns(request_payload(1)))
    finally:
        sink.close()


def test_unreachable_server_is_transient_and_ping_says_so(
    clickhouse_factory: Callable[[], ClickHouseServer],
) -> None:
    server: ClickHouseServer = clickhouse_factory()
    settings = unique_settings(server, connect_timeout_s=1.0)
    migrate(settings)
    sink = ClickHouseSink(settings)
    try:
        assert sink.ping()
        server.kill()
        assert not sink.ping()
        with pytest.raises(SinkUnavailableError):
            sink.insert(Sink.REQUESTS, _columns(request_payload(1)))
        server.start()
        assert sink.ping()
        assert sink.insert(Sink.REQUESTS, _columns(request_payload(1))) == 1
    finally:
        sink.close()


def _inserted_parts(settings: ClickHouseSettings) -> int:
    """Parts the inserts wrote (level 0), merged away or not."""
    rows = query(
        settings,
        "SELECT count() FROM system.parts WHERE database = '{db}' AND table = 'requests' "
        "AND level = 0",
    )
    return int(rows[0][0])


def test_a_group_of_blocks_is_one_insert_and_one_part(
    sink: ClickHouseSink, settings: ClickHouseSettings
) -> None:
    groups = [
        [_columns(*(request_payload(g * 100 + b * 10 + i) for i in range(10))) for b in range(3)]
        for g in range(4)
    ]
    assert list(sink.insert_groups(Sink.REQUESTS, groups)) == [30, 30, 30, 30]
    assert query(settings, "SELECT count() FROM {db}.requests FINAL") == [(120,)]
    assert _inserted_parts(settings) == 4


def test_a_failed_group_comes_with_nothing_in_flight_and_the_others_are_stored(
    sink: ClickHouseSink, settings: ClickHouseSettings
) -> None:
    poison = _columns(request_payload(20, prompt_tokens=-5))
    groups = [
        [_columns(request_payload(1)), _columns(request_payload(2))],
        [_columns(request_payload(10)), poison],
        [_columns(request_payload(30))],
        [_columns(request_payload(40))],
    ]
    outcomes: list[object] = []
    for outcome in sink.insert_groups(Sink.REQUESTS, groups):
        if isinstance(outcome, PoisonBatchError):
            # the caller sends the failed group again at once, on the same sink
            assert sink.insert(Sink.REQUESTS, _columns(request_payload(10))) == 1
        outcomes.append(outcome if isinstance(outcome, int) else type(outcome))
    assert outcomes == [2, PoisonBatchError, 1, 1]
    stored = query(settings, "SELECT created_at_ms % 1000 AS n FROM {db}.requests FINAL ORDER BY n")
    assert [r[0] for r in stored] == [1, 2, 10, 30, 40]


def test_a_groups_own_error_is_raised_as_itself_and_the_sink_still_works(
    sink: ClickHouseSink, settings: ClickHouseSettings
) -> None:
    def unreadable() -> Iterator[list[list[object]]]:
        yield _columns(request_payload(1))
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left") as caught:
        list(sink.insert_groups(Sink.REQUESTS, [[_columns(request_payload(3))], unreadable()]))
    assert not isinstance(caught.value, SinkUnavailableError)
    assert sink.insert(Sink.REQUESTS, _columns(request_payload(2))) == 1
    # the groups before it were never confirmed: the server may or may not have kept them
    stored = query(settings, "SELECT created_at_ms % 1000 AS n FROM {db}.requests FINAL ORDER BY n")
    assert 2 in {r[0] for r in stored}


def _connections_to(port: int) -> int:
    """This process's TCP sockets connected to ``port`` (from /proc: no client internals)."""
    ours = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed while listing
            continue
        if target.startswith("socket:["):
            ours.add(target[len("socket:[") : -1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if remote_port == port and fields[3] == "01" and fields[9] in ours:  # ESTABLISHED
                    count += 1
    return count


def test_a_sink_sent_one_group_at_a_time_keeps_one_connection(
    sink: ClickHouseSink, settings: ClickHouseSettings
) -> None:
    for n in range(3):  # as the stream consumer sends: a group per call
        assert list(sink.insert_groups(Sink.REQUESTS, [[_columns(request_payload(n))]])) == [1]
    assert _connections_to(settings.port) == 1
    groups = [[_columns(request_payload(10))], [_columns(request_payload(11))]]
    assert list(sink.insert_groups(Sink.REQUESTS, groups)) == [1, 1]  # a replay's turns
    assert _connections_to(settings.port) == 2
