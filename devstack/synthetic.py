"""Realistic synthetic request records: known-answer datasets for tests and the 10M loader.

Deterministic: the same seed gives the same records, so a test can compute the expected answer
of any query from the generated list in Python and compare it with what ClickHouse returns.

The loader (``python -m devstack.synthetic --records 10000000``) inserts straight into ClickHouse
in large columnar batches with the ingester's own column builder and insert statement, so the
rows are exactly what the pipeline would write; run ``floopy-ingester rollups rebuild`` (or
``--rollups`` here) afterwards so the metrics endpoints have rollups to read.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated

import typer

from ingester.columns import build_columns
from ingester.rollups import Rollups
from ingester.schema.migrate import migrate
from ingester.sink import ClickHouseSink
from shared.records import RequestRecord, SpanRecord
from shared.settings import ClickHouseSettings
from shared.streams import Sink

__all__ = ["DatasetShape", "generate", "load", "main", "spans_for"]

_MODELS: tuple[tuple[str, str, float, float], ...] = (
    # model, provider, USD per 1k prompt tokens, per 1k completion tokens
    ("gpt-4o-mini", "openai", 0.00015, 0.0006),
    ("gpt-4o", "openai", 0.0025, 0.01),
    ("claude-3-5-sonnet", "anthropic", 0.003, 0.015),
    ("claude-3-5-haiku", "anthropic", 0.0008, 0.004),
    ("llama-3.1-70b", "groq", 0.00059, 0.00079),
)
_FEATURES = ("chat", "search", "summarize", "classify", "translate")
_ENVS = ("prod", "staging")
_TOPICS = (
    "refund policy",
    "reset my password",
    "invoice for march",
    "shipping to berlin",
    "cancel subscription",
    "upgrade plan",
    "api rate limits",
    "export my data",
)
_STAGES = ("auth", "rate_limit", "cache", "firewall", "routing", "provider")


@dataclass(frozen=True)
class DatasetShape:
    """Cardinalities and the time window of a dataset."""

    orgs: tuple[str, ...] = ("org-acme", "org-globex")
    users: int = 50
    sessions: int = 200
    start_ms: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    span_s: int = 7 * 86400
    body_words: int = 24


def _outcome(rng: random.Random) -> tuple[int, str, str]:
    """(status, error code, error message) with a realistic mix of failures."""
    roll = rng.random()
    if roll < 0.90:
        return 200, "", ""
    if roll < 0.94:
        return 429, "RATE_LIMIT_EXCEEDED", "too many requests"
    if roll < 0.97:
        return 502, "PROVIDER_ERROR", "upstream returned 500"
    if roll < 0.985:
        return 504, "GATEWAY_TIMEOUT", "provider did not answer in 120s"
    return 400, "PROMPT_THREAT_DETECTED", "prompt blocked by the firewall"


def _bodies(rng: random.Random, model: str, words: int, status: int) -> tuple[str, str, str]:
    topic = rng.choice(_TOPICS)
    filler = " ".join(
        rng.choice(("please", "help", "with", "my", "account", "order", "today"))
        for _ in range(words)
    )
    request = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": f"{topic}: {filler}"}]}
    )
    if status != 200:
        return request, "", topic
    answer = f"Here is what I found about {topic}. " + filler
    response = json.dumps(
        {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]}
    )
    return request, response, topic


def _record(rng: random.Random, shape: DatasetShape, i: int, n: int) -> RequestRecord:
    org = shape.orgs[i % len(shape.orgs)]
    model, provider, p_in, p_out = _MODELS[min(int(rng.expovariate(0.9)), len(_MODELS) - 1)]
    status, error_code, error_message = _outcome(rng)
    stream = rng.random() < 0.3
    cache_roll = rng.random()
    cache_status, cache_tier = ("miss", "")
    if status == 200 and cache_roll < 0.2:
        cache_status, cache_tier = "hit", rng.choice(("exact", "exact", "semantic"))
    elif cache_roll > 0.95:
        cache_status = "bypass"
    prompt = rng.randint(20, 2000)
    completion = rng.randint(5, 800) if status == 200 and cache_status != "hit" else 0
    provider_ms = 0.0 if cache_status == "hit" else rng.lognormvariate(6.2, 0.6)
    stages = {
        "auth": round(rng.uniform(0.05, 0.4), 3),
        "rate_limit": round(rng.uniform(0.1, 0.8), 3),
        "cache": round(rng.uniform(0.2, 3.0), 3),
        "firewall": round(rng.uniform(1.0, 25.0), 3),
        "routing": round(rng.uniform(0.02, 0.2), 3),
        "provider": round(provider_ms, 3),
    }
    latency = round(sum(stages.values()) + rng.uniform(0.2, 2.0), 3)
    user = rng.randrange(shape.users)
    session = rng.randrange(shape.sessions)
    request_body, response_body, _ = _bodies(rng, model, shape.body_words, status)
    topic = _TOPICS[session % len(_TOPICS)]  # one name and path per session, as apps send them
    cost = round(prompt / 1000 * p_in + completion / 1000 * p_out, 8)
    return RequestRecord(
        request_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        org_id=org,
        api_key_id=f"key-{org}-{rng.randrange(3)}",
        created_at_ms=shape.start_ms + i * shape.span_s * 1000 // max(n, 1),
        stream=stream,
        model_requested=model,
        model_used=model if status == 200 else "",
        provider=provider if status != 400 else "",
        status_code=status,
        error_code=error_code,
        error_message=error_message,
        request_body=request_body,
        response_body=response_body,
        latency_ms=latency,
        time_to_first_token_ms=round(latency * 0.3, 3) if stream and status == 200 else 0.0,
        stage_latency_ms=stages,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cost_usd=0.0 if cache_status == "hit" else None if status == 400 else cost,
        cost_saved_usd=cost if cache_status == "hit" else None,
        cache_status=cache_status,
        cache_tier=cache_tier,
        firewall_verdict="block" if status == 400 else rng.choice(("pass", "pass", "flag")),
        firewall_score=round(rng.random(), 3),
        firewall_backend="onnx",
        firewall_model_ref="prompt-guard-86m",
        user_id=f"user-{user:04d}" if user % 10 else "",
        session_id=f"sess-{org}-{session:05d}",
        session_name=f"{topic} ({session})",
        session_path=f"/support/{topic.replace(' ', '-')}",
        properties={"feature": _FEATURES[user % len(_FEATURES)], "env": _ENVS[session % 2]},
        providers_tried=[provider] if status != 502 else [provider, "fallback"],
        retries=1 if status == 502 else 0,
    )


def generate(n: int, shape: DatasetShape | None = None, seed: int = 7) -> Iterator[RequestRecord]:
    """``n`` records spread evenly over the shape's window, oldest first."""
    shape = shape or DatasetShape()
    rng = random.Random(seed)
    for i in range(n):
        yield _record(rng, shape, i, n)


def spans_for(record: RequestRecord) -> list[SpanRecord]:
    """One span per stage, laid end to end in pipeline order."""
    spans, offset = [], 0.0
    for name in _STAGES:
        duration = record.stage_latency_ms.get(name, 0.0)
        spans.append(
            SpanRecord(
                span_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{record.request_id}/{name}")),
                request_id=record.request_id,
                org_id=record.org_id,
                name=name,
                created_at_ms=record.created_at_ms,
                start_offset_ms=round(offset, 3),
                duration_ms=duration,
                status="ok" if name != "provider" or record.status_code < 500 else "error",
            )
        )
        offset += duration
    return spans


def load(
    clickhouse: ClickHouseSettings,
    records: int,
    *,
    batch: int = 50_000,
    shape: DatasetShape | None = None,
    seed: int = 7,
    with_spans: bool = False,
    progress: bool = True,
) -> int:
    """Insert ``records`` synthetic records into the requests table (and their spans)."""
    migrate(clickhouse)
    sink = ClickHouseSink(clickhouse)
    started, done = time.monotonic(), 0
    chunk: list[RequestRecord] = []
    try:
        for record in generate(records, shape, seed):
            chunk.append(record)
            if len(chunk) < batch:
                continue
            done += _insert(sink, chunk, with_spans)
            chunk = []
            if progress:
                rate = done / (time.monotonic() - started)
                typer.echo(f"{done:>11,} records  {rate:,.0f}/s")
        if chunk:
            done += _insert(sink, chunk, with_spans)
    finally:
        sink.close()
    return done


def _insert(sink: ClickHouseSink, chunk: Sequence[RequestRecord], with_spans: bool) -> int:
    sink.insert(Sink.REQUESTS, build_columns(Sink.REQUESTS, chunk))
    if with_spans:
        spans = [s for r in chunk for s in spans_for(r)]
        sink.insert(Sink.SPANS, build_columns(Sink.SPANS, spans))
    return len(chunk)


def main(
    *,
    records: Annotated[int, typer.Option(help="how many request records")] = 100_000,
    host: str = "127.0.0.1",
    port: int = 9000,
    database: str = "floopy",
    days: Annotated[int, typer.Option(help="spread over this many days")] = 30,
    end_now: Annotated[bool, typer.Option(help="window ends now (else 2026-01-01+days)")] = True,
    orgs: Annotated[int, typer.Option(help="number of orgs")] = 4,
    users: int = 2000,
    sessions: int = 200_000,
    batch: int = 100_000,
    spans: Annotated[bool, typer.Option(help="also insert one span per stage")] = False,
    rollups: Annotated[bool, typer.Option(help="rebuild rollups afterwards")] = True,
    seed: int = 7,
) -> None:
    settings = ClickHouseSettings(
        host=host, port=port, database=database, send_receive_timeout_s=600
    )
    span_s = days * 86400
    start_ms = (int(time.time()) - span_s) * 1000 if end_now else DatasetShape().start_ms
    shape = DatasetShape(
        orgs=tuple(f"org-{i:02d}" for i in range(orgs)),
        users=users,
        sessions=sessions,
        start_ms=start_ms,
        span_s=span_s,
        body_words=12,
    )
    t0 = time.monotonic()
    n = load(settings, records, batch=batch, shape=shape, seed=seed, with_spans=spans)
    typer.echo(f"loaded {n:,} records in {time.monotonic() - t0:.0f}s")
    if rollups:
        t1 = time.monotonic()
        r = Rollups(settings, default_retention_days=days + 2)
        try:
            r.ensure_tables()
            report = r.rebuild(start_ms // 1000, start_ms // 1000 + span_s + 3600)
        finally:
            r.close()
        typer.echo(f"rollups: {report.hours:,} org-hours in {time.monotonic() - t1:.0f}s")


if __name__ == "__main__":
    typer.run(main)
