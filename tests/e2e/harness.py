"""Real processes for end-to-end tests: the fake provider, the gateway under granian and ingester
workers, wired to the session's (or a test's own) Redis and ClickHouse with a unique stream
prefix and database, so tests never see each other's records."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
from clickhouse_driver import Client

from devstack.servers import ClickHouseServer, RedisCluster, RedisServer, free_port, wait_for_port

API_KEY = "sk-floopy-e2e"
ORG_ID = "org-e2e"
KEY_ID = "key-e2e"


def base_config() -> dict[str, Any]:
    """The config seed every stack starts from: one org and its key (proxy + read)."""
    return {
        "orgs": {ORG_ID: {"name": "e2e"}},
        "keys": {KEY_ID: {"org": ORG_ID, "secret": API_KEY, "permissions": ["proxy", "read"]}},
    }


BIN = Path(sys.executable).parent


class Floopy:
    """One isolated Floopy: its own stream prefix, database, spool and processes."""

    def __init__(
        self, root: Path, redis: RedisServer | RedisCluster, clickhouse: ClickHouseServer
    ) -> None:
        self.root = root
        self.redis = redis
        self.clickhouse = clickhouse
        self.tag = uuid.uuid4().hex[:10]
        self.database = f"e2e_{self.tag}"
        self.spool_dir = root / "spool"
        self.provider_port = free_port()
        self.gateway_port = free_port()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.config: dict[str, Any] = base_config()
        """The gateway's config seed (``FLOOPY_GATEWAY_CONFIG_FILE``), written at its start."""
        self.config_file = root / "floopy.json"
        self.extra_env: dict[str, str] = {}
        """Set for every process of this stack (e.g. a Redis Cluster's settings)."""

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "FLOOPY_GATEWAY_REDIS__URL": self.redis.url,
            "FLOOPY_GATEWAY_REDIS__KEY_PREFIX": self.tag,
            "FLOOPY_GATEWAY_PROVIDER__BASE_URL": f"http://127.0.0.1:{self.provider_port}/v1",
            "FLOOPY_GATEWAY_PROVIDER__API_KEY": "sk-upstream",
            "FLOOPY_GATEWAY_CONFIG_FILE": str(self.config_file),
            "FLOOPY_GATEWAY_PORT": str(self.gateway_port),
            "FLOOPY_GATEWAY_ACCESS_LOG": "false",
            "FLOOPY_GATEWAY_SPOOL__DIR": str(self.root / "gateway-spool"),
            "FLOOPY_INGESTER_REDIS__URL": self.redis.url,
            "FLOOPY_INGESTER_REDIS__KEY_PREFIX": self.tag,
            "FLOOPY_INGESTER_CLICKHOUSE__PORT": str(self.clickhouse.port),
            "FLOOPY_INGESTER_CLICKHOUSE__DATABASE": self.database,
            "FLOOPY_INGESTER_CLICKHOUSE__CONNECT_TIMEOUT_S": "1",
            "FLOOPY_INGESTER_CLICKHOUSE__SEND_RECEIVE_TIMEOUT_S": "5",
            "FLOOPY_INGESTER_SPOOL_DIR": str(self.spool_dir),
            "FLOOPY_INGESTER_DEAD_LETTER_DIR": str(self.root / "dead-letter"),
            "FLOOPY_INGESTER_BATCH_AGE_S": "0.2",
            "FLOOPY_INGESTER_READ_BLOCK_MS": "200",
            "FLOOPY_INGESTER_INSERT_ATTEMPTS": "2",
            "FLOOPY_INGESTER_INSERT_BACKOFF_S": "0.1",
            "FLOOPY_INGESTER_REPLAY_CHECK_INTERVAL_S": "0.5",
            "FLOOPY_INGESTER_CLAIM_MIN_IDLE_S": "80",
            **self.extra_env,
            **extra,
        }

    def spawn(self, name: str, argv: list[str], **extra: str) -> subprocess.Popen[bytes]:
        with (self.root / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                argv,
                env=self.env(**extra),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes[name] = proc
        return proc

    def start_provider(self) -> None:
        self.spawn(
            "provider",
            [sys.executable, "-m", "devstack.fake_openai", "--port", str(self.provider_port)],
        )
        wait_for_port(self.provider_port)

    def start_gateway(
        self, workers: int = 1, name: str = "gateway", port: int | None = None, **extra: str
    ) -> None:
        """Start a gateway (another one: a new ``name`` and ``port``, same Redis and config)."""
        self.config_file.write_text(json.dumps(self.config))
        port = port or self.gateway_port
        self.spawn(
            name,
            [str(BIN / "floopy-gateway")],
            FLOOPY_GATEWAY_WORKERS=str(workers),
            FLOOPY_GATEWAY_PORT=str(port),
            **extra,
        )
        # a wait, not a measure: two workers loading the embedder on a loaded machine took 65 s
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        # a fixture that fails here never reaches its teardown: stop what this harness started
        self.stop_all()
        raise TimeoutError(f"gateway did not become healthy; see {self.root}/{name}.log")

    def start_ingester(self, name: str = "ingester", **extra: str) -> None:
        self.spawn(name, [str(BIN / "floopy-ingester"), "worker"], **extra)

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout_s: float = 30) -> None:
        proc = self.processes.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop_all(self) -> None:
        gateways = [n for n in self.processes if n.startswith("gateway")]
        for name in [*gateways, *[n for n in self.processes if n not in gateways]]:
            if name in self.processes:
                self.stop(name)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def sdk(self, api_key: str = API_KEY, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.gateway_url}/v1", api_key=api_key, **kwargs)

    def async_sdk(self, api_key: str = API_KEY, **kwargs: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.gateway_url}/v1", api_key=api_key, **kwargs)

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        client = Client(host="127.0.0.1", port=self.clickhouse.port, database=self.database)
        try:
            return list(client.execute(sql, params or {}))
        finally:
            client.disconnect()

    def wait_for(
        self, predicate: Callable[[], bool], timeout_s: float = 60, what: str = "condition"
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if predicate():
                    return
            time.sleep(0.2)
        raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}; logs in {self.root}")

    def raw_rows_per_request(self) -> dict[str, int]:
        """Rows per request id *without* FINAL: a record delivered twice shows as 2 until a
        background merge collapses it, which FINAL would hide."""
        rows = self.query("SELECT request_id, count() FROM requests GROUP BY request_id")
        return {str(request_id): int(n) for request_id, n in rows}

    def missing_and_doubled(self, answered: list[str]) -> tuple[set[str], dict[str, int]]:
        """Answered request ids without a row, and request ids with more than one raw row."""
        raw = self.raw_rows_per_request()
        return set(answered) - raw.keys(), {rid: n for rid, n in raw.items() if n > 1}

    def spooled_records(self, sink: str = "requests", name: str = "ingester") -> int:
        """Records the ingester logged as spooled (``spooled N payloads of <sink>``): the only
        records a fault may have inserted twice."""
        marker = f" payloads of {sink}:"
        lines = (self.root / f"{name}.log").read_text(errors="replace").splitlines()
        return sum(int(x.split("spooled ")[1].split(" ")[0]) for x in lines if marker in x)

    def request_counts(self) -> tuple[int, int]:
        """(rows read with FINAL, distinct request ids) in the requests table."""
        rows = self.query("SELECT count(), uniqExact(request_id) FROM requests FINAL")
        return int(rows[0][0]), int(rows[0][1])

    def tokens_recorded_and_counted(self, redis_url: str) -> tuple[int, int]:
        """The e2e key's tokens today: in ClickHouse (deduplicated) and in its usage counters."""
        from gateway.clients.usage_counters import UsageCounters

        recorded = self.query(
            "SELECT sum(total_tokens) FROM requests FINAL WHERE api_key_id = %(k)s",
            {"k": KEY_ID},
        )[0][0]

        async def counted() -> int:
            from redis.asyncio import Redis

            redis = Redis.from_url(redis_url)
            try:
                usage = await UsageCounters(redis, prefix=self.tag).usage(
                    KEY_ID, int(time.time() * 1000)
                )
            finally:
                await redis.aclose()
            return usage.day_tokens

        return int(recorded), asyncio.run(counted())

    async def send_sessions(self, tags: list[str], concurrency: int = 8) -> list[str]:
        """Each tag once through the openai SDK, as the prompt and the session id; the tags
        of the requests answered."""
        answered: list[str] = []
        queue = list(reversed(tags))

        async def worker() -> None:
            client = self.async_sdk(max_retries=0, timeout=20)
            try:
                while queue:
                    tag = queue.pop()
                    await client.chat.completions.create(
                        model="gpt-4o-mini",
                        messages=[{"role": "user", "content": tag}],
                        extra_headers={"floopy-session-id": tag},
                    )
                    answered.append(tag)
            finally:
                await client.close()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return answered

    def session_rows(self, pattern: str) -> tuple[int, int, int]:
        """(raw rows, distinct sessions, sessions with more than one raw row) for sessions
        matching the LIKE ``pattern``."""
        rows = self.query(
            "SELECT count(), uniqExact(session_id), countIf(n > 1) FROM "
            "(SELECT session_id, count() AS n FROM requests WHERE session_id LIKE %(p)s "
            "GROUP BY session_id)",
            {"p": pattern},
        )
        raw = self.query("SELECT count() FROM requests WHERE session_id LIKE %(p)s", {"p": pattern})
        return int(raw[0][0]), int(rows[0][1]), int(rows[0][2])
