"""floopy-ingester against real Redis and ClickHouse: exit codes and what on-call reads."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from clickhouse_driver import Client
from typer.testing import CliRunner

from devstack.servers import ClickHouseServer, RedisServer, free_port
from ingester.cli import app
from ingester.dead_letter import DeadLetter, DeadLetterFile
from ingester.lock import ReplayLock
from ingester.replay import pending_files
from shared.codec import encode_record
from shared.records import RequestRecord
from shared.spool.writer import SpoolWriter
from shared.streams import CONSUMER_GROUP, RECORD_FIELD, Sink, stream_key

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

runner = CliRunner()


@pytest.fixture
def env(
    redis_server: RedisServer, clickhouse_server: ClickHouseServer, tmp_path: Path
) -> Iterator[dict[str, str]]:
    tag = uuid.uuid4().hex[:10]
    values = {
        "FLOOPY_INGESTER_REDIS__URL": redis_server.url,
        "FLOOPY_INGESTER_REDIS__KEY_PREFIX": f"t{tag}",
        "FLOOPY_INGESTER_CLICKHOUSE__PORT": str(clickhouse_server.port),
        "FLOOPY_INGESTER_CLICKHOUSE__DATABASE": f"t_{tag}",
        "FLOOPY_INGESTER_CLICKHOUSE__CONNECT_TIMEOUT_S": "0.5",
        "FLOOPY_INGESTER_SPOOL_DIR": str(tmp_path / "spool"),
        "FLOOPY_INGESTER_DEAD_LETTER_DIR": str(tmp_path / "dead"),
    }
    yield values
    client = Client(host="127.0.0.1", port=clickhouse_server.port)
    client.execute(f"DROP DATABASE IF EXISTS t_{tag}")
    client.disconnect()


def payloads(n: int) -> list[bytes]:
    now = int(time.time() * 1000)
    return [
        encode_record(
            RequestRecord(
                request_id=str(uuid.uuid4()), org_id="o", api_key_id="k", created_at_ms=now
            )
        )
        for _ in range(n)
    ]


def row_count(env: dict[str, str]) -> int:
    client = Client(host="127.0.0.1", port=int(env["FLOOPY_INGESTER_CLICKHOUSE__PORT"]))
    try:
        db = env["FLOOPY_INGESTER_CLICKHOUSE__DATABASE"]
        return int(client.execute(f"SELECT count() FROM {db}.requests FINAL")[0][0])
    finally:
        client.disconnect()


def test_migrate_creates_tables_then_is_a_no_op(env: dict[str, str]) -> None:
    first = runner.invoke(app, ["migrate"], env=env)
    assert first.exit_code == 0, first.output
    assert row_count(env) == 0
    second = runner.invoke(app, ["migrate"], env=env)
    assert second.exit_code == 0
    assert "applied now: none" in second.output


def test_status_on_a_healthy_setup(env: dict[str, str], tmp_path: Path) -> None:
    key = stream_key(Sink.REQUESTS, env["FLOOPY_INGESTER_REDIS__KEY_PREFIX"])
    client = redis.Redis.from_url(env["FLOOPY_INGESTER_REDIS__URL"])
    client.xgroup_create(key, CONSUMER_GROUP, id="0", mkstream=True)
    for payload in payloads(4):
        client.xadd(key, {RECORD_FIELD: payload})
    client.xreadgroup(CONSUMER_GROUP, "replica-a", {key: ">"}, count=3)
    client.close()
    SpoolWriter(tmp_path / "spool", Sink.REQUESTS).append(payloads(2))
    DeadLetterFile(tmp_path / "dead", Sink.SPANS).append([DeadLetter(b"x", "bad")])

    result = runner.invoke(app, ["status"], env=env)

    assert result.exit_code == 0, result.output
    assert "replica-a: pending 3" in result.output
    assert "requests.jsonl" in result.output
    assert "redis" in result.output and "clickhouse" in result.output
    assert "unreachable" not in result.output
    lines = {line.split("│")[1].strip(): line for line in result.output.splitlines() if "│" in line}
    assert lines["stream length"].split("│")[2].strip() == "4"
    assert lines["group pending"].split("│")[2].strip() == "3"
    assert lines["backlog (undelivered)"].split("│")[2].strip() == "1"
    assert lines["dead letters"].split("│")[3].strip() == "1"


def test_status_with_clickhouse_down_exits_1_without_traceback(env: dict[str, str]) -> None:
    broken = {**env, "FLOOPY_INGESTER_CLICKHOUSE__PORT": str(free_port())}
    result = runner.invoke(app, ["status"], env=broken)
    assert result.exit_code == 1
    assert "clickhouse unreachable" in result.output
    assert "Traceback" not in result.output


def test_status_with_redis_down_exits_1(env: dict[str, str]) -> None:
    result = runner.invoke(
        app, ["--redis-url", f"redis://127.0.0.1:{free_port()}/0", "status"], env=env
    )
    assert result.exit_code == 1
    assert "redis unreachable" in result.output
    assert "Traceback" not in result.output


def test_replay_dry_run_counts_and_changes_nothing(env: dict[str, str], tmp_path: Path) -> None:
    spool_dir = tmp_path / "other-spool"  # the option overrides the env setting
    SpoolWriter(spool_dir, Sink.REQUESTS).append(payloads(7))
    before = sorted(p.name for p in spool_dir.iterdir())
    result = runner.invoke(app, ["--spool-dir", str(spool_dir), "replay", "--dry-run"], env=env)
    assert result.exit_code == 0, result.output
    assert "requests: dry_run" in result.output
    assert "records=7" in result.output
    assert sorted(p.name for p in spool_dir.iterdir()) == before


def test_replay_inserts_and_deletes_files(env: dict[str, str], tmp_path: Path) -> None:
    assert runner.invoke(app, ["migrate"], env=env).exit_code == 0
    SpoolWriter(tmp_path / "spool", Sink.REQUESTS).append(payloads(25))
    result = runner.invoke(app, ["replay", "--sink", "requests"], env=env)
    assert result.exit_code == 0, result.output
    assert "requests: done" in result.output
    assert row_count(env) == 25
    assert pending_files(tmp_path / "spool", Sink.REQUESTS) == []


def test_replay_refuses_when_clickhouse_is_unreachable(env: dict[str, str], tmp_path: Path) -> None:
    SpoolWriter(tmp_path / "spool", Sink.REQUESTS).append(payloads(3))
    result = runner.invoke(app, ["--clickhouse-port", str(free_port()), "replay"], env=env)
    assert result.exit_code == 1
    assert "clickhouse unreachable" in result.output
    assert len(pending_files(tmp_path / "spool", Sink.REQUESTS)) == 1


def test_replay_reports_a_lock_held_by_someone_else(env: dict[str, str], tmp_path: Path) -> None:
    assert runner.invoke(app, ["migrate"], env=env).exit_code == 0
    spool_dir = tmp_path / "spool"
    SpoolWriter(spool_dir, Sink.REQUESTS).append(payloads(3))
    lock = ReplayLock(spool_dir, Sink.REQUESTS, owner="other-host:42:abc")
    assert lock.acquire()
    try:
        result = runner.invoke(app, ["replay", "--sink", "requests"], env=env)
    finally:
        lock.release()
    assert result.exit_code == 1
    assert "locked by other-host:42:abc" in result.output
    assert row_count(env) == 0


def _table(output: str) -> dict[str, list[str]]:
    rows = [line.split("│") for line in output.splitlines() if "│" in line]
    return {cells[1].strip(): [c.strip() for c in cells[2:-1]] for cells in rows}


def test_status_with_clickhouse_hung_answers_per_probe_within_its_timeout(
    env: dict[str, str], clickhouse_factory: Callable[[], ClickHouseServer]
) -> None:
    """SIGSTOP: ClickHouse's kernel still accepts connections, nothing answers."""
    hung = clickhouse_factory()
    with hung.hung():
        started = time.monotonic()
        result = runner.invoke(
            app,
            ["--clickhouse-port", str(hung.port), "status", "--probe-timeout", "0.5"],
            env=env,
        )
        print(f"status with clickhouse hung took {time.monotonic() - started:.1f}s")
    assert result.exit_code == 1
    assert "no answer to SELECT 1 within 0.5s" in result.output
    assert f"redis {env['FLOOPY_INGESTER_REDIS__URL']}: reachable" in result.output
    assert "Traceback" not in result.output


def test_status_backlog_is_what_is_undelivered_after_a_redis_restart(
    env: dict[str, str], redis_factory: Callable[[], RedisServer]
) -> None:
    server = redis_factory()
    env = {**env, "FLOOPY_INGESTER_REDIS__URL": server.url}
    key = stream_key(Sink.REQUESTS, env["FLOOPY_INGESTER_REDIS__KEY_PREFIX"])
    client = redis.Redis.from_url(server.url)
    client.xgroup_create(key, CONSUMER_GROUP, id="0", mkstream=True)
    for payload in payloads(50):
        client.xadd(key, {RECORD_FIELD: payload})
    read = cast(
        list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]],
        client.xreadgroup(CONSUMER_GROUP, "a", {key: ">"}, count=30),
    )
    ids = [entry_id for entry_id, _ in read[0][1]]
    client.xack(key, CONSUMER_GROUP, *ids[:20])
    client.xtrim(key, minid=ids[20].decode(), approximate=False)  # what the consumer trims
    client.close()
    server.kill()
    server.start()
    client = redis.Redis.from_url(server.url)
    for payload in payloads(5):
        client.xadd(key, {RECORD_FIELD: payload})
    lag = cast(list[dict[str, Any]], client.xinfo_groups(key))[0].get("lag")
    client.close()

    result = runner.invoke(app, ["status"], env=env)
    print(f"redis's own lag estimate: {lag}")
    table = _table(result.output)
    assert table["stream length"][0] == "35"
    assert table["group pending"][0] == "10"
    assert table["backlog (undelivered)"][0] == "25"  # 50 - 30 read, + 5 after the restart


def _stream(env: dict[str, str], sink: Sink = Sink.REQUESTS) -> list[bytes]:
    client = redis.Redis.from_url(env["FLOOPY_INGESTER_REDIS__URL"])
    try:
        key = stream_key(sink, env["FLOOPY_INGESTER_REDIS__KEY_PREFIX"])
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(key))
        return [fields[RECORD_FIELD] for _, fields in entries]
    finally:
        client.close()


def test_dead_letters_requeue_dry_run_then_for_real(env: dict[str, str], tmp_path: Path) -> None:
    sent = payloads(3)
    letters = DeadLetterFile(tmp_path / "dead", Sink.REQUESTS)
    letters.append([DeadLetter(p, "RecordDecodeError: schema version 9") for p in sent])
    letters.append([DeadLetter(b"\x80junk", "RecordDecodeError: not UTF-8")])

    dry = runner.invoke(app, ["dead-letters", "requeue", "--dry-run"], env=env)
    assert dry.exit_code == 0, dry.output
    assert "requests: would requeue 4 letters from 1 files" in dry.output
    assert "3  RecordDecodeError: schema version 9" in dry.output
    assert _stream(env) == [] and len(list(letters.read())) == 4

    done = runner.invoke(app, ["dead-letters", "requeue"], env=env)
    assert done.exit_code == 0, done.output
    assert "requests: requeued 4 letters from 1 files" in done.output
    assert "spans: requeued 0 letters" in done.output
    assert _stream(env) == [*sent, b"\x80junk"]  # as set aside, bytes that are not UTF-8 too
    assert not letters.path.exists()
    assert len(list((tmp_path / "dead").glob("requests.dead.requeued-*.jsonl"))) == 1
    status = runner.invoke(app, ["status"], env=env)
    assert "dead letters" in status.output

    again = runner.invoke(app, ["dead-letters", "requeue"], env=env)
    assert "requests: requeued 0 letters from 0 files" in again.output
    assert len(_stream(env)) == 4  # nothing sent twice


def test_dead_letters_requeue_with_redis_down_keeps_the_claim_for_next_time(
    env: dict[str, str], tmp_path: Path
) -> None:
    sent = payloads(2)
    letters = DeadLetterFile(tmp_path / "dead", Sink.REQUESTS)
    letters.append([DeadLetter(sent[0], "old")])
    down = {**env, "FLOOPY_INGESTER_REDIS__URL": f"redis://127.0.0.1:{free_port()}"}
    failed = runner.invoke(app, ["dead-letters", "requeue", "--sink", "requests"], env=down)
    assert failed.exit_code == 1
    assert "requeue stopped" in failed.output and "Traceback" not in failed.output
    assert len(list((tmp_path / "dead").glob("requests.dead.requeue-*.jsonl"))) == 1
    letters.append([DeadLetter(sent[1], "old")])  # set aside meanwhile: a new live file

    done = runner.invoke(app, ["dead-letters", "requeue", "--sink", "requests"], env=env)
    assert done.exit_code == 0, done.output
    assert "requeued 2 letters from 2 files" in done.output
    assert _stream(env) == sent  # the claimed file first, then the newer one
