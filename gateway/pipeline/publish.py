"""After the response (or the last chunk of a stream): the record and spans go to the publisher.

The record is one entry of the requests stream and its spans one entry of the spans stream
(``shared.records.RequestSpans``: the ingester makes the span records).

Invariants: a request's record is published once (``ctx.published`` is claimed first, so the
route's background task, the relay's ``finally`` and the guard's after-response hook never
double it). Never raises: a failure to build a record is logged and counted, the response
already left. Token estimation (a provider that reported no usage) runs in a thread: a long
prompt must not stall the event loop every other request shares.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.clients.usage import record_usage
from gateway.metrics import observe_request
from gateway.pipeline.cache import store_after
from gateway.pipeline.record import build_records
from gateway.policy.usage import Settled, needs_estimate, settle_usage
from shared.codec import encode_record, encode_spans
from shared.streams import Sink

if TYPE_CHECKING:
    from gateway.clients.publisher import Publisher
    from gateway.clients.response_cache import ResponseCache
    from gateway.clients.usage import UsageRecorder
    from gateway.context import RequestContext
    from gateway.generation import Generation
    from gateway.services import Background
    from shared.metrics import CounterSet

__all__ = ["PublishDeps", "publish"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PublishDeps:
    publisher: Publisher
    usage: UsageRecorder
    cache: ResponseCache
    """A miss's answer is written to the cache once its record is built."""
    generation: Generation
    """The prices in force."""
    record_body_max_bytes: int
    counters: CounterSet
    """``record_build`` failures."""
    background: Background
    """Where a record waiting for a token estimate is built, off the request."""


def publish(ctx: RequestContext, deps: PublishDeps) -> None:
    """Publish the record now, or from a task once the estimate is made off the loop."""
    if ctx.published:
        return
    ctx.published = True
    end_ns = time.perf_counter_ns()
    if ctx.stream is not None:
        _stretch_dispatch(ctx, end_ns)
    try:
        if needs_estimate(ctx.answer):
            deps.background.spawn(_publish_estimated(ctx, deps, end_ns))
            return
        _send(ctx, deps, end_ns, _settle(ctx, deps))
    except Exception:  # the response is gone: log, count, carry on
        deps.counters.inc("record_build")
        log.exception("could not build the record of request %s", ctx.request_id)


async def _publish_estimated(ctx: RequestContext, deps: PublishDeps, end_ns: int) -> None:
    try:
        settled = await asyncio.to_thread(_settle, ctx, deps)
        _send(ctx, deps, end_ns, settled)
    except Exception:  # a task of its own: nothing above it would log this
        deps.counters.inc("record_build")
        log.exception("could not build the record of request %s", ctx.request_id)


def _settle(ctx: RequestContext, deps: PublishDeps) -> Settled:
    return settle_usage(
        ctx.answer,
        ctx.chat,
        deps.generation.upstreams.prices,
        provider=ctx.provider_name,
        model=ctx.model_priced,
        from_cache=ctx.cache.hit is not None,
    )


def _send(ctx: RequestContext, deps: PublishDeps, end_ns: int, settled: Settled) -> None:
    record, spans = build_records(ctx, end_ns, deps.record_body_max_bytes, settled)
    observe_request(record, ctx.timings)
    submit = deps.publisher.submit
    submit(Sink.REQUESTS, encode_record(record), ctx.request_id)
    record_usage(ctx, record, deps.usage)
    if spans.spans:
        submit(Sink.SPANS, encode_spans(spans), ctx.request_id)
    try:
        store_after(ctx, deps.cache, settled)
    except Exception:  # a cache write is best effort: the next identical request is a miss
        deps.cache.write_failures.inc("schedule")
        log.exception("could not schedule the cache write of request %s", ctx.request_id)


def _stretch_dispatch(ctx: RequestContext, end_ns: int) -> None:
    """A stream's dispatch span lasts until its last chunk, not just until the status line."""
    for timing in ctx.timings:
        if timing.name == "dispatch":
            timing.duration_ms = ctx.elapsed_ms(end_ns) - timing.start_offset_ms
