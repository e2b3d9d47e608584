"""Exports of the Requests list (CSV and JSON Lines), row by row (pure: rows in, text out).

Exported rows are the list's columns (no bodies), with the time also as ISO 8601 and the custom
properties as one JSON object, so a spreadsheet and a script read the same file.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import msgspec

__all__ = [
    "EXPORT_COLUMNS",
    "EXPORT_FORMATS",
    "EXPORT_MAX_ROWS",
    "csv_text",
    "export_row",
    "jsonl_text",
]

EXPORT_MAX_ROWS = 10_000
"""The most rows one export holds (README "Read API"): narrow the filters or range for more."""

EXPORT_FORMATS = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}

EXPORT_COLUMNS = (
    "request_id",
    "created_at",
    "created_at_ms",
    "model",
    "provider",
    "status_code",
    "error_code",
    "stream",
    "latency_ms",
    "time_to_first_token_ms",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_usd",
    "cache_status",
    "cache_tier",
    "firewall_verdict",
    "user_id",
    "session_id",
    "properties",
)


def export_row(row: dict[str, Any]) -> dict[str, Any]:
    """A list row (properties already an object) as an export row, in ``EXPORT_COLUMNS`` order."""
    created = datetime.fromtimestamp(int(row["created_at_ms"]) / 1000, UTC)
    full = {**row, "created_at": created.isoformat(timespec="milliseconds").replace("+00:00", "Z")}
    return {name: full.get(name) for name in EXPORT_COLUMNS}


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    """A CSV cell; text a spreadsheet would run as a formula (a user id ``=HYPERLINK(…)``)
    is prefixed with ``'`` (OWASP's advice for CSV injection)."""
    if isinstance(value, dict):
        return msgspec.json.encode(value).decode()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return "" if value is None else value


def csv_text(rows: Iterable[dict[str, Any]], *, header: bool) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    if header:
        writer.writerow(EXPORT_COLUMNS)
    for row in rows:
        writer.writerow([_cell(row[name]) for name in EXPORT_COLUMNS])
    return out.getvalue()


def jsonl_text(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(msgspec.json.encode(row).decode() + "\n" for row in rows)
