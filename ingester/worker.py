"""The ingester process: an arq worker whose start-up starts, per sink, one stream consumer and
one replay watcher, and whose shutdown stops them gracefully.

Invariants:
- Settings are built once per process: by the CLI (``floopy-ingester worker``, with its
  overrides) or, for ``arq ingester.worker.WorkerSettings``, when arq looks the name up
  (module ``__getattr__``), never at import time.
- Each consumer and each replay watcher owns its ``Delivery`` (one ClickHouse connection, not
  thread-safe); spool writers are shared per sink (they lock the files themselves).
- ClickHouse being down at start-up is not fatal: consumers spool, and the schema is migrated
  by the replay watcher before its first replay once ClickHouse answers.
- Shutdown stops reading, lets every consumer flush and ack the batch in hand, lets a running
  replay finish its batch, then closes connections.
- A Redis outage never ends the process: arq's own poll loop and shutdown would let a Redis
  error escape (and skip ``on_shutdown``), so ``floopy-ingester worker`` runs ``ResilientWorker``.
  ``arq ingester.worker.WorkerSettings`` uses arq's plain ``Worker`` and relies on a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Any

from arq.connections import RedisSettings as ArqRedisSettings
from arq.worker import Worker, get_kwargs
from prometheus_client import start_http_server
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ingester import cron, factory
from ingester.consume import StreamConsumer
from ingester.decode import tune_gc_for_batches
from ingester.delivery import Delivery
from ingester.metrics import ConsumerCounter, Counters, ingester_events
from ingester.observe import observe_forever
from ingester.replay import ReplayStatus, pending_files
from ingester.schema import migrate
from ingester.settings import IngesterSettings
from shared.backoff import Backoff
from shared.metrics import flush_every
from shared.redis_keys import RedisKeys
from shared.streams import Sink

__all__ = [
    "IngesterRuntime",
    "ResilientWorker",
    "configure_logging",
    "run_resilient_worker",
    "worker_settings",
]

log = logging.getLogger(__name__)

POLL_BACKOFF = Backoff(first_s=1.0, max_s=5.0)
"""Between failed arq job polls: short enough to resume soon after Redis returns, long enough
not to flood the log while it is down."""


def configure_logging(level: str) -> None:
    """arq configures only its own logger; give ours a handler once, without touching root."""
    logger = logging.getLogger("ingester")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False


def spool_has_files(directory: Path, sink: Sink) -> bool:
    """Any non-empty current, rotated or sealed spool file of ``sink``: worth a replay."""
    return any(
        path.is_file() and path.stat().st_size > 0 for path in pending_files(directory, sink)
    )


class IngesterRuntime:
    """The consumers and replay watchers of one process."""

    def __init__(self, settings: IngesterSettings, counters: Counters | None = None) -> None:
        self.settings = settings
        self.counters = counters or Counters()
        self.redis = factory.redis_client(settings)
        self.consumers: list[StreamConsumer] = []
        self._deliveries: list[Delivery] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._migrated = False

    def _delivery(self) -> Delivery:
        delivery = factory.delivery(self.settings)
        self._deliveries.append(delivery)
        return delivery

    async def start(self, sinks: tuple[Sink, ...] = tuple(Sink)) -> None:
        await self._migrate()
        s = self.settings
        for sink in sinks:
            spool = factory.spool_writer(s, sink)
            for shard in s.my_shards:
                consumer = StreamConsumer(
                    self.redis,
                    sink,
                    deliveries=(self._delivery(), self._delivery()),  # see ingester.consume
                    spool=spool,
                    settings=s,
                    counters=self.counters,
                    shard=shard,
                )
                self.consumers.append(consumer)
                task = asyncio.create_task(consumer.run(), name=f"consume-{sink}-{shard}")
                self._tasks.append(task)
            watcher = self._watch_replay(sink, self._delivery())
            self._tasks.append(asyncio.create_task(watcher, name=f"replay-{sink}"))
        if s.metrics_port is not None:
            start_http_server(s.metrics_port, addr=s.metrics_host)
            observer = observe_forever(self.redis, s, self.counters, self._stopping)
            self._tasks.append(asyncio.create_task(observer, name="observe"))
            flusher = flush_every(stopping=self._stopping)
            self._tasks.append(asyncio.create_task(flusher, name="metrics-flush"))
            log.info("metrics on %s:%d/metrics", s.metrics_host, s.metrics_port)
        log.info(
            "ingester %s started: %d sinks, shards %s", s.consumer_name, len(sinks), s.my_shards
        )

    async def stop(self) -> None:
        self._stopping.set()
        for consumer in self.consumers:
            consumer.stop()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        for task, result in zip(self._tasks, results, strict=True):
            if isinstance(result, BaseException):
                log.error("task %s ended with %r", task.get_name(), result)
        for delivery in self._deliveries:
            delivery.close()
        await self.redis.aclose()
        for sink in Sink:
            log.info("ingester counters %s: %s", sink, self.counters.snapshot(sink))

    async def _migrate(self) -> bool:
        if self._migrated:
            return True
        try:
            applied = await asyncio.to_thread(migrate, self.settings.clickhouse)
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"; retried before each replay
            log.warning("schema migration deferred, clickhouse not ready: %s", exc)
            return False
        self._migrated = True
        log.info("schema current (applied now: %s)", applied or "none")
        return True

    async def _watch_replay(self, sink: Sink, delivery: Delivery) -> None:
        """Every replay_check_interval_s: spool files present and ClickHouse answering → replay."""
        s = self.settings
        replayer = factory.replayer(s, sink, delivery)
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), s.replay_check_interval_s)
            if self._stopping.is_set() or not spool_has_files(s.spool_dir, sink):
                continue
            if not await asyncio.to_thread(delivery.ping) or not await self._migrate():
                continue
            try:
                report = await asyncio.to_thread(replayer.replay)
            except Exception:  # the watcher retries at its next interval
                self.counters.inc(sink, ConsumerCounter.ERRORS)
                log.exception(
                    "replay of %s failed; retrying in %ss", sink, s.replay_check_interval_s
                )
                continue
            self.counters.inc(sink, ConsumerCounter.REPLAYS)
            self.counters.inc(sink, ConsumerCounter.REPLAYED, report.inserted)
            if report.status is ReplayStatus.FAILED:  # logged by the replayer; retried
                self.counters.inc(sink, ConsumerCounter.ERRORS)
            log.info("replay of %s: %s", sink, report)


async def _startup(ctx: dict[str, Any]) -> None:
    settings: IngesterSettings = ctx["settings"]
    configure_logging(settings.log_level)
    tune_gc_for_batches()
    runtime = IngesterRuntime(settings)
    ctx["runtime"] = runtime
    await runtime.start()


async def _shutdown(ctx: dict[str, Any]) -> None:
    runtime: IngesterRuntime | None = ctx.get("runtime")
    if runtime is not None:
        await runtime.stop()


async def noop(ctx: dict[str, Any]) -> None:
    """arq refuses to start without a function; the work is in the cron jobs (``ingester.cron``)."""


def worker_settings(settings: IngesterSettings) -> type:
    """arq's ``WorkerSettings`` for ``settings`` (a class, as ``arq`` expects)."""

    class WorkerSettings:
        functions = (noop,)
        cron_jobs = cron.jobs(settings)
        redis_settings = ArqRedisSettings.from_dsn(settings.arq_url)
        queue_name = RedisKeys(settings.redis.key_prefix).arq_queue
        health_check_key = RedisKeys(settings.redis.key_prefix).arq_health(settings.consumer_name)
        on_startup = _startup
        on_shutdown = _shutdown
        ctx = {"settings": settings}  # arq's context dict for this worker

    return WorkerSettings


REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


class ResilientWorker(Worker):
    """arq's ``Worker``, riding out Redis outages instead of exiting.

    The consumers already back off and reconnect on their own; only arq's job poll and its
    ``close`` would let the error escape and end the process.
    """

    counters = ingester_events("worker", "poll_errors")
    """``poll_errors``: failed job polls since start (one log line each, at most one per
    backoff)."""
    _failing = 0
    """Failed polls in a row: the backoff's step, back to 0 after a poll that worked."""

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except REDIS_ERRORS as exc:
            self.counters.inc("poll_errors")
            self._failing += 1
            delay = POLL_BACKOFF.delay_s(self._failing)
            log.warning(
                "arq poll failed (%d so far): %s; retrying in %.1fs",
                self.counters.get("poll_errors"),
                exc,
                delay,
            )
            await asyncio.sleep(delay)
            return
        self._failing = 0

    async def close(self) -> None:
        """As arq's, but a Redis error while deleting the health key must not skip
        ``on_shutdown``: that is where the consumers flush and ack their batches."""
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)
        if not self._pool:
            return
        await asyncio.gather(*self.tasks.values())
        try:
            await self.pool.delete(self.health_check_key)
        except REDIS_ERRORS as exc:
            log.warning("could not delete the arq health key at shutdown: %s", exc)
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        with contextlib.suppress(*REDIS_ERRORS):
            await self.pool.aclose(close_connection_pool=True)
        self._pool = None


def run_resilient_worker(settings: IngesterSettings) -> None:
    kwargs: dict[str, Any] = get_kwargs(worker_settings(settings))
    ResilientWorker(**kwargs).run()


def __getattr__(name: str) -> Any:
    """``arq ingester.worker.WorkerSettings`` looks the name up: build settings from env then."""
    if name == "WorkerSettings":
        return worker_settings(IngesterSettings())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
