"""Issue 9, items 5 and 8: the replay against what runs beside it. A writer that creates a new
``.jsonl`` between the seal and the replay's listing; rotation drops through a live worker
(not the writer alone); CLI replays racing each other and the worker's own replay. Records are
counted in and out, raw rows per request id (no FINAL), so a record sent twice is seen."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from clickhouse_driver import Client

from devstack.servers import ClickHouseServer, RedisServer
from ingester.decode import PreparedBatch
from ingester.delivery import Delivery, DeliveryReport
from ingester.lock import lock_path
from ingester.replay import Replayer, ReplayStatus, pending_files
from ingester.schema import migrate
from shared.codec import encode_record
from shared.records import RequestRecord
from shared.settings import ClickHouseSettings
from shared.spool.reader import count_lines
from shared.spool.writer import SpoolWriter, read_dropped, seal
from shared.streams import CONSUMER_GROUP, RECORD_FIELD, Sink, stream_key

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SINK = Sink.REQUESTS
BIN = Path(sys.executable).parent


def payloads(n: int, body: int = 200) -> list[bytes]:
    now = int(time.time() * 1000)
    return [
        encode_record(
            RequestRecord(
                request_id=str(uuid.uuid4()),
                org_id="o",
                api_key_id="k",
                created_at_ms=now,
                request_body="q" * body,
            )
        )
        for _ in range(n)
    ]


def raw_rows(ch: ClickHouseSettings) -> tuple[int, int]:
    """(raw rows without FINAL, distinct request ids)."""
    client = Client(host="127.0.0.1", port=ch.port, connect_timeout=2)
    try:
        sql = f"SELECT count(), uniqExact(request_id) FROM {ch.database}.requests"
        ((rows, ids),) = client.execute(sql)
        return int(rows), int(ids)
    finally:
        client.disconnect()


def wait_for(check: Callable[[], bool], what: str, logs: list[Path], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            text = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs)
            raise AssertionError(f"{what}: not reached in {timeout_s}s\n{text}")
        time.sleep(0.1)


@pytest.fixture
def database(clickhouse_server: ClickHouseServer) -> Iterator[ClickHouseSettings]:
    ch = ClickHouseSettings(port=clickhouse_server.port, database=f"t_{uuid.uuid4().hex[:10]}")
    migrate(ch)
    yield ch
    client = Client(host="127.0.0.1", port=ch.port)
    client.execute(f"DROP DATABASE IF EXISTS {ch.database}")
    client.disconnect()


class _AppendsWhileReplaying(Delivery):
    """After the ``nth`` confirmed batch, a writer appends ``later`` to the current spool file:
    what a live consumer does while ClickHouse is flapping."""

    def __init__(self, *args: Any, nth: int, later: list[bytes], spool: Path, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.calls, self.nth, self.later, self.spool = 0, nth, later, spool

    def append(self, batch: PreparedBatch) -> DeliveryReport:
        report = super().append(batch)
        self.calls += 1
        if self.calls == self.nth:
            SpoolWriter(self.spool, SINK).append(self.later)
        return report


def test_a_jsonl_created_between_seal_and_listing_is_left_for_the_next_replay(
    database: ClickHouseSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer takes the spool flock right after the seal and starts a new ``.jsonl``, then
    appends to it again while the replay runs."""
    spool = tmp_path / "spool"
    sealed, first, later = payloads(100), payloads(50), payloads(30)
    SpoolWriter(spool, SINK).append(sealed)

    def seal_then_write(directory: Path, name: str) -> list[Path]:
        files = seal(directory, name)
        SpoolWriter(directory, SINK).append(first)
        return files

    monkeypatch.setattr("ingester.replay.seal", seal_then_write)
    delivery = _AppendsWhileReplaying(
        database, tmp_path / "dead", attempts=1, nth=2, later=later, spool=spool
    )
    report = Replayer(spool, SINK, delivery, batch_records=1000).replay()
    monkeypatch.undo()
    delivery.close()
    written = len(sealed) + len(first) + (len(later) if delivery.calls >= 2 else 0)
    again = Delivery(database, tmp_path / "dead", attempts=1)
    assert Replayer(spool, SINK, again).replay().status is ReplayStatus.DONE
    again.close()
    assert raw_rows(database) == (written, written), "records appended during a replay were lost"
    assert report.status is ReplayStatus.DONE
    assert report.records == len(sealed), "the new .jsonl was replayed by the run that sealed"
    assert pending_files(spool, SINK) == []


class Worker:
    """A ``floopy-ingester worker`` process on its own spool, stream prefix and database."""

    def __init__(self, root: Path, redis_url: str, ch: ClickHouseSettings, **env: str) -> None:
        self.root, self.ch = root, ch
        self.spool = root / "spool"
        self.prefix = f"t{uuid.uuid4().hex[:10]}"
        self.env = {
            **os.environ,
            "FLOOPY_INGESTER_REDIS__URL": redis_url,
            "FLOOPY_INGESTER_REDIS__KEY_PREFIX": self.prefix,
            "FLOOPY_INGESTER_CLICKHOUSE__PORT": str(ch.port),
            "FLOOPY_INGESTER_CLICKHOUSE__DATABASE": ch.database,
            "FLOOPY_INGESTER_CLICKHOUSE__CONNECT_TIMEOUT_S": "0.5",
            "FLOOPY_INGESTER_CLICKHOUSE__SEND_RECEIVE_TIMEOUT_S": "2",
            "FLOOPY_INGESTER_SPOOL_DIR": str(self.spool),
            "FLOOPY_INGESTER_DEAD_LETTER_DIR": str(root / "dead"),
            "FLOOPY_INGESTER_BATCH_AGE_S": "0.2",
            "FLOOPY_INGESTER_READ_BLOCK_MS": "200",
            "FLOOPY_INGESTER_INSERT_ATTEMPTS": "2",
            "FLOOPY_INGESTER_INSERT_BACKOFF_S": "0.05",
            "FLOOPY_INGESTER_REPLAY_CHECK_INTERVAL_S": "0.3",
            "FLOOPY_INGESTER_ERROR_BACKOFF_S": "0.2",
            **env,
        }
        self.log = root / "worker.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.key = stream_key(SINK, self.prefix)

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(BIN / "floopy-ingester"), "worker"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(30)

    def cli(self, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [str(BIN / "floopy-ingester"), *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.kill()


def publish(client: redis.Redis, key: str, batch: list[bytes]) -> None:
    pipe = client.pipeline(transaction=False)
    for payload in batch:
        pipe.xadd(key, {RECORD_FIELD: payload})
    pipe.execute()


def test_rotation_drops_through_the_live_worker_are_exactly_the_missing_records(
    redis_server: RedisServer,
    clickhouse_factory: Callable[[], ClickHouseServer],
    tmp_path: Path,
    workers: list[Worker],
) -> None:
    server = clickhouse_factory()
    ch = ClickHouseSettings(port=server.port, database="drops")
    migrate(ch)
    worker = Worker(
        tmp_path,
        redis_server.url,
        ch,
        FLOOPY_INGESTER_SPOOL_CAP_BYTES=str(48 * 1024),
        FLOOPY_INGESTER_SPOOL_GENERATIONS="3",
        FLOOPY_INGESTER_BATCH_RECORDS="100",
    )
    workers.append(worker)
    worker.start()
    client = redis.Redis.from_url(redis_server.url)
    server.kill()
    n, chunk = 1500, 100
    for _ in range(0, n, chunk):
        publish(client, worker.key, payloads(chunk))

    def all_spooled() -> bool:
        spooled = sum(count_lines(p) for p in pending_files(worker.spool, SINK))
        pending = int(cast(dict[str, Any], client.xpending(worker.key, CONSUMER_GROUP))["pending"])
        return pending == 0 and spooled + read_dropped(worker.spool, SINK).records == n

    wait_for(all_spooled, "every record spooled or counted as dropped", [worker.log])
    dropped = read_dropped(worker.spool, SINK)
    assert dropped.records > 0, "the cap should have dropped generations"
    server.start()
    kept = n - dropped.records
    wait_for(lambda: raw_rows(ch) == (kept, kept), f"{kept} rows, each once", [worker.log])
    wait_for(lambda: not pending_files(worker.spool, SINK), "spool replayed", [worker.log])
    client.close()


def test_cli_replays_racing_each_other_and_the_worker_send_each_record_once(
    redis_server: RedisServer,
    database: ClickHouseSettings,
    tmp_path: Path,
    workers: list[Worker],
) -> None:
    worker = Worker(tmp_path, redis_server.url, database)
    workers.append(worker)
    writer = SpoolWriter(worker.spool, SINK, cap_bytes=2**20, generations=12)
    n = 6000
    for _ in range(n // 500):
        writer.append(payloads(500))
    assert read_dropped(worker.spool, SINK).records == 0
    clis = [worker.cli("replay", "--sink", "requests") for _ in range(2)]
    worker.start()
    outputs = [cli.communicate(timeout=120)[0].decode(errors="replace") for cli in clis]
    wait_for(lambda: raw_rows(database) == (n, n), f"{n} rows, each once", [worker.log])
    wait_for(lambda: not pending_files(worker.spool, SINK), "spool emptied", [worker.log])
    assert not lock_path(worker.spool, SINK).exists()
    for cli, output in zip(clis, outputs, strict=True):
        assert "Traceback" not in output, output
        if cli.returncode != 0:
            assert "requests: locked by" in output, output
    assert raw_rows(database) == (n, n)
