"""Helpers for the ClickHouse-side ingester tests: a unique database per test, queries, and
records/payloads with chosen values."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from clickhouse_driver import Client

from devstack.servers import ClickHouseServer
from shared.codec import encode_record
from shared.records import RequestRecord
from shared.settings import ClickHouseSettings

__all__ = ["query", "request_payload", "unique_settings"]


def unique_settings(server: ClickHouseServer, **overrides: Any) -> ClickHouseSettings:
    database = f"t_{uuid.uuid4().hex[:12]}"
    return ClickHouseSettings(port=server.port, database=database, **overrides)


def query(settings: ClickHouseSettings, sql: str, params: Any = None) -> Any:
    """Run ``sql`` with ``{db}`` replaced. An INSERT must pass its rows as ``params``: inline
    VALUES make clickhouse-driver wait for data blocks forever."""
    client = Client(host=settings.host, port=settings.port, connect_timeout=2)
    try:
        return client.execute(sql.format(db=settings.database), params)
    finally:
        client.disconnect()


def request_payload(i: int, **overrides: Any) -> bytes:
    """The codec's bytes of a request record; overrides may hold values the record type
    accepts but ClickHouse cannot (e.g. negative token counts), as a buggy gateway would."""
    record = RequestRecord(
        request_id=str(uuid.UUID(int=i)),
        org_id=f"org{i % 3}",
        api_key_id="key",
        created_at_ms=1_790_000_000_000 + i,
        model_requested="gpt-4o-mini",
        properties={"n": str(i)},
        stage_latency_ms={"auth": 0.1},
        cost_usd=0.001,
    )
    raw = msgspec.to_builtins(record) | overrides
    return msgspec.json.encode(raw) if overrides else encode_record(record)
