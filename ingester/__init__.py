"""The log ingester: arq workers that move records from Redis Streams into ClickHouse, with
the JSONL fallback spool, locked replay, rollups and the on-call CLI.

The modules, in the order a record meets them:

- ``consume`` reads a stream shard (XREADGROUP) into batches and acks them once durable;
  ``stream_policy`` holds its pure decisions, ``housekeeping`` its chores (claiming a dead
  consumer's entries, forgetting idle consumers, trimming).
- ``decode`` turns a batch of payloads into records and ``columns`` into insert columns.
- ``delivery`` inserts through ``sink`` (the only ClickHouse insert) with retries, and sets
  poison aside in ``dead_letter``; a batch ClickHouse cannot take goes to the fallback spool
  (``shared.spool``). All three take a batch the same way (``sinks.BatchSink``).
- ``replay`` (under ``lock``) sends the spool back through ``delivery`` once ClickHouse answers.

Around them: ``schema`` (DDL and migrations), ``worker`` (the arq process) with ``cron`` (its
scheduled jobs: ``rollups``/``rollup_sql``, ``retention``, ``cache_prune``), ``factory`` (every
connection and delivery part, built from the settings), ``observe``/``metrics``, ``settings``,
and ``cli``/``rollup_cli`` (on-call).
"""
