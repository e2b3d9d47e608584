"""``floopy-ingester``: the on-call CLI (status, replay, migrate) and the worker's entry point.

Invariants: settings are read from ``FLOOPY_INGESTER_*`` once per invocation, options override
them; every expected failure (Redis or ClickHouse unreachable, a replay lock held elsewhere,
invalid settings, a full disk) ends with a one-line reason and exit code 1 (2 for bad settings),
never a stack trace. ``status`` and ``replay --dry-run`` change nothing. ``status`` gives each
probe (Redis, ClickHouse) its own short timeout and reports each on its own line, so a hung
server costs seconds, not the driver's default timeouts; its backlog is counted from the
entries really undelivered, not Redis's ``lag`` estimate (wrong after a restart).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, cast

import redis
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ingester import factory
from ingester.dead_letter import dead_letter_path
from ingester.decode import tune_gc_for_batches
from ingester.delivery import Delivery
from ingester.lock import inspect_lock
from ingester.replay import ReplayReport, ReplayStatus, pending_files
from ingester.requeue import requeue, survey
from ingester.rollup_cli import rollups_app
from ingester.settings import IngesterSettings
from shared.spool.reader import count_lines
from shared.spool.writer import read_dropped
from shared.streams import CONSUMER_GROUP, Sink, reply_text, stream_key

__all__ = ["SinkStatus", "app", "main"]

app = typer.Typer(
    help="Floopy ingester: on-call status, spool replay, schema migration, the worker.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)
app.add_typer(rollups_app, name="rollups")


@app.callback()
def _root(
    ctx: typer.Context,
    *,
    spool_dir: Annotated[Path | None, typer.Option(help="Spool directory.")] = None,
    dead_letter_dir: Annotated[Path | None, typer.Option(help="Dead-letter directory.")] = None,
    redis_url: Annotated[str | None, typer.Option(help="Redis URL.")] = None,
    key_prefix: Annotated[str | None, typer.Option(help="Redis key prefix.")] = None,
    clickhouse_host: Annotated[str | None, typer.Option(help="ClickHouse host.")] = None,
    clickhouse_port: Annotated[int | None, typer.Option(help="ClickHouse native port.")] = None,
    clickhouse_database: Annotated[str | None, typer.Option(help="ClickHouse database.")] = None,
) -> None:
    """Options given here override FLOOPY_INGESTER_* settings."""
    overrides: dict[str, Any] = {"spool_dir": spool_dir, "dead_letter_dir": dead_letter_dir}
    overrides["redis"] = {"url": redis_url, "key_prefix": key_prefix}
    overrides["clickhouse"] = {
        "host": clickhouse_host,
        "port": clickhouse_port,
        "database": clickhouse_database,
    }
    ctx.obj = _settings(_without_none(overrides))


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    cleaned = {}
    for key, value in values.items():
        kept = _without_none(value) if isinstance(value, dict) else value
        if kept is not None and kept != {}:
            cleaned[key] = kept
    return cleaned


def _settings(overrides: dict[str, Any]) -> IngesterSettings:
    try:
        return IngesterSettings(**overrides)
    except ValidationError as exc:
        err.print(f"[red]invalid settings:[/red] {exc}")
        raise typer.Exit(2) from None


@dataclass
class SinkStatus:
    """What ``status`` shows for one sink; Redis fields stay None when Redis is unreachable."""

    sink: Sink
    shard: int = 0
    shards: int = 1
    stream_length: int | None = None
    pending: int | None = None
    backlog: int | None = None
    """Entries after the group's last-delivered id: not yet read by any consumer."""
    consumers: list[tuple[str, int, int]] = field(default_factory=list)
    spool_files: list[tuple[str, int]] = field(default_factory=list)
    dropped_records: int = 0
    dropped_bytes: int = 0
    lock: str = ""
    dead_letters: int = 0

    @property
    def label(self) -> str:
        return self.sink.value if self.shards == 1 else f"{self.sink.value} #{self.shard}"


BACKLOG_CAP = 50_000
"""``status`` counts undelivered entries up to this many (a script over XRANGE, in chunks)."""

_COUNT_AFTER = """
local n, start, cap = 0, '(' .. ARGV[1], tonumber(ARGV[2])
while n < cap do
  local chunk = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 1000)
  if #chunk == 0 then break end
  n = n + #chunk
  start = '(' .. chunk[#chunk][1]
end
return n
"""


def _redis_status(client: redis.Redis, key: str, status: SinkStatus) -> None:
    status.stream_length = int(cast(int, client.xlen(key)))
    if not client.exists(key):
        return  # no stream yet: XINFO would answer "no such key"
    groups = cast(list[dict[str, Any]], client.xinfo_groups(key))
    ours = [g for g in groups if reply_text(g["name"]) == CONSUMER_GROUP]
    if not ours:
        return
    status.pending = int(ours[0]["pending"])
    last = reply_text(ours[0]["last-delivered-id"])
    status.backlog = int(cast(int, client.eval(_COUNT_AFTER, 1, key, last, str(BACKLOG_CAP))))
    consumers = cast(list[dict[str, Any]], client.xinfo_consumers(key, CONSUMER_GROUP))
    status.consumers = [
        (reply_text(c["name"]), int(c["pending"]), int(c["idle"])) for c in consumers
    ]


def _disk_status(settings: IngesterSettings, status: SinkStatus) -> None:
    sink = status.sink
    status.spool_files = [
        (p.name, p.stat().st_size) for p in pending_files(settings.spool_dir, sink) if p.is_file()
    ]
    dropped = read_dropped(settings.spool_dir, sink)
    status.dropped_records, status.dropped_bytes = dropped.records, dropped.bytes
    view = inspect_lock(settings.spool_dir, sink) if settings.spool_dir.is_dir() else None
    if view is not None:
        status.lock = view.describe(time.time(), settings.lock_stale_after_s)
    letters = dead_letter_path(settings.dead_letter_dir, sink)
    status.dead_letters = count_lines(letters) if letters.is_file() else 0


def _ping_clickhouse(settings: IngesterSettings, timeout_s: float | None = None) -> bool:
    sink = factory.clickhouse_sink(settings, timeout_s)
    try:
        return sink.ping()
    finally:
        sink.close()


def collect_status(
    settings: IngesterSettings, probe_timeout_s: float = 2.0
) -> tuple[list[SinkStatus], str | None, bool]:
    """Per-sink-and-shard status, the Redis error (None when reachable) and ClickHouse
    reachability, each server given ``probe_timeout_s`` per call."""
    shards = settings.redis.stream_shards
    statuses = [SinkStatus(sink, shard, shards) for sink in Sink for shard in range(shards)]
    redis_error = None
    client = _sync_client(settings, probe_timeout_s)
    prefix = settings.redis.key_prefix
    try:
        for status in statuses:
            _redis_status(client, stream_key(status.sink, prefix, status.shard), status)
    except (redis.ConnectionError, redis.TimeoutError, redis.RedisError) as exc:
        redis_error = f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    for status in statuses:
        if status.shard == 0:  # the spool, locks and dead letters are per sink, not per shard
            _disk_status(settings, status)
    return statuses, redis_error, _ping_clickhouse(settings, probe_timeout_s)


def _sync_client(settings: IngesterSettings, timeout_s: float) -> redis.Redis:
    timeouts: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    if settings.redis.cluster:
        return cast(redis.Redis, redis.RedisCluster.from_url(settings.redis.url, **timeouts))
    return redis.Redis.from_url(settings.redis.url, **timeouts)


def _status_table(statuses: list[SinkStatus]) -> Table:
    """One column per sink and stream shard, one row per figure (the spool, replay lock and
    dead letters are per sink: shown under its shard 0)."""
    table = Table(title="ingester status")
    table.add_column("")
    for s in statuses:
        table.add_column(s.label)
    rows: dict[str, list[str]] = {
        "stream length": [_opt(s.stream_length) for s in statuses],
        "group pending": [_opt(s.pending) for s in statuses],
        "backlog (undelivered)": [_backlog(s.backlog) for s in statuses],
        "consumers": [_consumers(s) for s in statuses],
        "spool files": [_spool(s) for s in statuses],
        "dropped": [f"{s.dropped_records} rec, {s.dropped_bytes} B" for s in statuses],
        "replay lock": [_lock(s) for s in statuses],
        "dead letters": [str(s.dead_letters) for s in statuses],
    }
    for label, cells in rows.items():
        table.add_row(label, *cells)
    return table


def _consumers(s: SinkStatus) -> str:
    lines = [f"{name}: pending {p}, idle {idle / 1000:.0f}s" for name, p, idle in s.consumers]
    return "\n".join(lines) or "-"


def _spool(s: SinkStatus) -> str:
    return "\n".join(f"{name} ({size} B)" for name, size in s.spool_files) or "-"


def _lock(s: SinkStatus) -> str:
    return s.lock or "-"


def _backlog(value: int | None) -> str:
    return f">= {value}" if value is not None and value >= BACKLOG_CAP else _opt(value)


@app.command()
def status(
    ctx: typer.Context,
    probe_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds each server gets to answer each call.")
    ] = 2.0,
) -> None:
    """Streams, consumers, spool files, drops, replay locks, dead letters, reachability."""
    settings: IngesterSettings = ctx.obj
    _quiet_drivers()
    statuses, redis_error, clickhouse_ok = collect_status(settings, probe_timeout)
    out.print(_status_table(statuses))
    ch = settings.clickhouse
    failed = False
    if redis_error is None:
        out.print(f"redis {settings.redis.url}: [green]reachable[/green]")
    else:
        err.print(f"[red]redis unreachable[/red] at {settings.redis.url}: {redis_error}")
        failed = True
    if clickhouse_ok:
        out.print(f"clickhouse {ch.host}:{ch.port}: [green]reachable[/green]")
    else:
        err.print(
            f"[red]clickhouse unreachable[/red] at {ch.host}:{ch.port}: "
            f"no answer to SELECT 1 within {probe_timeout}s"
        )
        failed = True
    if failed:
        raise typer.Exit(1)


@app.command()
def replay(
    ctx: typer.Context,
    sink: Annotated[Sink | None, typer.Option(help="Only this sink (default: all).")] = None,
    dry_run: Annotated[bool, typer.Option(help="Count what would be replayed.")] = False,
) -> None:
    """Replay spooled records into ClickHouse now (under the sink's replay lock)."""
    settings: IngesterSettings = ctx.obj
    _quiet_drivers()
    tune_gc_for_batches()
    sinks = [sink] if sink is not None else list(Sink)
    delivery = factory.delivery(settings)
    try:
        if not dry_run and not delivery.ping():
            ch = settings.clickhouse
            err.print(f"[red]clickhouse unreachable[/red] at {ch.host}:{ch.port}: nothing replayed")
            raise typer.Exit(1)
        reports = [_replay_sink(settings, s, delivery, dry_run=dry_run) for s in sinks]
    finally:
        delivery.close()
    failed = False
    for report in reports:
        ok = report.status in (ReplayStatus.DONE, ReplayStatus.DRY_RUN)
        (out if ok else err).print(str(report), markup=False, highlight=False)
        failed = failed or not ok
    if failed:
        raise typer.Exit(1)


def _replay_sink(
    settings: IngesterSettings, sink: Sink, delivery: Delivery, *, dry_run: bool
) -> ReplayReport:
    replayer = factory.replayer(settings, sink, delivery)
    if dry_run:
        return replayer.replay(dry_run=True)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn())
    with Progress(*columns, TimeRemainingColumn(), console=out, transient=False) as progress:
        task = progress.add_task(f"replay {sink.value}", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        return replayer.replay(progress=advance)


dead_letters_app = typer.Typer(help="Dead letters: what was set aside, and sending it back.")
app.add_typer(dead_letters_app, name="dead-letters")


@dead_letters_app.command("requeue")
def requeue_command(
    ctx: typer.Context,
    sink: Annotated[Sink | None, typer.Option(help="Only this sink (default: all).")] = None,
    dry_run: Annotated[
        bool, typer.Option(help="Count the letters and their reasons only.")
    ] = False,
) -> None:
    """Send dead letters back to their stream, once their cause is fixed (an upgraded
    ingester, a migrated schema); what is still poison is set aside again."""
    settings: IngesterSettings = ctx.obj
    directory = settings.dead_letter_dir
    sinks = [sink] if sink is not None else list(Sink)
    client = None if dry_run else _sync_client(settings, settings.redis.socket_timeout_s)
    try:
        for s in sinks:
            if client is None:
                found = survey(directory, s)
            else:
                found = requeue(client, directory, s, settings.redis.key_prefix)
            verb = "would requeue" if dry_run else "requeued"
            out.print(f"{s.value}: {verb} {found.letters} letters from {len(found.files)} files")
            for reason, count in found.reasons.most_common(10):
                out.print(f"  {count:>8}  {reason}", markup=False, highlight=False)
    except (redis.RedisError, OSError) as exc:
        err.print(
            f"[red]requeue stopped[/red]: {type(exc).__name__}: {exc}; the file being sent "
            "stays claimed and is sent whole next time"
        )
        raise typer.Exit(1) from None
    finally:
        if client is not None:
            client.close()


@app.command("migrate")
def migrate_command(
    ctx: typer.Context,
    cluster: Annotated[
        str | None,
        typer.Option(
            help="A cluster of the server's remote_servers: migrate every node of it "
            "(default: FLOOPY_INGESTER_CLICKHOUSE__CLUSTER)."
        ),
    ] = None,
) -> None:
    """Create the database and tables and apply pending migrations (on every node of a cluster:
    per-shard local tables, Replicated where ZooKeeper is configured, Distributed over them)."""
    from clickhouse_driver import errors as ch_errors

    from ingester.schema import migrate

    settings: IngesterSettings = ctx.obj
    _quiet_drivers()
    ch = settings.clickhouse
    if not _ping_clickhouse(settings):
        err.print(f"[red]clickhouse unreachable[/red] at {ch.host}:{ch.port}: nothing migrated")
        raise typer.Exit(1)
    try:
        applied = migrate(ch, cluster=cluster)
    except (ValueError, ch_errors.Error, OSError, EOFError) as exc:
        err.print(f"[red]migrate failed:[/red] {type(exc).__name__}: {exc}".splitlines()[0])
        raise typer.Exit(1) from None
    where = f" on every node of {cluster or ch.cluster}" if (cluster or ch.cluster) else ""
    out.print(f"schema of {ch.database} current{where}; applied now: {applied or 'none'}")


@app.command()
def worker(ctx: typer.Context) -> None:
    """Run the ingester worker (same as ``arq ingester.worker.WorkerSettings``)."""
    import logging.config

    from arq.logs import default_log_config

    from ingester.worker import configure_logging, run_resilient_worker

    settings: IngesterSettings = ctx.obj
    logging.config.dictConfig(default_log_config(verbose=False))  # as the arq command does
    configure_logging(settings.log_level)
    run_resilient_worker(settings)


def _quiet_drivers() -> None:
    """On-call commands report reachability themselves: no driver tracebacks on stderr."""
    logging.getLogger("clickhouse_driver").setLevel(logging.CRITICAL)
    logging.getLogger("ingester").setLevel(logging.ERROR)


def _opt(value: int | None) -> str:
    return "?" if value is None else str(value)


def main() -> None:
    app()
