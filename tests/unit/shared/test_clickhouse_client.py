from __future__ import annotations

import pytest
from clickhouse_driver import errors as ch_errors

from shared.clickhouse_client import lost_connection


def _server_error(code: int) -> ch_errors.ServerException:
    return ch_errors.ServerException("DB::Exception: ...", code=code)


@pytest.mark.parametrize(
    "exc",
    [
        EOFError("Unexpected EOF while reading bytes"),
        ConnectionResetError(104, "reset"),
        TimeoutError("timed out"),
        ch_errors.NetworkError("Code: 210. Connection refused"),
        ch_errors.SocketTimeoutError("timed out"),
        _server_error(101),  # a cluster server's link to a shard was out of step
        _server_error(210),
        _server_error(279),
    ],
)
def test_a_broken_connection_can_be_sent_again(exc: BaseException) -> None:
    assert lost_connection(exc)


@pytest.mark.parametrize(
    "exc",
    [
        _server_error(47),  # UNKNOWN_IDENTIFIER: the query is wrong, again it would be
        _server_error(60),  # UNKNOWN_TABLE
        _server_error(159),  # TIMEOUT_EXCEEDED: max_execution_time, a resend doubles the load
        _server_error(241),  # MEMORY_LIMIT_EXCEEDED
        ValueError("a bug of ours"),
    ],
)
def test_a_failure_of_the_query_itself_is_not_resent(exc: BaseException) -> None:
    assert not lost_connection(exc)
