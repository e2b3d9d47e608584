"""The read API under ``/console/api``: JSON, org-scoped by the caller's API key.

Invariants:
- The org of every query is the authenticated key's org (``Principal``); nothing in the path
  or query string can name another org. An id of another org is simply not found (404), and
  a filter naming another org's user or session matches nothing.
- Handlers only parse, call ``gateway.console.queries`` and shape rows; the SQL lives there.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from litestar import Controller, Request, get
from litestar.di import NamedDependency, Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.response import Stream

from gateway.console import queries
from gateway.console.export import (
    EXPORT_FORMATS,
    EXPORT_MAX_ROWS,
    csv_text,
    export_row,
    jsonl_text,
)
from gateway.console.filters import (
    DAY,
    HOUR,
    Page,
    RequestFilters,
    TimeRange,
    decode_cursor,
    encode_cursor,
    parse_bucket,
    parse_properties,
)
from gateway.console.store import ConsoleStore, Rows
from shared.errors import BadRequestError, InvalidApiKeyError, NotFoundError

__all__ = ["Authenticator", "ConsoleApi", "Principal", "bearer", "parse_time", "recent_windows"]


@dataclass(frozen=True)
class Principal:
    org_id: str
    key_id: str


Authenticator = Callable[[str], Awaitable[Principal]]
"""Bearer token → Principal; raises InvalidApiKeyError or ForbiddenError (no read permission)."""

Multi = Annotated[list[str] | None, QueryParameter(required=False)]
_WHEN = "unix milliseconds or ISO 8601 (UTC unless an offset is given)"
Start = Annotated[str | None, QueryParameter(required=False, description=f"Range start: {_WHEN}")]
End = Annotated[
    str | None, QueryParameter(required=False, description=f"Range end, exclusive: {_WHEN}")
]
Cursor = Annotated[
    str | None, QueryParameter(required=False, description="`next_cursor` of the previous page")
]
Bucket = Annotated[
    str, QueryParameter(description="Bucket size: 1h, 6h, 1d, 7d or seconds (whole hours)")
]


QModel = Annotated[
    list[str] | None,
    QueryParameter(
        required=False, description="Model used (or requested); repeat for any of several"
    ),
]
QProvider = Annotated[
    list[str] | None,
    QueryParameter(required=False, description="Provider; repeat for any of several"),
]
QStatus = Annotated[
    list[int] | None,
    QueryParameter(required=False, description="HTTP status code; repeat for any of several"),
]
QErrorCode = Annotated[
    list[str] | None,
    QueryParameter(required=False, description="Error code, e.g. PROVIDER_ERROR; repeatable"),
]
QCacheStatus = Annotated[
    list[str] | None, QueryParameter(required=False, description="hit, miss or bypass; repeatable")
]
QCacheTier = Annotated[
    list[str] | None,
    QueryParameter(required=False, description="exact, semantic or advanced; repeatable"),
]
QFirewallVerdict = Annotated[
    list[str] | None,
    QueryParameter(required=False, description="pass, flag, block, error or skipped; repeatable"),
]
QFirewallSource = Annotated[
    list[str] | None,
    QueryParameter(required=False, description="cache or classifier; repeatable"),
]
QUserId = Annotated[
    str | None, QueryParameter(required=False, description="floopy-user-id of the request")
]
QSessionId = Annotated[
    str | None, QueryParameter(required=False, description="floopy-session-id of the request")
]
QProperty = Annotated[
    list[str] | None,
    QueryParameter(
        required=False, description="key:value of a floopy-property-<key>; repeat to AND"
    ),
]
QMinLatencyMs = Annotated[
    float | None, QueryParameter(required=False, description="Total latency at least (ms)")
]
QMaxLatencyMs = Annotated[
    float | None, QueryParameter(required=False, description="Total latency at most (ms)")
]
QMinCostUsd = Annotated[
    float | None, QueryParameter(required=False, description="Cost at least (USD)")
]
QMaxCostUsd = Annotated[
    float | None, QueryParameter(required=False, description="Cost at most (USD)")
]
QQ = Annotated[
    str | None,
    QueryParameter(
        required=False, description="Text in the request or response body (case-insensitive)"
    ),
]
QSort = Annotated[str, QueryParameter(description="time, latency, cost or tokens")]
QOrder = Annotated[str, QueryParameter(description="desc or asc")]
QAt = Annotated[
    int | None,
    QueryParameter(
        required=False, description="created_at_ms from the list: skips locating the id"
    ),
]


@dataclass(frozen=True)
class ErrorDetail:
    code: str
    message: str


@dataclass(frozen=True)
class ErrorBody:
    """Every failure of the read API (docs/architecture.md §5)."""

    error: ErrorDetail


def _error(description: str) -> ResponseSpec:
    return ResponseSpec(data_container=ErrorBody, description=description, generate_examples=False)


ERRORS: dict[int, ResponseSpec] = {
    401: _error("INVALID_API_KEY: no key, or not a key of this gateway"),
    403: _error("FORBIDDEN: the key lacks the read permission"),
    503: _error("ANALYTICS_UNAVAILABLE: ClickHouse did not answer; the proxy is unaffected"),
}
_EXPORT_PAGE = 200
NOT_FOUND = {**ERRORS, 404: _error("NOT_FOUND: no such id in the key's organisation")}


def bearer(authorization: str) -> str:
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidApiKeyError("missing API key: send Authorization: Bearer <your Floopy key>")
    return token.strip()


_UNIX_MS = re.compile(r"-?[0-9]{1,18}")
_MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


def parse_time(value: str | None, default_ms: int) -> int:
    """Unix milliseconds, or ISO 8601 (``Z`` allowed; naive means UTC)."""
    if not value:
        return default_ms
    shown = value if len(value) <= 64 else value[:64] + "…"
    if _UNIX_MS.fullmatch(value):
        ms = int(value)
    else:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            ms = int(parsed.timestamp() * 1000)
        except (ValueError, OverflowError, OSError):
            raise BadRequestError(f"{shown!r} is neither unix ms nor an ISO 8601 time") from None
    if not 0 <= ms <= _MAX_TIME_MS:
        raise BadRequestError(f"{shown!r} is outside 1970-01-01 … 9999-12-31")
    return ms


def time_range(start: str | None, end: str | None, default_span_s: int = DAY) -> TimeRange:
    now_ms = int(time.time() * 1000)
    end_ms = parse_time(end, now_ms)
    return TimeRange(parse_time(start, end_ms - default_span_s * 1000), end_ms)


def recent_windows(tr: TimeRange) -> list[TimeRange]:
    """The last hour of ``tr``, its last day, then all of it (each only if shorter than the
    next): most lists "latest first" are filled by the first."""
    windows = [
        TimeRange(max(tr.start_ms, tr.end_ms - span_s * 1000), tr.end_ms)
        for span_s in (HOUR, DAY)
        if tr.end_ms - span_s * 1000 > tr.start_ms
    ]
    return [*windows, tr]


def _is_keyset(after: list[Any]) -> bool:
    """A requests cursor is [sort value (a number), request id]."""
    if len(after) != 2 or not isinstance(after[1], str) or isinstance(after[0], bool):
        return False
    return isinstance(after[0], int | float)


def _newest_first_windows(tr: TimeRange, f: RequestFilters, after: list[Any]) -> list[TimeRange]:
    """Where to look for a page of requests. Newest first (the default sort): the last hour
    before the page starts (the range end, or the cursor's time), then the last day, then the
    rest; a window holding a full page holds exactly the newest rows, since every row outside
    it is older. Other sorts need the whole range."""
    if f.sort != "time" or not f.descending:
        return [tr]
    end_ms = min(tr.end_ms, int(after[0]) + 1) if after else tr.end_ms
    if end_ms <= tr.start_ms:
        return [tr]  # the cursor is at the range start: the keyset condition ends the list
    return recent_windows(TimeRange(tr.start_ms, end_ms))


def _offset(cursor: str | None) -> int:
    if not cursor:
        return 0
    values = decode_cursor(cursor)
    if len(values) != 1 or not isinstance(values[0], int) or values[0] < 0:
        raise BadRequestError("`cursor` is not a cursor this API returned")
    return values[0]


def _page(rows: Rows, limit: int, next_cursor: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
    more = len(rows) > limit
    rows = rows[:limit]
    return {"data": rows, "next_cursor": next_cursor(rows[-1]) if more and rows else None}


def _props(row: dict[str, Any]) -> None:
    row["properties"] = dict(
        zip(row.pop("property_keys", []), row.pop("property_values", []), strict=False)
    )


def _figures(row: dict[str, Any]) -> dict[str, Any]:
    """Derived rates and named percentiles from a rollup row."""
    q = row.pop("latency_q", None) or [0.0, 0.0, 0.0, 0.0]
    n = row.get("requests") or 0
    row.update(
        latency_p50_ms=q[0],
        latency_p90_ms=q[1],
        latency_p95_ms=q[2],
        latency_p99_ms=q[3],
        latency_avg_ms=(row.pop("latency_sum_ms", 0.0) / n) if n else 0.0,
        error_rate=(row.get("errors", 0) / n) if n else 0.0,
        cache_hit_rate=(row.get("cache_hits", 0) / n) if n else 0.0,
    )
    return row


def _in_order(keys: Rows, rows: Rows) -> Rows:
    """``rows`` (read by id) in the order of ``keys`` (the id query's order)."""
    by_id = {row["request_id"]: row for row in rows}
    return [by_id[k["request_id"]] for k in keys if k["request_id"] in by_id]


async def request_filters(  # noqa: PLR0917 - litestar passes query parameters by name
    model: QModel = None,
    provider: QProvider = None,
    status: QStatus = None,
    error_code: QErrorCode = None,
    cache_status: QCacheStatus = None,
    cache_tier: QCacheTier = None,
    firewall_verdict: QFirewallVerdict = None,
    firewall_source: QFirewallSource = None,
    user_id: QUserId = None,
    session_id: QSessionId = None,
    property: QProperty = None,
    min_latency_ms: QMinLatencyMs = None,
    max_latency_ms: QMaxLatencyMs = None,
    min_cost_usd: QMinCostUsd = None,
    max_cost_usd: QMaxCostUsd = None,
    q: QQ = None,
    sort: QSort = "time",
    order: QOrder = "desc",
) -> RequestFilters:
    """The Requests filters from the query string: one dependency for the list and the export,
    so an export holds exactly the rows the list shows."""
    if order not in ("asc", "desc"):
        raise BadRequestError("`order` must be asc or desc")
    return RequestFilters(
        models=tuple(model or ()),
        providers=tuple(provider or ()),
        status_codes=tuple(status or ()),
        error_codes=tuple(error_code or ()),
        cache_statuses=tuple(cache_status or ()),
        cache_tiers=tuple(cache_tier or ()),
        firewall_verdicts=tuple(firewall_verdict or ()),
        firewall_sources=tuple(firewall_source or ()),
        user_id=user_id or "",
        session_id=session_id or "",
        properties=parse_properties(property),
        min_latency_ms=min_latency_ms,
        max_latency_ms=max_latency_ms,
        min_cost_usd=min_cost_usd,
        max_cost_usd=max_cost_usd,
        search=q or "",
        sort=sort,
        descending=order == "desc",
    )


async def principal(
    request: Request[Any, Any, Any], authenticator: NamedDependency[Authenticator]
) -> Principal:
    """The caller, for every console handler: the key of the ``Authorization`` header."""
    return await authenticator(bearer(request.headers.get("authorization", "")))


class ConsoleApi(Controller):
    """Every handler is handed the store it reads (``store``) and the caller
    (``principal``, from the ``authenticator`` the app provides)."""

    path = "/console/api"
    tags = ["analytics"]
    security = [{"BearerAuth": []}]
    dependencies = {"principal": Provide(principal)}

    async def _rows_of(
        self, store: ConsoleStore, org_id: str, keys: Rows, extra: tuple[str, ...] = ()
    ) -> Rows:
        """The list columns of the requests in ``keys`` (ids with times), in the same order."""
        if not keys:
            return []
        times = [int(k["created_at_ms"]) for k in keys]
        ids = [str(k["request_id"]) for k in keys]
        rows = await store.rows(
            queries.rows_by_id_sql(store.database, org_id, ids, (min(times), max(times)), extra)
        )
        ordered = _in_order(keys, rows)
        for row in ordered:
            _props(row)
        return ordered

    async def _requests_page(  # noqa: PLR0917 - private, called with every argument in place
        self,
        store: ConsoleStore,
        org_id: str,
        tr: TimeRange,
        f: RequestFilters,
        limit: int,
        after: list[Any],
    ) -> dict[str, Any]:
        keys: Rows = []
        for window in _newest_first_windows(tr, f, after):
            keys = await store.rows(
                queries.requests_sql(
                    store.database, org_id, window, f=f, page=Page(limit=limit), after=after
                )
            )
            if len(keys) > limit:
                break
        more = len(keys) > limit
        keys = keys[:limit]
        cursor = encode_cursor([keys[-1]["_sort"], keys[-1]["request_id"]]) if more else None
        return {"data": await self._rows_of(store, org_id, keys), "next_cursor": cursor}

    @get(
        "/requests",
        responses=ERRORS,
        summary="Requests, filtered, sorted, cursor-paginated",
        dependencies={"filters": Provide(request_filters)},
    )
    async def list_requests(
        self,
        request: Request[Any, Any, Any],
        store: NamedDependency[ConsoleStore],
        principal: NamedDependency[Principal],
        filters: NamedDependency[RequestFilters],
        *,
        start: Start = None,
        end: End = None,
        limit: Annotated[int, QueryParameter(description="Rows per page, 1-200")] = 50,
        cursor: Cursor = None,
    ) -> dict[str, Any]:
        who = principal
        Page(limit=limit)
        after = decode_cursor(cursor) if cursor else []
        if after and not _is_keyset(after):
            raise BadRequestError("`cursor` is not a cursor this API returned")
        return await self._requests_page(
            store, who.org_id, time_range(start, end), filters, limit, after
        )

    @get(
        "/requests/export",
        responses=ERRORS,
        summary=f"The filtered Requests as CSV or JSON Lines (at most {EXPORT_MAX_ROWS:,} rows)",
        dependencies={"filters": Provide(request_filters)},
        media_type="text/csv",
    )
    async def export_requests(
        self,
        request: Request[Any, Any, Any],
        store: NamedDependency[ConsoleStore],
        principal: NamedDependency[Principal],
        filters: NamedDependency[RequestFilters],
        *,
        start: Start = None,
        end: End = None,
        format: Annotated[str, QueryParameter(description="csv or jsonl")] = "csv",
    ) -> Stream:
        """Streamed page by page in the list's order; the first page is read before the answer
        starts, so a bad key or an unreachable ClickHouse is still a JSON error."""
        who = principal
        if format not in EXPORT_FORMATS:
            raise BadRequestError("`format` must be csv or jsonl")
        tr = time_range(start, end)
        first = await self._requests_page(store, who.org_id, tr, filters, _EXPORT_PAGE, [])
        cap = EXPORT_MAX_ROWS
        name = f"floopy-requests-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.{format}"
        return Stream(
            self._export(store, who.org_id, tr, filters, format, first, cap),
            media_type=EXPORT_FORMATS[format],
            headers={
                "Content-Disposition": f'attachment; filename="{name}"',
                "Floopy-Export-Max-Rows": str(cap),
            },
        )

    async def _export(  # noqa: PLR0917 - a private generator, called once
        self,
        store: ConsoleStore,
        org_id: str,
        tr: TimeRange,
        f: RequestFilters,
        fmt: str,
        page: dict[str, Any],
        cap: int,
    ) -> AsyncIterator[bytes]:
        sent = 0
        while True:
            rows = [export_row(r) for r in page["data"][: cap - sent]]
            text = csv_text(rows, header=sent == 0) if fmt == "csv" else jsonl_text(rows)
            sent += len(rows)
            if text:
                yield text.encode()
            if not page["next_cursor"] or sent >= cap:
                return
            after = decode_cursor(page["next_cursor"])
            page = await self._requests_page(store, org_id, tr, f, _EXPORT_PAGE, after)

    @get("/requests/{request_id:str}", responses=NOT_FOUND, summary="One request in full")
    async def one_request(
        self,
        request: Request[Any, Any, Any],
        store: NamedDependency[ConsoleStore],
        principal: NamedDependency[Principal],
        request_id: FromPath[str],
        at: QAt = None,
    ) -> dict[str, Any]:
        who = principal
        rows: Rows = []
        if at is not None:
            rows = await store.rows(
                queries.request_detail_sql(store.database, who.org_id, request_id, at)
            )
        if not rows:  # no time given, or a wrong one: find it from the id
            found = await store.rows(
                queries.locate_request_sql(store.database, who.org_id, request_id)
            )
            if found:
                at = int(found[0]["created_at_ms"])
                rows = await store.rows(
                    queries.request_detail_sql(store.database, who.org_id, request_id, at)
                )
        if not rows:
            raise NotFoundError(f"no request {request_id!r} in your organisation")
        record = rows[0]
        for name in ("created_at", "ingested_at"):
            record.pop(name, None)
        _props(record)
        record["stage_latency_ms"] = dict(
            zip(record.pop("stage_names"), record["stage_latency_ms"], strict=False)
        )
        record["prompt_inputs"] = dict(
            zip(record.pop("prompt_input_keys"), record.pop("prompt_input_values"), strict=False)
        )
        for side in ("request", "response"):
            names = record.pop(f"{side}_header_keys", None) or []
            values = record.pop(f"{side}_header_values", None) or []
            record[f"{side}_headers"] = dict(zip(names, values, strict=False))
        created_s = int(record["created_at_ms"]) // 1000
        spans = await store.rows(
            queries.request_spans_sql(store.database, who.org_id, request_id, created_s)
        )
        for span in spans:
            span["attributes"] = dict(
                zip(span.pop("attribute_keys"), span.pop("attribute_values"), strict=False)
            )
        providers = [p for p in {record["provider"], *record["providers_tried"]} if p]
        events: Rows = []
        if providers:
            window = (created_s - 300, created_s + int(record["latency_ms"] / 1000) + 60)
            events = await store.rows(
                queries.request_breaker_events_sql(store.database, providers, *window)
            )
        return {"request": record, "spans": spans, "breaker_events": events}

    @get(
        "/sessions",
        responses=ERRORS,
        summary="Sessions with requests, cost, tokens, first/last time",
    )
    async def list_sessions(
        self,
        request: Request[Any, Any, Any],
        store: NamedDependency[ConsoleStore],
        principal: NamedDependency[Principal],
        *,
        start: Start = None,
        end: End = None,
        limit: FromQuery[int] = 50,
        cursor: Cursor = None,
    ) -> dict[str, Any]:
        who = principal
        offset = _offset(cursor)
        tr = time_range(start, end, 7 * DAY)
        latest: Rows = []
        for window in recent_windows(tr):
            latest = await store.rows(
                queries.sessions_sql(store.database, who.org_id, window, Page(limit), offset)
            )
            if len(latest) > limit:
                break
        figures: Rows = []
        if latest:
            ids = [str(r["session_id"]) for r in latest]
            figures = await store.rows(
                queries.session_figures_sql(store.database, who.org_id, tr, ids)
            )
        by_id = {row["session_id"]: row for row in figures}
        rows = [
            {**by_id[r["session_id"]], "name": r["name"], "path": r["path"]}
            for r in latest
            if r["session_id"] in by_id
        ]
        for row in rows:
            row["duration_ms"] = row["last_ms"] - row["first_ms"]
            row["users"] = [u for u in row["users"] if u]
        return _page(rows, limit, lambda _: encode_cursor([offset + limit]))

    @get(
        "/sessions/{session_id:str}",
        responses=NOT_FOUND,
        summary="One session as its ordered requests",
    )
    async def one_session(
        self,
        request: Request[Any, Any, Any],
        store: NamedDependency[ConsoleStore],
        principal: NamedDependency[Principal],
        session_id: FromPath[str],
    ) -> dict[str, Any]:
        who = principal
        keys = await store.rows(
            queries.session_requests_sql(store.database, who.org_id, session_id, 1000)
        )
        rows = await self._rows_of(store, who.org_id, keys, ("session_name", "session_path"))
        if not rows:
            raise NotFoundError(f"no session {session_id!r} in your organisation")
        first, last = rows[0], rows[-1]
        summary = {
            "session_id": session_id,
            # the latest request's name and path, as the sessions list shows them
            "name": last["session_name"],
            "path": last["session_path"],
            "requests": len(rows),
            "cost_usd": sum(r["cost_usd"] or 0.0 for r in rows),
            "total_tokens": sum(r["total_tokens"] for r in rows),
            "first_ms": first["created_at_ms"],
            "last_ms": last["created_at_ms"],
            "duration_ms": last["created_at_ms"] - first["created_at_ms"],
        }
        for row in rows:
            row.pop("session_name", None)
            row.pop("session_path", None)
        return {"session": summary, "requests": rows}

    @get(
        "/users",
        responses=ERRORS,
        summary="Per user: requests, tokens, cost, errors, last seen (rollups)",
    )
    async def list_users(
        self,
        request: Request[Any, Any, Any],
        store: NamedDependency[ConsoleStore],
        principal: NamedDependency[Principal],
        *,
        start: Start = None,
        end: End = None,
        sort: FromQuery[str] = "last_seen",
        limit: FromQuery[int] = 50,
        cursor: Cursor = None,
    ) -> dict[str, Any]:
        who = principal
        offset = _offset(cursor)
        tr = time_range(start, end, 7 * DAY)
        rows = await store.rows(
            queries.users_sql(
                store.database, who.org_id, tr, page=Page(limit), offset=offset, sort=sort
            )
        )
        return _page([_figures(r) for r in rows], limit, lambda _: encode_cursor([offset + limit]))

    @get(
        "/users/{user_id:str}",
        responses=NOT_FOUND,
        summary="One user's timeline and latest requests",
    )
    async def one_user(
        self,
        request: Request[Any, Any, Any],
        store: NamedDependency[ConsoleStore],
        principal: NamedDependency[Principal],
        user_id: FromPath[str],
        *,
        start: Start = None,
        end: End = None,
        bucket: Bucket = "1d",
    ) -> dict[str, Any]:
        who = principal
        tr = time_range(start, end, 7 * DAY)
        step = parse_bucket(bucket, tr.end_s - tr.start_s)
        series = await store.rows(
            queries.user_timeline_sql(store.database, who.org_id, user_id, tr, step)
        )
        recent = (
            await self._requests_page(
                store, who.org_id, tr, RequestFilters(user_id=user_id), 20, []
            )
        )["data"]
        if not series and not recent:
            raise NotFoundError(f"no user {user_id!r} in your organisation in this range")
        return {
            "user_id": user_id,
            "bucket_s": step,
            "series": [_figures(r) for r in series],
            "recent": recent,
        }

    @get("/properties", responses=ERRORS, summary="Property keys seen in the range")
    async def property_keys(
        self,
        request: Request[Any, Any, Any],
        store: NamedDependency[ConsoleStore],
        principal: NamedDependency[Principal],
        *,
        start: Start = None,
        end: End = None,
    ) -> dict[str, Any]:
        who = principal
        tr = time_range(start, end, 7 * DAY)
        return {"data": await store.rows(queries.property_keys_sql(store.database, who.org_id, tr))}

    @get(
        "/properties/{key:str}", responses=ERRORS, summary="Values of a property with their figures"
    )
    async def property_values(
        self,
        request: Request[Any, Any, Any],
        store: NamedDependency[ConsoleStore],
        principal: NamedDependency[Principal],
        key: FromPath[str],
        *,
        start: Start = None,
        end: End = None,
        limit: FromQuery[int] = 100,
    ) -> dict[str, Any]:
        who = principal
        tr = time_range(start, end, 7 * DAY)
        Page(limit)
        rows = await store.rows(
            queries.property_values_sql(store.database, who.org_id, key, tr, limit)
        )
        return {"key": key, "data": [_figures(r) for r in rows]}

    @get(
        "/properties/{key:str}/series",
        responses=ERRORS,
        summary="Figures per value of a property over time",
    )
    async def property_series(
        self,
        request: Request[Any, Any, Any],
        store: NamedDependency[ConsoleStore],
        principal: NamedDependency[Principal],
        key: FromPath[str],
        *,
        start: Start = None,
        end: End = None,
        bucket: Bucket = "1d",
        value: Multi = None,
        top: FromQuery[int] = 8,
    ) -> dict[str, Any]:
        who = principal
        tr = time_range(start, end, 7 * DAY)
        step = parse_bucket(bucket, tr.end_s - tr.start_s)
        values = list(value or [])
        if not values:
            Page(top)
            top_rows = await store.rows(
                queries.property_values_sql(store.database, who.org_id, key, tr, top)
            )
            values = [r["property_value"] for r in top_rows]
        if not values:
            return {"key": key, "bucket_s": step, "values": [], "data": []}
        rows = await store.rows(
            queries.property_series_sql(
                store.database, who.org_id, key, tr, step=step, values=values
            )
        )
        return {"key": key, "bucket_s": step, "values": values, "data": [_figures(r) for r in rows]}

    @get("/metrics", responses=ERRORS, summary="Time series from the rollups (never raw rows)")
    async def metrics(
        self,
        request: Request[Any, Any, Any],
        store: NamedDependency[ConsoleStore],
        principal: NamedDependency[Principal],
        *,
        start: Start = None,
        end: End = None,
        bucket: Bucket = "1h",
        group_by: FromQuery[str] = "",
        model: Multi = None,
        provider: Multi = None,
    ) -> dict[str, Any]:
        who = principal
        if group_by not in ("", "model", "provider", "status_code"):
            raise BadRequestError("`group_by` must be model, provider or status_code")
        tr = time_range(start, end)
        step = parse_bucket(bucket, tr.end_s - tr.start_s)
        rows = await store.rows(
            queries.metrics_sql(
                store.database,
                who.org_id,
                tr,
                step=step,
                group_by=group_by,
                models=tuple(model or ()),
                providers=tuple(provider or ()),
            )
        )
        totals: dict[str, Any] = {"requests": 0, "errors": 0, "cache_hits": 0, "cost_usd": 0.0}
        totals |= {"cost_saved_usd": 0.0}
        totals |= {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        totals |= {"firewall_blocked": 0, "firewall_flagged": 0}
        for row in rows:
            for name in totals:
                totals[name] += row[name]
        n = totals["requests"]
        totals["error_rate"] = totals["errors"] / n if n else 0.0
        totals["cache_hit_rate"] = totals["cache_hits"] / n if n else 0.0
        return {
            "bucket_s": step,
            "group_by": group_by,
            "totals": totals,
            "data": [_figures(r) for r in rows],
        }
