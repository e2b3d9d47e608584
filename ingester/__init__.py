"""The log ingester: arq workers that move records from Redis Streams into ClickHouse, with
the JSONL fallback spool, locked replay, rollups and the on-call CLI."""
