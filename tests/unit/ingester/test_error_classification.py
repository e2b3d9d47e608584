from __future__ import annotations

import struct

import pytest
from clickhouse_driver import errors as ch_errors

from ingester.sink import POISON_CODES, classify
from shared.errors import PipelineError, PoisonBatchError, SinkUnavailableError


def _server(code: int) -> ch_errors.ServerException:
    return ch_errors.ServerException("boom", code=code)


@pytest.mark.parametrize(
    "exc",
    [
        ch_errors.NetworkError("Connection refused"),
        ch_errors.SocketTimeoutError("timed out"),
        ch_errors.UnexpectedPacketFromServerError("?"),
        ConnectionRefusedError(111, "refused"),
        ConnectionResetError(104, "reset"),
        TimeoutError("timed out"),
        EOFError("Unexpected EOF while reading bytes"),
        _server(252),  # TOO_MANY_PARTS
        _server(159),  # TIMEOUT_EXCEEDED
        _server(241),  # MEMORY_LIMIT_EXCEEDED
        _server(60),  # UNKNOWN_TABLE: a migration not run yet, the rows are fine
        _server(16),  # NO_SUCH_COLUMN_IN_TABLE: likewise
        _server(243),  # NOT_ENOUGH_SPACE
        _server(9999),  # unknown code: transient until proven poison
    ],
)
def test_transient(exc: BaseException) -> None:
    assert classify(exc) is SinkUnavailableError


@pytest.mark.parametrize(
    "exc",
    [
        ch_errors.TypeMismatchError("Column a: argument out of range"),
        _server(53),  # TYPE_MISMATCH
        _server(6),  # CANNOT_PARSE_TEXT
        _server(131),  # TOO_LARGE_STRING_SIZE
        _server(349),  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
        TypeError("must be real number, not str"),
        ValueError("bad value"),
        OverflowError("int too big"),
        struct.error("ubyte format requires 0 <= number <= 255"),
        UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
    ],
)
def test_poison(exc: BaseException) -> None:
    assert classify(exc) is PoisonBatchError


@pytest.mark.parametrize("exc", [KeyError("x"), AttributeError("y"), RuntimeError("z")])
def test_bugs_are_not_hidden_as_storage_failures(exc: BaseException) -> None:
    assert classify(exc) is None


@pytest.mark.parametrize("kind", [SinkUnavailableError, PoisonBatchError])
def test_already_classified_stays(kind: type[PipelineError]) -> None:
    assert classify(kind("x")) is kind


def test_poison_codes_hold_no_transient_code() -> None:
    assert not POISON_CODES & {209, 210, 159, 252, 241, 60, 16, 81, 243}
