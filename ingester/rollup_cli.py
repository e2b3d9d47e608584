"""``floopy-ingester rollups …``: rebuild rollups for a time range, run one rollup tick now, and
set or enforce per-org raw-log retention. Mounted on the main CLI (``ingester.cli``), whose
callback builds the settings (``ctx.obj``).

Invariants: rebuilding is always safe (a recompute writes the same figures again, and hours
past an org's retention keep the rollup they have); every expected failure ends with a
one-line reason and exit code 1.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated

import typer
from clickhouse_driver import errors as ch_errors
from rich.console import Console

from ingester.retention import Retention
from ingester.rollups import RollupReport, Rollups, run_on_shards
from ingester.schema.topology import shard_settings
from ingester.settings import IngesterSettings
from shared.errors import SinkUnavailableError

__all__ = ["parse_when", "rollups_app"]

rollups_app = typer.Typer(help="Rollups and retention: rebuild a range, run now, retention.")
out = Console()
err = Console(stderr=True)
_FAILURES = (ch_errors.Error, OSError, EOFError, SinkUnavailableError)


def parse_when(text: str) -> int:
    """Unix seconds, or an ISO date/time (UTC unless it says otherwise)."""
    if text.isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        msg = f"{text!r}: use unix seconds or ISO 8601 (2026-01-31T12:00)"
        raise typer.BadParameter(msg) from None
    return int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp())


def _on_shards(
    settings: IngesterSettings, action: Callable[[Rollups], RollupReport]
) -> RollupReport:
    """``action`` on every shard's rollups (one server: once)."""
    logging.getLogger("clickhouse_driver").setLevel(logging.CRITICAL)
    return run_on_shards(
        settings.clickhouse,
        action,
        default_retention_days=settings.retention_default_days,
        overlap_s=settings.rollup_overlap_s,
    )


@rollups_app.command()
def rebuild(
    ctx: typer.Context,
    start: Annotated[str, typer.Option("--from", help="Start (unix s or ISO, UTC).")],
    end: Annotated[str, typer.Option("--to", help="End, exclusive (unix s or ISO, UTC).")],
    org: Annotated[list[str] | None, typer.Option(help="Only these orgs (repeat).")] = None,
) -> None:
    """Recompute every hourly and daily rollup of a time range from the raw rows."""
    settings: IngesterSettings = ctx.obj
    lo, hi = parse_when(start), parse_when(end)
    if hi <= lo:
        raise typer.BadParameter("--to must be after --from")
    try:
        report = _on_shards(settings, lambda rollups: rollups.rebuild(lo, hi, org or None))
    except _FAILURES as exc:
        err.print(f"[red]rebuild failed:[/red] {type(exc).__name__}: {exc}".splitlines()[0])
        raise typer.Exit(1) from None
    out.print(
        f"rebuilt {report.hours} org-hour(s) of {len(report.orgs)} org(s); "
        f"{report.skipped_expired} past retention kept their rollup"
    )


@rollups_app.command("run")
def run_now(ctx: typer.Context) -> None:
    """One rollup tick now: recompute the hours that changed since the last run."""
    try:
        report = _on_shards(ctx.obj, Rollups.run_changed)
    except _FAILURES as exc:
        err.print(f"[red]rollup run failed:[/red] {type(exc).__name__}: {exc}".splitlines()[0])
        raise typer.Exit(1) from None
    out.print(f"recomputed {report.hours} org-hour(s) of {len(report.orgs)} org(s)")


@rollups_app.command("retention")
def retention(
    ctx: typer.Context,
    org: Annotated[str | None, typer.Option(help="Set this org's retention (with --days).")] = None,
    days: Annotated[int | None, typer.Option(min=1, help="Raw-log retention in days.")] = None,
    enforce: Annotated[bool, typer.Option(help="Delete expired raw rows now.")] = False,
) -> None:
    """Show, set (``--org X --days N``) or enforce (``--enforce``) raw-log retention."""
    settings: IngesterSettings = ctx.obj
    try:
        shards = shard_settings(settings.clickhouse)  # each shard keeps its own rows and plans
        for i, shard in enumerate(shards):
            keeper = Retention(shard, default_days=settings.retention_default_days)
            try:
                _retention_on(keeper, org, days, enforce, show=i == 0)
            finally:
                keeper.close()
        out.print(f"default: {settings.retention_default_days} day(s)")
    except _FAILURES as exc:
        err.print(f"[red]retention failed:[/red] {type(exc).__name__}: {exc}".splitlines()[0])
        raise typer.Exit(1) from None


def _retention_on(
    keeper: Retention, org: str | None, days: int | None, enforce: bool, *, show: bool
) -> None:
    keeper.ensure_table()
    if org is not None and days is not None:
        keeper.set_days(org, days)
    if show:
        for org_id, kept in sorted(keeper.days_by_org().items()):
            out.print(f"{org_id}: {kept} day(s)")
    if enforce:
        out.print(str(keeper.enforce()))
