"""Two ingester replicas as real processes sharing one consumer group: one is SIGKILLed while it
holds a batch, the other claims its entries once they are idle, and every record lands once.

Replica A starts as ``floopy-ingester worker``, replica B as ``arq ingester.worker.WorkerSettings``:
both entry points read the same env settings. A holds its batches long (big batch, long age);
B flushes fast and claims entries idle longer than a few seconds.
"""

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
from ingester.schema import migrate
from shared.codec import encode_record
from shared.records import RequestRecord
from shared.settings import ClickHouseSettings
from shared.streams import CONSUMER_GROUP, RECORD_FIELD, Sink, stream_key

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

BIN = Path(sys.executable).parent


def replica_env(common: dict[str, str], name: str, tmp: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        **common,
        "FLOOPY_INGESTER_CONSUMER_NAME": name,
        "FLOOPY_INGESTER_SPOOL_DIR": str(tmp / name / "spool"),
        "FLOOPY_INGESTER_DEAD_LETTER_DIR": str(tmp / name / "dead"),
        **extra,
    }


class Replica:
    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def signal(self, sig: signal.Signals) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture
def common(
    redis_server: RedisServer, clickhouse_server: ClickHouseServer
) -> Iterator[dict[str, str]]:
    tag = uuid.uuid4().hex[:10]
    database = f"t_{tag}"
    migrate(ClickHouseSettings(port=clickhouse_server.port, database=database))
    yield {
        "FLOOPY_INGESTER_REDIS__URL": redis_server.url,
        "FLOOPY_INGESTER_REDIS__KEY_PREFIX": f"t{tag}",
        "FLOOPY_INGESTER_CLICKHOUSE__PORT": str(clickhouse_server.port),
        "FLOOPY_INGESTER_CLICKHOUSE__DATABASE": database,
        "FLOOPY_INGESTER_CLICKHOUSE__CONNECT_TIMEOUT_S": "0.3",
        "FLOOPY_INGESTER_CLICKHOUSE__SEND_RECEIVE_TIMEOUT_S": "1",
        "FLOOPY_INGESTER_INSERT_ATTEMPTS": "2",
        "FLOOPY_INGESTER_INSERT_BACKOFF_S": "0.05",
        "FLOOPY_INGESTER_READ_BLOCK_MS": "200",
        "FLOOPY_INGESTER_CLAIM_INTERVAL_S": "0.5",
        "FLOOPY_INGESTER_TRIM_INTERVAL_S": "0.5",
        "FLOOPY_INGESTER_LOG_LEVEL": "INFO",
    }
    client = Client(host="127.0.0.1", port=clickhouse_server.port)
    client.execute(f"DROP DATABASE IF EXISTS {database}")
    client.disconnect()


@pytest.fixture
def replicas() -> Iterator[list[Replica]]:
    started: list[Replica] = []
    yield started
    for replica in started:
        replica.signal(signal.SIGKILL)
        replica.process.wait()


def wait_for(
    check: Callable[[], bool], what: str, replicas: list[Replica], timeout_s: float = 60
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {r.log.name}\n{r.output()}" for r in replicas)
            raise AssertionError(f"{what}: not reached in {timeout_s}s\n{logs}")
        time.sleep(0.1)


def publish(client: redis.Redis, key: str, n: int) -> None:
    now = int(time.time() * 1000)
    pipe = client.pipeline(transaction=False)
    for _ in range(n):
        record = RequestRecord(
            request_id=str(uuid.uuid4()), org_id="o", api_key_id="k", created_at_ms=now
        )
        pipe.xadd(key, {RECORD_FIELD: encode_record(record)})
    pipe.execute()


def pending_of(client: redis.Redis, key: str) -> dict[str, int]:
    if not client.exists(key):
        return {}
    try:
        consumers = cast(list[dict[str, Any]], client.xinfo_consumers(key, CONSUMER_GROUP))
    except redis.ResponseError:  # group not created yet
        return {}
    return {c["name"].decode(): int(c["pending"]) for c in consumers}


def counts(common: dict[str, str]) -> tuple[int, int]:
    client = Client(host="127.0.0.1", port=int(common["FLOOPY_INGESTER_CLICKHOUSE__PORT"]))
    try:
        db = common["FLOOPY_INGESTER_CLICKHOUSE__DATABASE"]
        row = client.execute(f"SELECT count(), uniqExact(request_id) FROM {db}.requests FINAL")[0]
        return int(row[0]), int(row[1])
    finally:
        client.disconnect()


def test_killed_replica_entries_are_claimed_by_the_survivor(
    common: dict[str, str], replicas: list[Replica], tmp_path: Path
) -> None:
    holder_env = replica_env(
        common,
        "replica-a",
        tmp_path,
        FLOOPY_INGESTER_BATCH_RECORDS="100000",
        FLOOPY_INGESTER_BATCH_AGE_S="60",
        FLOOPY_INGESTER_CLAIM_MIN_IDLE_S="300",
    )
    survivor_env = replica_env(
        common,
        "replica-b",
        tmp_path,
        FLOOPY_INGESTER_BATCH_RECORDS="200",
        FLOOPY_INGESTER_BATCH_AGE_S="0.2",
        FLOOPY_INGESTER_CLAIM_MIN_IDLE_S="19",
    )
    holder = Replica([str(BIN / "floopy-ingester"), "worker"], holder_env, tmp_path / "a.log")
    replicas.append(holder)
    survivor = Replica(
        [str(BIN / "arq"), "ingester.worker.WorkerSettings"], survivor_env, tmp_path / "b.log"
    )
    replicas.append(survivor)

    client = redis.Redis.from_url(common["FLOOPY_INGESTER_REDIS__URL"])
    key = stream_key(Sink.REQUESTS, common["FLOOPY_INGESTER_REDIS__KEY_PREFIX"])
    wait_for(
        lambda: {"replica-a", "replica-b"} <= set(pending_of(client, key)),
        "both replicas joined the group",
        replicas,
    )
    sent = 0
    while pending_of(client, key).get("replica-a", 0) == 0:
        publish(client, key, 50)
        sent += 50
        time.sleep(0.05)
        assert sent < 20_000, "replica-a never received entries"
    held = pending_of(client, key)["replica-a"]
    holder.signal(signal.SIGKILL)  # mid-batch: its entries are read, not inserted, not acked
    holder.process.wait()
    for _ in range(10):  # load keeps flowing to the survivor
        publish(client, key, 30)
        sent += 30
        time.sleep(0.05)

    wait_for(lambda: counts(common) == (sent, sent), f"{sent} distinct rows", replicas)
    wait_for(lambda: sum(pending_of(client, key).values()) == 0, "nothing left pending", replicas)
    assert held > 0
    assert "claimed" in survivor.output()
    survivor.signal(signal.SIGTERM)
    assert survivor.process.wait(timeout=30) == 0, survivor.output()
    assert "consumer replica-b stopped" in survivor.output()
    client.close()
