"""Ingest benchmark: how many records/s one process moves into ClickHouse.

Starts its own ClickHouse (Debian's package, in a temp dir, on a free port), generates realistic
2-4 KB RequestRecords, and times ``Delivery.deliver`` (decode + columns + insert) per batch size.
Bounded by ``--records`` and ``--max-seconds``. Prints one ``RESULT`` line per path and batch
size, with the CPU time per record of the process that ingests and of ClickHouse: on a machine
shared with other work, CPU per record compares paths where records/s alone does not.

    python -m bench.ingest --records 50000

Structure: ``generate_payloads`` makes the bytes a gateway would XADD, and each path to measure
is a function ``(env, payloads, batch_size, deadline) -> Measurement``. The three ``spans-*``
paths move the spans of as many requests (ten each) through the stream worker: one stream entry
per span record, one array of span records per request (what older gateways sent), and one
``RequestSpans`` entry per request (``shared.codec.encode_spans``: the ingester makes the
records); their figures are per span.
"""

from __future__ import annotations

import argparse
import os
import random
import string
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from itertools import count, product
from pathlib import Path
from typing import Any

import msgspec

from bench.cpus import MEASURED_CPUS, SERVER_CPUS, pin
from devstack.servers import ClickHouseServer
from ingester.decode import tune_gc_for_batches
from ingester.delivery import Delivery
from ingester.schema.migrate import migrate
from shared.codec import encode_record, encode_spans
from shared.records import RequestRecord, RequestSpans, StageTiming, span_records
from shared.settings import ClickHouseSettings
from shared.streams import Sink

__all__ = [
    "BenchEnv",
    "Measurement",
    "cpu_seconds",
    "generate_payloads",
    "main",
    "measure_delivery",
    "wait_for_merges",
]

_WORDS = [
    "".join(random.Random(i).choices(string.ascii_lowercase, k=1 + i % 9)) for i in range(500)
]
_MODELS = ["gpt-4o-mini", "gpt-4o", "claude-3-5-sonnet", "llama-3.1-70b"]
_STAGES = ["auth", "rate_limit", "template", "cache", "firewall", "routing", "provider"]


def _text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n_words))


def make_record(rng: random.Random, now_ms: int) -> RequestRecord:
    """One request record of 2-4 KB once encoded: chat bodies dominate, like real traffic."""
    model = rng.choice(_MODELS)
    user = _text(rng, rng.randint(80, 260))
    answer = _text(rng, rng.randint(30, 150))
    request_body = (
        f'{{"model":"{model}","messages":[{{"role":"system","content":"You are helpful."}},'
        f'{{"role":"user","content":"{user}"}}],"temperature":0.2}}'
    )
    response_body = (
        f'{{"id":"chatcmpl-{uuid.UUID(int=rng.getrandbits(128)).hex}","object":"chat.completion",'
        f'"choices":[{{"index":0,"message":{{"role":"assistant","content":"{answer}"}},'
        f'"finish_reason":"stop"}}]}}'
    )
    return RequestRecord(
        request_id=str(uuid.UUID(int=rng.getrandbits(128))),
        org_id=f"org_{rng.randint(1, 20)}",
        api_key_id=f"key_{rng.randint(1, 200)}",
        created_at_ms=now_ms - rng.randint(0, 3_600_000),
        model_requested=model,
        model_used=model,
        provider="openai",
        status_code=200,
        request_body=request_body,
        response_body=response_body,
        latency_ms=rng.uniform(100, 3000),
        stage_latency_ms={s: rng.uniform(0.01, 5) for s in _STAGES},
        prompt_tokens=rng.randint(50, 900),
        completion_tokens=rng.randint(10, 400),
        total_tokens=1000,
        cost_usd=rng.uniform(0, 0.01),
        cache_status=rng.choice(["hit", "miss", "bypass"]),
        firewall_verdict="pass",
        firewall_score=rng.random(),
        user_id=f"user_{rng.randint(1, 5000)}",
        session_id=str(uuid.UUID(int=rng.getrandbits(128))),
        properties={f"prop{i}": _text(rng, 2) for i in range(rng.randint(1, 5))},
        providers_tried=["openai"],
    )


def generate_payloads(count: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    now_ms = int(time.time() * 1000)
    return [encode_record(make_record(rng, now_ms)) for _ in range(count)]


@dataclass(frozen=True)
class BenchEnv:
    clickhouse: ClickHouseSettings
    scratch: Path
    server_pid: int = 0
    http_port: int = 0
    pinned: bool = False
    null_table: bool = False
    """The sink's table on ClickHouse's Null engine (``storing_nothing``)."""


@dataclass(frozen=True)
class Measurement:
    path: str
    batch_size: int
    records: int
    seconds: float
    client_cpu_s: float = 0.0  # the ingesting process (all its threads)
    server_cpu_s: float = 0.0  # clickhouse-server, merges included
    rows_hash: str = ""  # rows_hash() of what the path stored
    peak_rss_mib: float = 0.0  # the worker process's (stream path only)

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    def us_per_record(self, cpu_s: float) -> float:
        return cpu_s / self.records * 1e6 if self.records else 0.0

    @property
    def server_us_per_record(self) -> float:
        return self.us_per_record(self.server_cpu_s)


PIN_HELP = "ClickHouse and Redis on CPU 1, the ingesting process (and its threads) on CPU 0"


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (all threads), from ``/proc``; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def bench_env(*, pinned: bool = False) -> Iterator[BenchEnv]:
    """``pinned``: ClickHouse on ``SERVER_CPUS``, this process on ``MEASURED_CPUS``."""
    with tempfile.TemporaryDirectory(prefix="floopy-bench-") as tmp:
        server = ClickHouseServer(Path(tmp) / "clickhouse")
        server.start()
        try:
            settings = ClickHouseSettings(port=server.port, database="bench")
            migrate(settings)
            pid = server.process.pid if server.process else 0
            if pinned:
                pin(pid, SERVER_CPUS)
                pin(os.getpid(), MEASURED_CPUS)
            yield BenchEnv(settings, Path(tmp), pid, server.http_port, pinned)
        finally:
            server.kill()


def _batches(payloads: list[bytes], batch_size: int, deadline: float) -> Iterator[list[bytes]]:
    """``payloads`` in slices of ``batch_size``; none after ``deadline`` (time.monotonic)."""
    for i in range(0, len(payloads), batch_size):
        yield payloads[i : i + batch_size]
        if time.monotonic() > deadline:
            return


def measure_delivery(
    env: BenchEnv, payloads: list[bytes], batch_size: int, deadline: float
) -> Measurement:
    """Delivery.deliver over ``payloads`` in batches; stops early at ``deadline``."""
    delivery = Delivery(env.clickhouse, env.scratch / "dead")

    def insert(batch: list[bytes]) -> int:
        report = delivery.deliver(Sink.REQUESTS, batch)
        if report.dead_lettered:
            raise RuntimeError(f"bench records were dead-lettered: {report}")
        return report.inserted

    try:
        return _timed("delivery", insert, payloads, batch_size, deadline)
    finally:
        delivery.close()


def _timed(
    path: str,
    insert: Callable[[list[bytes]], int],
    payloads: list[bytes],
    batch_size: int,
    deadline: float,
) -> Measurement:
    done = 0
    started = time.perf_counter()
    for batch in _batches(payloads, batch_size, deadline):
        done += insert(batch)
    return Measurement(path, batch_size, done, time.perf_counter() - started)


def measure_delivery_threads(
    env: BenchEnv, payloads: list[bytes], batch_size: int, deadline: float
) -> Measurement:
    """Two Deliveries in two threads, batches dealt alternately: the overlap an ingester gets
    when it decodes the next batch while ClickHouse writes the previous one (the driver
    releases the GIL while it waits for the server)."""
    batches = [payloads[i : i + batch_size] for i in range(0, len(payloads), batch_size)]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        halves = [batches[0::2], batches[1::2]]
        done = sum(pool.map(lambda bs: _deliver_all(env, bs, deadline), halves))
    return Measurement("delivery-2-threads", batch_size, done, time.perf_counter() - started)


def _deliver_all(env: BenchEnv, batches: list[list[bytes]], deadline: float) -> int:
    delivery = Delivery(env.clickhouse, env.scratch / "dead")
    done = 0
    try:
        for batch in batches:
            done += delivery.deliver(Sink.REQUESTS, batch).inserted
            if time.monotonic() > deadline:
                break
    finally:
        delivery.close()
    return done


def measure_stream(
    env: BenchEnv, payloads: list[bytes], batch_size: int, deadline: float
) -> Measurement:
    """The whole ingest path: the payloads preloaded into a real Redis stream, then one
    ``floopy-ingester worker`` process (the real consumer) until ClickHouse holds them all.
    Counts the records after the first batch, timed from that batch's arrival."""
    return _stream_worker(
        env, "stream-worker", Sink.REQUESTS, payloads, len(payloads), batch_size, deadline
    )


_RUN_TAG = uuid.uuid4().hex[:12]
_SPAN_NAMES = (
    "auth",
    "intake",
    "rate_limit",
    "template",
    "cache",
    "cache.exact",
    "firewall",
    "routing",
    "dispatch",
    "provider_attempt",
)


def _request_spans(n_requests: int) -> list[RequestSpans]:
    """Ten spans per request, as a chat request's are (the stages, a child span, an attempt)."""
    now_ms = int(time.time() * 1000)
    return [
        RequestSpans(
            request_id=f"{i:08d}-0000-4000-8000-{_RUN_TAG}",
            org_id="org-bench",
            created_at_ms=now_ms + i,
            spans=[
                StageTiming(
                    name,
                    0.1 * j,
                    0.05 + 0.01 * j,
                    attributes={"attempt": "1", "provider": "openai"} if j == 9 else {},
                )
                for j, name in enumerate(_SPAN_NAMES)
            ],
        )
        for i in range(n_requests)
    ]


def measure_spans_per_span(
    env: BenchEnv, payloads: list[bytes], batch_size: int, deadline: float
) -> Measurement:
    """The stream path for the spans of ``len(payloads)`` requests, one stream entry per span
    record (as the oldest gateways sent them); figures per span."""
    records = [span for entry in _request_spans(len(payloads)) for span in span_records(entry)]
    entries = [encode_record(span) for span in records]
    path = "spans-one-per-entry"
    return _stream_worker(env, path, Sink.SPANS, entries, len(entries), batch_size, deadline)


def measure_spans_array_per_request(
    env: BenchEnv, payloads: list[bytes], batch_size: int, deadline: float
) -> Measurement:
    """The same spans, one stream entry per request holding its span records (a JSON array, as
    the previous gateways sent them); figures per span."""
    arrays = [span_records(entry) for entry in _request_spans(len(payloads))]
    entries = [msgspec.json.encode(records) for records in arrays]
    rows = sum(map(len, arrays))
    path = "spans-array-per-request"
    return _stream_worker(env, path, Sink.SPANS, entries, rows, batch_size, deadline)


def measure_spans_per_request(
    env: BenchEnv, payloads: list[bytes], batch_size: int, deadline: float
) -> Measurement:
    """The same spans as the gateway sends them now: one ``RequestSpans`` entry per request,
    the ingester making the span records (their ids too); figures per span."""
    requests = _request_spans(len(payloads))
    entries = [encode_spans(entry) for entry in requests]
    rows = sum(len(entry.spans) for entry in requests)
    path = "spans-per-request"
    return _stream_worker(env, path, Sink.SPANS, entries, rows, batch_size, deadline)


def _stream_worker(  # noqa: PLR0917 - the measure_* functions above are its callers
    env: BenchEnv,
    path: str,
    sink: Sink,
    entries: list[bytes],
    rows: int,
    batch_size: int,
    deadline: float,
) -> Measurement:
    """``entries`` preloaded into ``sink``'s stream, then one ``floopy-ingester worker``
    process until ClickHouse holds ``rows`` rows of the sink's table; timed from the worker's
    first read, with the worker process's CPU over that time."""
    import os
    import signal
    import subprocess

    import redis
    from clickhouse_driver import Client

    from devstack.servers import RedisServer
    from shared.streams import RECORD_FIELD, stream_key
    from shared.tables import RAW_TABLES

    database = env.clickhouse.database
    server = RedisServer(env.scratch / f"redis-{database}")
    server.start()
    if env.pinned and server.process:
        pin(server.process.pid, SERVER_CPUS)
    prefix = f"bench{batch_size}"
    r = redis.Redis.from_url(server.url)
    for i in range(0, len(entries), 2000):
        pipe = r.pipeline(transaction=False)
        for entry in entries[i : i + 2000]:
            pipe.xadd(stream_key(sink, prefix), {RECORD_FIELD: entry})
        pipe.execute()
    env_vars = {
        **os.environ,
        "FLOOPY_INGESTER_REDIS__URL": server.url,
        "FLOOPY_INGESTER_REDIS__KEY_PREFIX": prefix,
        "FLOOPY_INGESTER_CLICKHOUSE__PORT": str(env.clickhouse.port),
        "FLOOPY_INGESTER_CLICKHOUSE__DATABASE": database,
        "FLOOPY_INGESTER_CLICKHOUSE__BULK_WRITER": str(env.clickhouse.bulk_writer).lower(),
        "FLOOPY_INGESTER_SPOOL_DIR": str(env.scratch / "spool"),
        "FLOOPY_INGESTER_DEAD_LETTER_DIR": str(env.scratch / "dead"),
        "FLOOPY_INGESTER_BATCH_RECORDS": str(batch_size),
        "FLOOPY_INGESTER_LOG_LEVEL": "WARNING",
    }
    client = Client(host="127.0.0.1", port=env.clickhouse.port, database=database)
    worker_bin = str(Path(sys.executable).parent / "floopy-ingester")
    proc = subprocess.Popen([worker_bin, "worker"], env=env_vars, start_new_session=True)
    if env.pinned:
        pin(proc.pid, MEASURED_CPUS)
    done = peak_kib = 0
    started = time.perf_counter()
    worker_cpu = 0.0
    key = stream_key(sink, prefix)
    try:
        # timed from the worker's first read (the group's first delivered entry) to the last
        # row, so its start-up is not counted and every record is
        while not _read_started(r, key) and time.monotonic() < deadline:
            time.sleep(0.005)
        started, worker_cpu = time.perf_counter(), -cpu_seconds(proc.pid)
        while done < rows and time.monotonic() < deadline:
            time.sleep(0.02)
            if env.null_table:  # nothing to count in ClickHouse: every entry acked is done
                done = rows if _all_acked(r, key) else 0
            else:
                done = int(client.execute(f"SELECT count() FROM {RAW_TABLES[sink]}")[0][0])
        seconds = time.perf_counter() - started
        worker_cpu += cpu_seconds(proc.pid)
        peak_kib = _peak_rss_kib(proc.pid)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        client.disconnect()
        r.close()
        server.kill()
    return Measurement(
        path, batch_size, done, seconds, client_cpu_s=worker_cpu, peak_rss_mib=peak_kib / 1024
    )


def _peak_rss_kib(pid: int) -> int:
    """``VmHWM`` of a process, in KiB; 0 if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    peaks = [int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")]
    return peaks[0] if peaks else 0


def _read_started(r: Any, key: str) -> bool:
    """The consumer group exists and has delivered an entry to a consumer."""
    groups = r.xinfo_groups(key)
    return bool(groups) and groups[0]["last-delivered-id"] not in (b"0-0", "0-0")


def _all_acked(r: Any, key: str) -> bool:
    """Every entry of the stream was delivered to the group and acknowledged (Redis 7)."""
    groups = r.xinfo_groups(key)
    return bool(groups) and groups[0]["lag"] == 0 and groups[0]["pending"] == 0


def measure_json_http(
    env: BenchEnv, payloads: list[bytes], batch_size: int, deadline: float
) -> Measurement:
    """The rejected alternative (``bench.json_insert``): decode into raw-string rows, encode
    JSONEachRow, POST it to the HTTP port and let the server parse it."""
    from bench.json_insert import JsonEachRowInserter

    inserter = JsonEachRowInserter("127.0.0.1", env.http_port, env.clickhouse.database)
    try:
        return _timed("json-http", inserter.insert, payloads, batch_size, deadline)
    finally:
        inserter.close()


def measure_phases(
    env: BenchEnv, payloads: list[bytes], batch_size: int, deadline: float
) -> Measurement:
    """``Delivery``'s two steps timed apart (CPU of this thread, per record): ``prepare``
    (msgspec decode, building the columns) and the driver's insert (serialisation and socket
    writes; waiting on the server is not CPU). Prints a ``PHASES`` line."""
    from ingester.decode import prepare
    from ingester.sink import ClickHouseSink

    sink = ClickHouseSink(env.clickhouse)
    spent = {"prepare": 0.0, "insert": 0.0}
    done = 0
    started = time.perf_counter()
    try:
        for batch in _batches(payloads, batch_size, deadline):
            t0 = time.thread_time()
            prepared = prepare(Sink.REQUESTS, batch)
            t1 = time.thread_time()
            done += sink.insert(Sink.REQUESTS, prepared.columns)
            spent["prepare"] += t1 - t0
            spent["insert"] += time.thread_time() - t1
    finally:
        sink.close()
    per = " ".join(f"{k}_us_per_record={v / max(done, 1) * 1e6:.1f}" for k, v in spent.items())
    print(f"PHASES batch={batch_size} records={done} {per}", flush=True)
    return Measurement("phases", batch_size, done, time.perf_counter() - started)


PATHS: dict[str, Callable[[BenchEnv, list[bytes], int, float], Measurement]] = {
    "delivery": measure_delivery,
    "delivery-2-threads": measure_delivery_threads,
    "stream-worker": measure_stream,
    "spans-one-per-entry": measure_spans_per_span,
    "spans-array-per-request": measure_spans_array_per_request,
    "spans-per-request": measure_spans_per_request,
    "json-http": measure_json_http,
    "phases": measure_phases,
}


_RUNS = count()


def wait_for_merges(
    settings: ClickHouseSettings,
    timeout_s: float = 60.0,
    *,
    table: str | None = None,
    quiet_s: float = 0.0,
) -> None:
    """Wait until no background merge runs (bounded), so each path is billed for its own.
    With ``table`` and ``quiet_s``: until none runs and the table's active parts stayed the same
    for ``quiet_s`` (an idle merge scheduler took ≈9 s to pick a merge after ``START
    MERGES``)."""
    from clickhouse_driver import Client

    client = Client(host=settings.host, port=settings.port)
    query = (
        "SELECT (SELECT count() FROM system.merges), (SELECT count() FROM system.parts "
        "WHERE active AND database = %(db)s AND table = %(table)s)"
    )
    deadline = time.monotonic() + timeout_s
    last, since = None, time.monotonic()
    try:
        while time.monotonic() < deadline:
            ((running, parts),) = client.execute(
                query, {"db": settings.database, "table": table or ""}
            )
            if running or parts != last:
                last, since = parts, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return
            time.sleep(0.2)
    finally:
        client.disconnect()


def storing_nothing(settings: ClickHouseSettings, table: str) -> None:
    """``table`` replaced by one of the same columns on the Null engine: ClickHouse reads and
    parses every block and stores nothing (no part, no merge), so a run measures the
    ingesting process when ClickHouse keeps up."""
    from clickhouse_driver import Client

    client = Client(host=settings.host, port=settings.port, database=settings.database)
    try:
        client.execute(f"CREATE TABLE `{table}_null` AS `{table}` ENGINE = Null")
        client.execute(f"DROP TABLE `{table}`")
        client.execute(f"RENAME TABLE `{table}_null` TO `{table}`")
    finally:
        client.disconnect()


def set_merges(settings: ClickHouseSettings, table: str, *, running: bool) -> None:
    """Stop or start ``table``'s background merges (``SYSTEM STOP/START MERGES``)."""
    from clickhouse_driver import Client

    client = Client(host=settings.host, port=settings.port, database=settings.database)
    try:
        client.execute(f"SYSTEM {'START' if running else 'STOP'} MERGES `{table}`")
    finally:
        client.disconnect()


NULL_TABLE_HELP = (
    "the table on ClickHouse's Null engine: the server reads and parses every block and "
    "stores nothing, so the figure is what the ingesting process does when ClickHouse keeps up"
)


def _run_path(
    env: BenchEnv, path: str, payloads: list[bytes], batch_size: int, deadline: float
) -> Measurement:
    """One path into a fresh database, with the CPU it cost here and in ClickHouse (the
    stream path reports its worker process's CPU itself)."""
    database = f"bench_{path}_{batch_size}_{next(_RUNS)}".replace("-", "_")
    env = replace(env, clickhouse=env.clickhouse.model_copy(update={"database": database}))
    migrate(env.clickhouse)
    if env.null_table:
        from shared.tables import RAW_TABLES

        for sink in (Sink.REQUESTS, Sink.SPANS):
            storing_nothing(env.clickhouse, RAW_TABLES[sink])
    wait_for_merges(env.clickhouse)
    client_before, server_before = cpu_seconds(os.getpid()), cpu_seconds(env.server_pid)
    m = PATHS[path](env, payloads, batch_size, deadline)
    client = m.client_cpu_s or cpu_seconds(os.getpid()) - client_before
    wait_for_merges(env.clickhouse)  # the merges its parts caused are part of its cost
    server = cpu_seconds(env.server_pid) - server_before
    stored = "-" if env.null_table else rows_hash(env.clickhouse)
    return replace(m, client_cpu_s=client, server_cpu_s=server, rows_hash=stored)


def rows_hash(settings: ClickHouseSettings) -> str:
    """A digest of every value of every row in ``requests`` (order-independent): paths and
    writers that stored the same records print the same digest."""
    from clickhouse_driver import Client

    from ingester.schema.ddl import TABLES, insert_columns

    types = {c.name: c.type for c in TABLES[Sink.REQUESTS].columns}
    columns = ", ".join(
        f"isNull(`{name}`), assumeNotNull(`{name}`)"
        if types[name].startswith("Nullable")
        else f"`{name}`"
        for name in insert_columns(Sink.REQUESTS)
    )
    client = Client(host=settings.host, port=settings.port)
    try:
        rows = client.execute(
            f"SELECT count(), groupBitXor(cityHash64({columns})) "
            f"FROM {settings.database}.requests FINAL"
        )
    finally:
        client.disconnect()
    return f"{rows[0][0]}:{rows[0][1]:016x}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--batch-sizes", default="1000,5000")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="per batch size")
    parser.add_argument(
        "--paths", default=",".join(PATHS), help=f"comma-separated, of: {', '.join(PATHS)}"
    )
    parser.add_argument(
        "--writers",
        default="bulk",
        help="comma-separated, of: bulk (ingester.native), driver (clickhouse-driver's own "
        "column writer, as before); each path and batch size runs once per writer",
    )
    parser.add_argument(
        "--gc-walks-batches",
        action="store_true",
        help="the collector as before batches were frozen out of it (to measure the change)",
    )
    parser.add_argument("--null-table", action="store_true", help=NULL_TABLE_HELP)
    parser.add_argument("--pin", action="store_true", help=PIN_HELP)
    args = parser.parse_args(argv)
    tune_gc_for_batches(freeze_batches=not args.gc_walks_batches)  # as the worker does

    payloads = generate_payloads(args.records)
    sizes = sorted(map(len, payloads))
    mean_size = sum(sizes) / len(sizes)
    print(
        f"generated {len(sizes)} records: mean {mean_size:.0f} bytes, "
        f"min {sizes[0]}, max {sizes[-1]}",
        flush=True,
    )
    with bench_env(pinned=args.pin) as env:
        runs = product(args.paths.split(","), args.batch_sizes.split(","), args.writers.split(","))
        for path, batch_size, writer in runs:
            deadline = time.monotonic() + args.max_seconds
            bulk = {"bulk": True, "driver": False}[writer]
            ch = env.clickhouse.model_copy(update={"bulk_writer": bulk})
            run_env = replace(env, clickhouse=ch, null_table=args.null_table)
            m = _run_path(run_env, path, payloads, int(batch_size), deadline)
            print(
                f"RESULT path={m.path} batch={m.batch_size} writer={writer} "
                f"table={'null' if args.null_table else 'stored'} "
                f"gc={'walks-batches' if args.gc_walks_batches else 'frozen-batches'} "
                f"records={m.records} "
                f"seconds={m.seconds:.2f} records_per_s={m.records_per_s:.0f} "
                f"client_cpu_us_per_record={m.us_per_record(m.client_cpu_s):.1f} "
                f"clickhouse_cpu_us_per_record={m.server_us_per_record:.1f} "
                f"record_bytes={mean_size:.0f} rows_hash={m.rows_hash}"
                + (f" worker_peak_rss_mib={m.peak_rss_mib:.0f}" if m.peak_rss_mib else ""),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
