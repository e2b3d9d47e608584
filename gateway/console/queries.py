"""SQL of the read API, built as (text, params). Pure: no I/O.

Invariants:
- Every statement is scoped by ``org_id = %(org_id)s``, and the org comes from the caller's API
  key, never from the query string: whatever ids or filters a key sends, it reads its own org.
- A record delivered twice is one row in every answer. Raw reads deduplicate with
  ``LIMIT 1 BY <identity>`` after filtering instead of ``FINAL``: both copies of a record are
  identical, so a filter keeps both or neither, and any one copy is the record. ``FINAL`` on
  ClickHouse 18.16 merges every column of every row in range in one stream (a 30-day user
  filter took 9 s on 10M rows; the same answer without it, 0.1 s). Rollup tables are read with
  ``FINAL`` (the newest recompute of an hour wins; they are small).
- Lists are read in two steps: the ids of a page from the cheap columns (sort value, id,
  time), then the page's rows by id inside the time span those ids cover, so the wide columns
  (bodies) are only decompressed around the rows shown.
- Metrics read rollups only: ``rollup_hourly`` for buckets under a day, ``rollup_daily`` for
  whole days. Users and properties read their rollups; requests and sessions read raw rows.
- Caller values are ``%(name)s`` parameters; identifiers and sort expressions come from fixed
  tables in this module and ``gateway.console.filters``.
"""

from __future__ import annotations

from typing import Any

from gateway.console.filters import DAY, HOUR, SORTS, Page, RequestFilters, TimeRange
from shared.tables import BREAKER_EVENTS, REQUESTS, SPANS, rollup_table

__all__ = [
    "LIST_COLUMNS",
    "Query",
    "locate_request_sql",
    "metrics_sql",
    "property_keys_sql",
    "property_series_sql",
    "property_values_sql",
    "request_breaker_events_sql",
    "request_detail_sql",
    "request_spans_sql",
    "requests_sql",
    "rows_by_id_sql",
    "session_figures_sql",
    "session_requests_sql",
    "sessions_sql",
    "user_timeline_sql",
    "users_sql",
]

Query = tuple[str, dict[str, Any]]

_Q = "0.5, 0.9, 0.95, 0.99"
MODEL = "if(model_used != '', model_used, model_requested)"
LIST_COLUMNS: tuple[tuple[str, str], ...] = (
    ("request_id", "request_id"),
    ("created_at_ms", "created_at_ms"),
    ("model", MODEL),
    ("provider", "provider"),
    ("status_code", "status_code"),
    ("error_code", "error_code"),
    ("stream", "stream"),
    ("latency_ms", "latency_ms"),
    ("time_to_first_token_ms", "time_to_first_token_ms"),
    ("prompt_tokens", "prompt_tokens"),
    ("completion_tokens", "completion_tokens"),
    ("total_tokens", "total_tokens"),
    ("cost_usd", "cost_usd"),
    ("cache_status", "cache_status"),
    ("cache_tier", "cache_tier"),
    ("firewall_verdict", "firewall_verdict"),
    ("user_id", "user_id"),
    ("session_id", "session_id"),
    ("property_keys", "property_keys"),
    ("property_values", "property_values"),
    ("preview", "substring(request_body, 1, 240)"),
)


def _t(database: str, table: str) -> str:
    return f"`{database}`.`{table}`"


def _in(column: str, name: str, values: tuple[Any, ...], params: dict[str, Any]) -> str:
    params[name] = tuple(values)  # the driver renders a tuple as (..), a list as an array
    return f"{column} IN %({name})s"


def _filter_clauses(f: RequestFilters, params: dict[str, Any]) -> list[str]:
    """One SQL condition per set filter; values go into ``params``."""
    out: list[str] = []
    for column, name, values in (
        (MODEL, "models", f.models),
        ("provider", "providers", f.providers),
        ("status_code", "status_codes", f.status_codes),
        ("error_code", "error_codes", f.error_codes),
        ("cache_status", "cache_statuses", f.cache_statuses),
        ("cache_tier", "cache_tiers", f.cache_tiers),
        ("firewall_verdict", "firewall_verdicts", f.firewall_verdicts),
        ("firewall_verdict_source", "firewall_sources", f.firewall_sources),
    ):
        if values:
            out.append(_in(column, name, values, params))
    for column, name, value in (
        ("user_id", "user_id", f.user_id),
        ("session_id", "sid", f.session_id),
    ):
        if value:
            params[name] = value
            out.append(f"{column} = %({name})s")
    for i, (key, value) in enumerate(f.properties):
        params[f"pk{i}"], params[f"pv{i}"] = key, value
        out.append(
            f"arrayExists((k, v) -> k = %(pk{i})s AND v = %(pv{i})s, "
            "property_keys, property_values)"
        )
    for column, op, name, bound in (
        ("latency_ms", ">=", "min_lat", f.min_latency_ms),
        ("latency_ms", "<=", "max_lat", f.max_latency_ms),
        ("cost_usd", ">=", "min_cost", f.min_cost_usd),
        ("cost_usd", "<=", "max_cost", f.max_cost_usd),
    ):
        if bound is not None:
            params[name] = bound
            out.append(f"{column} {op} %({name})s")
    if f.search:
        params["q"] = f.search
        out.append(
            "(positionCaseInsensitiveUTF8(request_body, %(q)s) > 0 "
            "OR positionCaseInsensitiveUTF8(response_body, %(q)s) > 0)"
        )
    return out


def _time_clause(params: dict[str, Any], tr: TimeRange) -> str:
    params["start_s"], params["end_s"] = tr.start_s, tr.end_s
    params["start_ms"], params["end_ms"] = tr.start_ms, tr.end_ms
    return (
        "created_at >= toDateTime(%(start_s)s) AND created_at < toDateTime(%(end_s)s) "
        "AND created_at_ms >= %(start_ms)s AND created_at_ms < %(end_ms)s"
    )


def _page_of_distinct(sql: str, order: str) -> str:
    """``sql`` ends in ``ORDER BY <order> LIMIT 1 BY request_id LIMIT %(limit)s``. Read through a
    ``Distributed`` table, ClickHouse 18.16 cuts each shard's rows at the limit *before*
    ``LIMIT 1 BY`` (a page came back short: measured on a 2-shard cluster). So each shard runs
    the whole statement (a record's copies all live on its shard) and their pages are merged
    here; on one server the outer sort is of one page of rows."""
    return (
        f"SELECT * FROM (\n{sql}\n)\nORDER BY {order} LIMIT %(limit)s\n"
        "SETTINGS distributed_group_by_no_merge = 1"
    )


def _select_list() -> str:
    return ", ".join(f"{expr} AS `{name}`" if expr != name else name for name, expr in LIST_COLUMNS)


def requests_sql(
    database: str, org_id: str, tr: TimeRange, *, f: RequestFilters, page: Page, after: list[Any]
) -> Query:
    """The ids (with time and sort value) of one page of requests, keyset-paginated on (sort
    value, request_id); ``after`` is the decoded cursor (empty for the first page). Fetches
    ``limit + 1`` to know if more exist. ``rows_by_id_sql`` then reads the page's columns."""
    params: dict[str, Any] = {"org_id": org_id, "limit": page.limit + 1}
    where = ["org_id = %(org_id)s", _time_clause(params, tr), *_filter_clauses(f, params)]
    sort = SORTS[f.sort]
    op, direction = ("<", "DESC") if f.descending else (">", "ASC")
    if after:
        params["after_v"], params["after_id"] = after[0], str(after[1])
        where.append(
            f"({sort} {op} %(after_v)s OR ({sort} = %(after_v)s AND request_id {op} %(after_id)s))"
        )
    order = f"_sort {direction}, request_id {direction}"
    sql = (
        f"SELECT request_id, created_at_ms, {sort} AS _sort FROM {_t(database, REQUESTS)}\n"
        f"WHERE {' AND '.join(where)}\n"
        f"ORDER BY {order}\nLIMIT 1 BY request_id LIMIT %(limit)s"
    )
    return _page_of_distinct(sql, order), params


def rows_by_id_sql(
    database: str,
    org_id: str,
    ids: list[str],
    span_ms: tuple[int, int],
    extra: tuple[str, ...] = (),
) -> Query:
    """The list columns of ``ids``, all created within ``span_ms`` (first, last); one row per
    id, in no particular order (the caller orders them as the id query did)."""
    lo_ms, hi_ms = span_ms
    params: dict[str, Any] = {
        "org_id": org_id,
        "ids": tuple(ids),
        "lo": lo_ms // 1000,
        "hi": hi_ms // 1000 + 1,
    }
    columns = ", ".join([_select_list(), *extra])
    return (
        f"SELECT {columns} FROM {_t(database, REQUESTS)}\n"
        "PREWHERE request_id IN %(ids)s\n"
        "WHERE org_id = %(org_id)s AND created_at >= toDateTime(%(lo)s) "
        "AND created_at < toDateTime(%(hi)s)\nLIMIT 1 BY request_id",
        params,
    )


def locate_request_sql(database: str, org_id: str, request_id: str) -> Query:
    """When a request id comes without its time (pasted from a response header): find its time
    from the narrow ``request_id`` column alone, so the full read can be narrowed to a minute."""
    return (
        f"SELECT created_at_ms FROM {_t(database, REQUESTS)}\n"
        "PREWHERE request_id = %(rid)s WHERE org_id = %(org_id)s LIMIT 1",
        {"org_id": org_id, "rid": request_id},
    )


def request_detail_sql(database: str, org_id: str, request_id: str, at_ms: int) -> Query:
    """One request in full. ``at_ms`` (its created-at, which the list returns and
    ``locate_request_sql`` finds) narrows the read to two minutes of the table."""
    params: dict[str, Any] = {
        "org_id": org_id,
        "rid": request_id,
        "at_lo": at_ms // 1000 - 60,
        "at_hi": at_ms // 1000 + 61,
    }
    return (
        f"SELECT * FROM {_t(database, REQUESTS)} PREWHERE request_id = %(rid)s\n"
        "WHERE org_id = %(org_id)s AND created_at >= toDateTime(%(at_lo)s) "
        "AND created_at < toDateTime(%(at_hi)s) LIMIT 1",
        params,
    )


def request_spans_sql(database: str, org_id: str, request_id: str, created_s: int) -> Query:
    params = {"org_id": org_id, "rid": request_id, "lo": created_s - 60, "hi": created_s + 3600}
    return (
        "SELECT span_id, name, start_offset_ms, duration_ms, status, attribute_keys, "
        f"attribute_values FROM {_t(database, SPANS)} PREWHERE request_id = %(rid)s\n"
        "WHERE org_id = %(org_id)s "
        "AND created_at >= toDateTime(%(lo)s) AND created_at < toDateTime(%(hi)s)\n"
        "ORDER BY start_offset_ms, name LIMIT 1 BY span_id",
        params,
    )


def request_breaker_events_sql(database: str, providers: list[str], lo_s: int, hi_s: int) -> Query:
    """Circuit-breaker changes of the providers a request tried, around its time (provider-wide
    events: they carry no org, and ``/health/providers`` shows the same state publicly)."""
    return (
        "SELECT event_id, provider, created_at_ms, from_state, to_state, failure_count, reason "
        f"FROM {_t(database, BREAKER_EVENTS)} FINAL\n"
        "WHERE provider IN %(providers)s AND created_at >= toDateTime(%(lo)s) "
        "AND created_at < toDateTime(%(hi)s)\nORDER BY created_at_ms LIMIT 50",
        {"providers": tuple(providers), "lo": lo_s, "hi": hi_s},
    )


def sessions_sql(database: str, org_id: str, tr: TimeRange, page: Page, offset: int) -> Query:
    """The page of sessions with the latest activity in ``tr``: ids, last times, and the name
    and path their latest request gave (long strings: read here, over the window only).

    ``max`` and ``argMax`` are the same with or without duplicates, so no dedup is needed.
    The caller tries the last hour of the range first, then the last day, then all of it: if
    a window ending at the range's end holds enough sessions, they are exactly the most recent
    ones (a session absent from it was last active before it began)."""
    params: dict[str, Any] = {"org_id": org_id, "limit": page.limit + 1, "offset": offset}
    return (
        "SELECT session_id, max(created_at_ms) AS last_ms, "
        "argMax(session_name, created_at_ms) AS name, argMax(session_path, created_at_ms) AS path\n"
        f"FROM {_t(database, REQUESTS)}\n"
        f"WHERE org_id = %(org_id)s AND session_id != '' AND {_time_clause(params, tr)}\n"
        "GROUP BY session_id ORDER BY last_ms DESC, session_id LIMIT %(offset)s, %(limit)s",
        params,
    )


def session_figures_sql(database: str, org_id: str, tr: TimeRange, session_ids: list[str]) -> Query:
    """Requests, cost, tokens, errors, first/last time and users of the given sessions within
    ``tr``; each record counted once. Narrow columns only: on 10M rows the session name and
    path strings tripled its time (``sessions_sql`` has them)."""
    params: dict[str, Any] = {"org_id": org_id, "sids": tuple(session_ids)}
    return (
        "SELECT session_id, count() AS requests, sum(ifNull(cost_usd, 0)) AS cost_usd, "
        "sum(toUInt64(total_tokens)) AS total_tokens, "
        "countIf(status_code >= 400 OR error_code != '') AS errors, "
        "min(created_at_ms) AS first_ms, max(created_at_ms) AS last_ms, "
        "arraySort(groupUniqArray(user_id)) AS users\n"
        "FROM (SELECT request_id, session_id, cost_usd, total_tokens, status_code, error_code, "
        "created_at_ms, user_id\n"
        f"FROM {_t(database, REQUESTS)} PREWHERE session_id IN %(sids)s\n"
        f"WHERE org_id = %(org_id)s AND {_time_clause(params, tr)}\nLIMIT 1 BY request_id)\n"
        "GROUP BY session_id",
        params,
    )


def session_requests_sql(database: str, org_id: str, session_id: str, limit: int) -> Query:
    """The ids and times of a session's requests, oldest first, over the org's whole history
    (a session id carries no time); ``rows_by_id_sql`` reads their columns."""
    sql = (
        f"SELECT request_id, created_at_ms FROM {_t(database, REQUESTS)}\n"
        "PREWHERE session_id = %(sid)s WHERE org_id = %(org_id)s\n"
        "ORDER BY created_at_ms, request_id LIMIT 1 BY request_id LIMIT %(limit)s"
    )
    order = "created_at_ms, request_id"
    return _page_of_distinct(sql, order), {"org_id": org_id, "sid": session_id, "limit": limit}


def _rollup_figures() -> str:
    return (
        "sum(requests) AS requests, sum(errors) AS errors, sum(cache_hits) AS cache_hits, "
        "sum(firewall_blocked) AS firewall_blocked, sum(firewall_flagged) AS firewall_flagged, "
        "sum(cost_usd) AS cost_usd, sum(cost_saved_usd) AS cost_saved_usd, "
        "sum(prompt_tokens) AS prompt_tokens, "
        "sum(completion_tokens) AS completion_tokens, sum(total_tokens) AS total_tokens, "
        "sum(latency_sum_ms) AS latency_sum_ms, "
        f"quantilesTDigestMerge({_Q})(latency_state) AS latency_q"
    )


def users_sql(
    database: str, org_id: str, tr: TimeRange, *, page: Page, offset: int, sort: str
) -> Query:
    """Per-user figures from the user rollup: daily rows for ranges of two days or more,
    hourly below (ranges are widened to whole buckets)."""
    step = DAY if tr.end_s - tr.start_s >= 2 * DAY else HOUR
    start, end = tr.aligned(step)
    order = {"last_seen": "last_seen", "cost": "cost_usd", "requests": "requests"}.get(
        sort, "last_seen"
    )
    return (
        f"SELECT user_id, {_rollup_figures()}, toUInt32(max(last_seen)) AS last_seen\n"
        f"FROM {_t(database, rollup_table('user', step))} FINAL\n"
        "WHERE org_id = %(org_id)s AND bucket >= toDateTime(%(start)s) "
        "AND bucket < toDateTime(%(end)s)\n"
        f"GROUP BY user_id ORDER BY {order} DESC, user_id LIMIT %(offset)s, %(limit)s",
        {"org_id": org_id, "start": start, "end": end, "offset": offset, "limit": page.limit + 1},
    )


def user_timeline_sql(database: str, org_id: str, user_id: str, tr: TimeRange, step: int) -> Query:
    start, end = tr.aligned(step)
    table = rollup_table("user", step)
    return (
        f"SELECT intDiv(toUInt32(bucket), %(step)s) * %(step)s AS t, {_rollup_figures()}\n"
        f"FROM {_t(database, table)} FINAL\n"
        "WHERE org_id = %(org_id)s AND user_id = %(uid)s AND bucket >= toDateTime(%(start)s) "
        "AND bucket < toDateTime(%(end)s)\nGROUP BY t ORDER BY t",
        {"org_id": org_id, "uid": user_id, "start": start, "end": end, "step": step},
    )


def property_keys_sql(database: str, org_id: str, tr: TimeRange) -> Query:
    start, end = tr.aligned(DAY)
    return (
        "SELECT property_key, sum(requests) AS requests, uniqExact(property_value) AS values "
        f"FROM {_t(database, rollup_table('property', DAY))} FINAL\n"
        "WHERE org_id = %(org_id)s AND bucket >= toDateTime(%(start)s) "
        "AND bucket < toDateTime(%(end)s)\nGROUP BY property_key ORDER BY requests DESC LIMIT 500",
        {"org_id": org_id, "start": start, "end": end},
    )


def property_values_sql(database: str, org_id: str, key: str, tr: TimeRange, limit: int) -> Query:
    step = DAY if tr.end_s - tr.start_s >= 2 * DAY else HOUR
    start, end = tr.aligned(step)
    return (
        f"SELECT property_value, {_rollup_figures()}\n"
        f"FROM {_t(database, rollup_table('property', step))} FINAL\n"
        "WHERE org_id = %(org_id)s AND property_key = %(key)s "
        "AND bucket >= toDateTime(%(start)s) AND bucket < toDateTime(%(end)s)\n"
        "GROUP BY property_value ORDER BY requests DESC, property_value LIMIT %(limit)s",
        {"org_id": org_id, "key": key, "start": start, "end": end, "limit": limit},
    )


def property_series_sql(
    database: str, org_id: str, key: str, tr: TimeRange, *, step: int, values: list[str]
) -> Query:
    start, end = tr.aligned(step)
    params: dict[str, Any] = {
        "org_id": org_id,
        "key": key,
        "start": start,
        "end": end,
        "step": step,
        "values": tuple(values),
    }
    return (
        "SELECT intDiv(toUInt32(bucket), %(step)s) * %(step)s AS t, property_value, "
        f"{_rollup_figures()}\nFROM {_t(database, rollup_table('property', step))} FINAL\n"
        "WHERE org_id = %(org_id)s AND property_key = %(key)s AND property_value IN %(values)s "
        "AND bucket >= toDateTime(%(start)s) AND bucket < toDateTime(%(end)s)\n"
        "GROUP BY t, property_value ORDER BY t, property_value",
        params,
    )


_GROUPS = {"": "", "model": "model", "provider": "provider", "status_code": "status_code"}


def metrics_sql(
    database: str,
    org_id: str,
    tr: TimeRange,
    *,
    step: int,
    group_by: str,
    models: tuple[str, ...],
    providers: tuple[str, ...],
) -> Query:
    """Time series from the org rollup (never raw rows), optionally one series per model,
    provider or status code."""
    start, end = tr.aligned(step)
    params: dict[str, Any] = {"org_id": org_id, "start": start, "end": end, "step": step}
    where = [
        "org_id = %(org_id)s",
        "bucket >= toDateTime(%(start)s) AND bucket < toDateTime(%(end)s)",
    ]
    if models:
        where.append(_in("model", "models", models, params))
    if providers:
        where.append(_in("provider", "providers", providers, params))
    group = _GROUPS[group_by]
    series = f"toString({group})" if group else "''"
    return (
        f"SELECT intDiv(toUInt32(bucket), %(step)s) * %(step)s AS t, {series} AS series, "
        f"{_rollup_figures()}\nFROM {_t(database, rollup_table('', step))} FINAL\n"
        f"WHERE {' AND '.join(where)}\nGROUP BY t, series ORDER BY t, series",
        params,
    )
