from __future__ import annotations

import csv
import io
import json

from gateway.console.export import EXPORT_COLUMNS, csv_text, export_row, jsonl_text

ROW = {
    "request_id": "r1",
    "created_at_ms": 1_700_000_000_123,
    "model": "gpt-4o",
    "status_code": 200,
    "stream": True,
    "cost_usd": None,
    "user_id": '=HYPERLINK("http://evil")',
    "properties": {"env": "prod"},
    "preview": "not exported",
}


def test_rows_in_column_order_with_iso_time() -> None:
    row = export_row(ROW)
    assert tuple(row) == EXPORT_COLUMNS and "preview" not in row
    assert row["created_at"] == "2023-11-14T22:13:20.123Z"


def test_csv_quotes_neutralises_formulas_and_writes_the_header_once() -> None:
    text = csv_text([export_row(ROW)], header=True) + csv_text([export_row(ROW)], header=False)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 2
    assert rows[0]["user_id"] == '\'=HYPERLINK("http://evil")'
    assert (rows[0]["stream"], rows[0]["cost_usd"]) == ("true", "")
    assert json.loads(rows[0]["properties"]) == {"env": "prod"}


def test_jsonl_keeps_types() -> None:
    (line,) = jsonl_text([export_row(ROW)]).splitlines()
    parsed = json.loads(line)
    assert parsed["user_id"].startswith("=") and parsed["cost_usd"] is None
    assert parsed["properties"] == {"env": "prod"}
