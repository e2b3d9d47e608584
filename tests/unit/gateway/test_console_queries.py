"""Read API SQL and inputs: org scoping everywhere, caller values only as parameters, rollups
only for metrics, and input validation that turns bad values into 400s."""

from __future__ import annotations

import inspect
import re

import pytest

from gateway.console import queries
from gateway.console.api import parse_time, recent_windows
from gateway.console.filters import (
    Page,
    RequestFilters,
    TimeRange,
    decode_cursor,
    encode_cursor,
    parse_bucket,
    parse_properties,
)
from shared.errors import BadRequestError

TR = TimeRange(1_767_225_600_000, 1_767_312_000_000)
EVIL = "x' OR 1=1 --"


def all_queries() -> list[tuple[str, dict[str, object]]]:
    f = RequestFilters(
        models=(EVIL,),
        user_id=EVIL,
        session_id=EVIL,
        properties=((EVIL, EVIL),),
        search=EVIL,
        min_cost_usd=0.1,
    )
    return [
        queries.requests_sql("db", EVIL, TR, f=f, page=Page(10), after=[1, EVIL]),
        queries.request_detail_sql("db", EVIL, EVIL, 123),
        queries.locate_request_sql("db", EVIL, EVIL),
        queries.rows_by_id_sql("db", EVIL, [EVIL], (1, 2), ("session_name",)),
        queries.request_spans_sql("db", EVIL, EVIL, 1),
        queries.sessions_sql("db", EVIL, TR, Page(10), 0),
        queries.session_requests_sql("db", EVIL, EVIL, 10),
        queries.session_figures_sql("db", EVIL, TR, [EVIL]),
        queries.users_sql("db", EVIL, TR, page=Page(10), offset=0, sort=EVIL),
        queries.user_timeline_sql("db", EVIL, EVIL, TR, 3600),
        queries.property_keys_sql("db", EVIL, TR),
        queries.property_values_sql("db", EVIL, EVIL, TR, 5),
        queries.property_series_sql("db", EVIL, EVIL, TR, step=3600, values=[EVIL]),
        queries.metrics_sql(
            "db", EVIL, TR, step=3600, group_by="model", models=(EVIL,), providers=()
        ),
    ]


def test_every_org_query_is_scoped_and_caller_values_never_reach_the_sql_text() -> None:
    for sql, params in all_queries():
        assert "org_id = %(org_id)s" in sql
        assert params["org_id"] == EVIL
        assert EVIL not in sql


def test_raw_reads_deduplicate_and_metrics_read_only_rollups() -> None:
    """Raw tables: ``LIMIT 1 BY`` the identity (or ``LIMIT 1`` for one record); rollups:
    ``FINAL``. Either way a record delivered twice is one row."""
    latest_sessions, _ = queries.sessions_sql("db", "o", TR, Page(10), 0)
    assert "max(created_at_ms)" in latest_sessions and "count" not in latest_sessions
    for sql, _ in all_queries():
        if sql == latest_sessions:
            continue  # only max(): a duplicate cannot change it
        if "`rollup_" in sql:
            assert " FINAL" in sql
        else:
            assert " FINAL" not in sql  # 18.16 merges every column in one stream: too slow
            assert re.search(r"LIMIT 1 BY (request_id|span_id)\b|LIMIT 1$", sql), sql
    metrics, _ = queries.metrics_sql("db", "o", TR, step=3600, group_by="", models=(), providers=())
    assert "`rollup_hourly`" in metrics and "`requests`" not in metrics
    daily, _ = queries.metrics_sql("db", "o", TR, step=86400, group_by="", models=(), providers=())
    assert "`rollup_daily`" in daily


def test_in_lists_are_tuples_so_the_driver_renders_a_set() -> None:
    _, params = queries.requests_sql(
        "db", "o", TR, f=RequestFilters(status_codes=(200, 429)), page=Page(5), after=[]
    )
    assert params["status_codes"] == (200, 429)


def test_keyset_cursor_follows_the_sort_direction() -> None:
    desc, _ = queries.requests_sql("db", "o", TR, f=RequestFilters(), page=Page(5), after=[5, "r"])
    assert "created_at_ms < %(after_v)s" in desc and "ORDER BY _sort DESC" in desc
    asc, params = queries.requests_sql(
        "db", "o", TR, f=RequestFilters(sort="latency", descending=False), page=Page(5), after=[]
    )
    assert "ORDER BY _sort ASC, request_id ASC" in asc and params["limit"] == 6


def test_cursor_round_trip_and_garbage() -> None:
    assert decode_cursor(encode_cursor([1.5, "abc"])) == [1.5, "abc"]
    for bad in ("!!", "e30", "bm90IGpzb24"):
        with pytest.raises(BadRequestError):
            decode_cursor(bad)


@pytest.mark.parametrize(
    ("text", "seconds"), [("1h", 3600), ("6h", 21600), ("1d", 86400), ("7200", 7200)]
)
def test_bucket_sizes(text: str, seconds: int) -> None:
    assert parse_bucket(text, 86400 * 30) == seconds


@pytest.mark.parametrize("text", ["90m", "0h", "abc", "1800", "-1h"])
def test_bad_bucket_sizes(text: str) -> None:
    with pytest.raises(BadRequestError):
        parse_bucket(text, 86400)


def test_too_many_buckets_is_refused() -> None:
    with pytest.raises(BadRequestError):
        parse_bucket("1h", 86400 * 365)


def test_property_filters() -> None:
    assert parse_properties(["feature:chat", "env=prod", "url:http://x"]) == (
        ("feature", "chat"),
        ("env", "prod"),
        ("url", "http://x"),
    )
    with pytest.raises(BadRequestError):
        parse_properties(["novalue"])


def test_times_and_ranges() -> None:
    assert parse_time("1767225600000", 0) == 1_767_225_600_000
    assert parse_time("2026-01-01T00:00:00Z", 0) == 1_767_225_600_000
    assert parse_time("2026-01-01T00:00:00", 0) == 1_767_225_600_000  # naive means UTC
    assert parse_time(None, 42) == 42
    with pytest.raises(BadRequestError):
        parse_time("yesterday", 0)
    with pytest.raises(BadRequestError):
        TimeRange(10, 10)
    assert TimeRange(3_601_000, 7_199_000).aligned(3600) == (3600, 7200)


def test_sort_and_limit_are_validated() -> None:
    with pytest.raises(BadRequestError):
        RequestFilters(sort="1; DROP TABLE requests")
    with pytest.raises(BadRequestError):
        Page(limit=10_000)


def test_handlers_take_the_org_from_the_key_only() -> None:
    from gateway.console.api import ConsoleApi

    for name, member in inspect.getmembers(ConsoleApi):
        fn = getattr(member, "fn", None)
        if fn is not None:
            assert "org_id" not in inspect.signature(fn).parameters, name


def test_recent_windows_end_at_the_range_end_and_finish_with_the_whole_range() -> None:
    week = TimeRange(0, 7 * 86_400_000)
    assert [(w.start_ms, w.end_ms) for w in recent_windows(week)] == [
        (week.end_ms - 3_600_000, week.end_ms),
        (week.end_ms - 86_400_000, week.end_ms),
        (0, week.end_ms),
    ]
    short = TimeRange(0, 1_000_000)
    assert recent_windows(short) == [short]
