"""The stack the hostile-input tests attack (``test_hardening.py``, ``test_fuzz.py``): the fake
OpenAI and Anthropic providers, an ingester and one gateway with small limits, several orgs (one
expired, one an operator) and their keys; plus helpers that read records from the Redis stream
and speak raw HTTP/1.1 over sockets (what an attacker sends is not what an SDK sends)."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import msgspec
from cryptography.fernet import Fernet
from openai.types.chat import ChatCompletionMessageParam
from redis import Redis

from devstack.servers import ClickHouseServer, RedisServer, free_port, wait_for_port
from shared.codec import decode_record
from shared.records import RequestRecord
from shared.streams import RECORD_FIELD, Sink, stream_key
from tests.e2e.harness import Floopy

KEY_A = "sk-floopy-hostile-a"
KEY_B = "sk-floopy-hostile-b"
KEY_SEG = "sk-floopy-hostile-seg"
KEY_OPS = "sk-floopy-hostile-ops"
KEY_ACME = "sk-floopy-hostile-acme"
KEY_EXPIRED = "sk-floopy-hostile-expired"
KEY_LAPSED = "sk-floopy-hostile-lapsed"
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
IN_FLIGHT_CAP = 20
SEGMENT_CAP = 25
BODY_TIMEOUT_S = 2


def config() -> dict[str, Any]:
    now = datetime.now(UTC)
    orgs = {
        "org-a": {},
        "org-b": {},
        "org-seg": {},
        "org-ops": {},
        "acme": {},
        "org-expired": {"plan": {"expires_at": (now - timedelta(days=1)).isoformat()}},
        "org-lapsed": {"plan": {"expires_at": (now - timedelta(days=40)).isoformat()}},
    }
    keys = {
        "key-a": {"org": "org-a", "secret": KEY_A, "permissions": ["proxy", "read"]},
        "key-b": {"org": "org-b", "secret": KEY_B},
        "key-seg": {"org": "org-seg", "secret": KEY_SEG},
        "key-ops": {"org": "org-ops", "secret": KEY_OPS, "permissions": ["admin"]},
        "key-acme": {"org": "acme", "secret": KEY_ACME, "permissions": ["admin"]},
        "key-expired": {"org": "org-expired", "secret": KEY_EXPIRED, "permissions": ["admin"]},
        "key-lapsed": {"org": "org-lapsed", "secret": KEY_LAPSED, "permissions": ["admin"]},
    }
    return {"orgs": orgs, "keys": keys}


@contextlib.contextmanager
def running(root: Path, redis: RedisServer, clickhouse: ClickHouseServer) -> Iterator[Floopy]:
    floopy = Floopy(root, redis, clickhouse)
    try:
        start(floopy)
        yield floopy
    finally:
        floopy.stop_all()


def start(floopy: Floopy) -> None:
    """Providers, ingester and gateway; ``floopy.anthropic_port`` is set."""
    anthropic_port = free_port()
    floopy.anthropic_port = anthropic_port  # type: ignore[attr-defined]
    floopy.config = config()
    floopy.start_provider()
    floopy.spawn(
        "anthropic",
        [sys.executable, "-m", "devstack.fake_anthropic", "--port", str(anthropic_port)],
    )
    wait_for_port(anthropic_port)
    floopy.start_ingester()
    main = f"http://127.0.0.1:{floopy.provider_port}/v1"
    providers = [
        {"name": "anthropic", "kind": "anthropic", "base_url": f"http://127.0.0.1:{anthropic_port}",
         "api_key": "sk-ant-up", "model_prefixes": ["claude-"]},
        {"name": "private", "kind": "openai", "base_url": main, "api_key": "sk-up",
         "models": ["private-only"], "orgs": ["org-a"]},
        {"name": "openai", "kind": "openai", "base_url": main, "api_key": "sk-up"},
    ]  # fmt: skip
    floopy.start_gateway(
        FLOOPY_GATEWAY_PROVIDERS=json.dumps(providers),
        FLOOPY_GATEWAY_ROUTES=json.dumps({"unicode-route": ["openai/fake-模型"]}),
        FLOOPY_GATEWAY_OPERATOR_ORGS='["org-ops"]',
        FLOOPY_GATEWAY_CLICKHOUSE__PORT=str(floopy.clickhouse.port),
        FLOOPY_GATEWAY_CLICKHOUSE__DATABASE=floopy.database,
        FLOOPY_GATEWAY_BODY_READ_TIMEOUT_S=str(BODY_TIMEOUT_S),
        FLOOPY_GATEWAY_MAX_IN_FLIGHT_PER_CLIENT=str(IN_FLIGHT_CAP),
        FLOOPY_GATEWAY_RATE_LIMIT_SEGMENT_CAP=str(SEGMENT_CAP),
        FLOOPY_GATEWAY_BACKPRESSURE="128",
        FLOOPY_GATEWAY_BREAKER__FAILURE_THRESHOLD="3",
        FLOOPY_GATEWAY_BREAKER__COOLDOWN_S="60",
        FLOOPY_GATEWAY_RETRY__BACKOFF_S="0.01",
        FLOOPY_GATEWAY_MASTER_KEY=Fernet.generate_key().decode(),
        FLOOPY_PROVIDER_KEY_EXTRA="sk-extra",
    )


def records(floopy: Floopy) -> dict[str, RequestRecord]:
    """Every request record published so far, by request id (read from the Redis stream)."""
    client = Redis.from_url(floopy.redis.url)
    try:
        entries = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            client.xrange(stream_key(Sink.REQUESTS, floopy.tag)),
        )
    finally:
        client.close()
    found = [decode_record(Sink.REQUESTS, fields[RECORD_FIELD]) for _, fields in entries]
    return {r.request_id: r for r in found}


def raw_request(
    port: int,
    head: bytes,
    body: bytes = b"",
    *,
    timeout_s: float = 10,
) -> tuple[int, dict[str, str], bytes]:
    """Send ``head`` (request line and headers, CRLF-terminated, without the blank line) and
    ``body`` as they are; read the answer until the server closes or ``Content-Length`` is read."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(head + b"\r\n" + body)
        return read_response(sock)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1]) if lines and lines[0].startswith("HTTP/") else 0
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    length = int(headers.get("content-length", "-1"))
    while length < 0 or len(rest) < length:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        rest += chunk
    return status, headers, rest


def error_code(body: bytes) -> str:
    """The ``error.code`` of a JSON error body (raises if the body is not one)."""
    decoded = msgspec.json.decode(body)
    return str(decoded["error"]["code"])
