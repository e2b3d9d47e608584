"""Issue 3, providers: routing, fallbacks, circuit breakers, Azure and Anthropic adapters, cost.

One stack for the module: the gateway (granian) with six providers over three fake upstream
processes (two OpenAI-compatible, one Anthropic), one ingester, the session's Redis and
ClickHouse. Each scenario routes to its own provider names (routing rules), so the breaker
counts of one never reach another. The openai SDK is the client throughout.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from devstack.fake_anthropic import REPLY_TEXT as ANTHROPIC_TEXT
from devstack.fake_openai import REPLY_TEXT
from devstack.servers import ClickHouseServer, RedisServer, free_port, wait_for_port
from gateway.policy.tokens import estimate_completion_tokens
from tests.e2e.harness import ORG_ID, Floopy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]
COOLDOWN_S = 3.0
BACKUP_KEY_ENV = "FLOOPY_E2E_BACKUP_KEY"
ONE_DOLLAR_PER_TOKEN = {"input_per_mtok": 1e6, "output_per_mtok": 1e6}


class Stack:
    def __init__(self, floopy: Floopy) -> None:
        self.floopy = floopy
        self.backup_port = free_port()
        self.breakme_port = free_port()
        self.anthropic_port = free_port()
        self._sdk: openai.OpenAI | None = None

    def start_openai(self, name: str, port: int) -> None:
        self.floopy.spawn(name, [sys.executable, "-m", "devstack.fake_openai", "--port", str(port)])
        wait_for_port(port)

    def providers(self) -> list[dict[str, Any]]:
        main = f"http://127.0.0.1:{self.floopy.provider_port}"

        def openai_at(name: str, port: int | str = "", **extra: Any) -> dict[str, Any]:
            url = f"http://127.0.0.1:{port}/v1" if port else f"{main}/v1"
            return {"name": name, "kind": "openai", "base_url": url, "api_key": "sk-up", **extra}

        return [
            openai_at("primary", models=["gpt-4o", "gpt-4o-mini"]),
            openai_at("backup", self.backup_port, api_key_env=BACKUP_KEY_ENV, api_key=""),
            openai_at("breakme", self.breakme_port, models=["breakme-only"]),
            openai_at("flaky", models=["flaky-only"]),
            openai_at("doomed", models=["doomed-only"]),
            openai_at("doomed2", models=["doomed2-only"]),
            openai_at("slow", models=["slow-only"], timeout_s=0.3),
            openai_at("stall", models=["stall-only"], timeout_s=0.3),
            {
                "name": "anthropic",
                "kind": "anthropic",
                "base_url": f"http://127.0.0.1:{self.anthropic_port}",
                "api_key": "sk-ant-up",
                "model_prefixes": ["claude-"],
            },
            {
                "name": "azure",
                "kind": "azure",
                "base_url": main,
                "api_key": "azure-up",
                "models": ["azure-only"],
                "deployments": {"gpt-4o-deploy": "gpt-4o"},
            },
        ]

    def routes(self) -> dict[str, list[str]]:
        return {
            "fallback-5xx": ["flaky/fake-status-503", "backup/gpt-4o-mini"],
            "fallback-timeout": ["slow/fake-delay-3000", "backup/gpt-4o-mini"],
            "breaker-model": ["breakme/gpt-4o-mini", "backup/gpt-4o-mini"],
            "breaker-only": ["breakme/gpt-4o-mini"],
            "all-fail": ["doomed/fake-status-500", "doomed2/fake-status-429"],
            "timeout-model": ["slow/fake-delay-3000"],
        }

    def start(self) -> None:
        self.floopy.start_provider()
        self.start_openai("backup", self.backup_port)
        self.start_openai("breakme", self.breakme_port)
        self.floopy.spawn(
            "anthropic",
            [sys.executable, "-m", "devstack.fake_anthropic", "--port", str(self.anthropic_port)],
        )
        wait_for_port(self.anthropic_port)
        self.floopy.start_ingester()
        # provider behaviour under test: every request must reach one, so no cache tier
        self.floopy.config["orgs"][ORG_ID]["cache"] = {"tiers": []}
        self.floopy.start_gateway(
            FLOOPY_GATEWAY_PROVIDERS=json.dumps(self.providers()),
            FLOOPY_GATEWAY_ROUTES=json.dumps(self.routes()),
            FLOOPY_GATEWAY_BREAKER__FAILURE_THRESHOLD="3",
            FLOOPY_GATEWAY_BREAKER__COOLDOWN_S=str(COOLDOWN_S),
            FLOOPY_GATEWAY_BREAKER__PROBE_TIMEOUT_S="5",
            FLOOPY_GATEWAY_RETRY__BACKOFF_S="0.01",
            FLOOPY_GATEWAY_PRICES=json.dumps({"fake-no-usage": ONE_DOLLAR_PER_TOKEN}),
            # mypy cannot tell this dict holds no ``workers`` or ``port``
            **{BACKUP_KEY_ENV: "sk-backup-from-env"},  # type: ignore[arg-type]
        )

    @property
    def sdk(self) -> openai.OpenAI:
        if self._sdk is None:
            self._sdk = self.floopy.sdk(max_retries=0, timeout=20)
        return self._sdk

    def stop(self) -> None:
        if self._sdk is not None:
            self._sdk.close()
        self.floopy.stop_all()

    def row(self, request_id: str, columns: str) -> tuple[Any, ...]:
        sql = f"SELECT {columns} FROM requests FINAL WHERE request_id = %(id)s"
        self.floopy.wait_for(
            lambda: bool(self.floopy.query(sql, {"id": request_id})), what=f"row {request_id}"
        )
        [row] = self.floopy.query(sql, {"id": request_id})
        return row

    def health(self) -> dict[str, dict[str, Any]]:
        body = httpx.get(f"{self.floopy.gateway_url}/health/providers", timeout=5).json()
        return {p["name"]: p for p in body["providers"]}


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    clickhouse_server: ClickHouseServer,
) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("providers-e2e")
    stack = Stack(Floopy(root, redis_server, clickhouse_server))
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def _create(stack: Stack, model: str, **kwargs: Any) -> Any:
    return stack.sdk.chat.completions.with_raw_response.create(
        model=model,
        messages=MESSAGES,
        **kwargs,
    )


def test_a_5xx_falls_back_to_the_next_target_after_a_retry(stack: Stack) -> None:
    raw = _create(stack, "fallback-5xx")
    assert raw.parse().choices[0].message.content.startswith("Hello from the fake provider")
    assert raw.headers["floopy-provider"] == "backup"  # its key came from the environment
    assert raw.headers["floopy-model"] == "gpt-4o-mini"
    row = stack.row(
        raw.headers["floopy-request-id"], "provider, providers_tried, retries, status_code"
    )
    assert row == ("backup", ["flaky", "backup"], 1, 200)
    spans = stack.floopy.query(
        "SELECT attribute_values FROM spans FINAL WHERE request_id = %(id)s "
        "AND name = 'provider_attempt' ORDER BY start_offset_ms",
        {"id": raw.headers["floopy-request-id"]},
    )
    # attributes are (attempt, model, outcome, provider) in key order
    assert [sorted(v) for (v,) in spans] == [
        sorted(["flaky", "fake-status-503", "retryable", "1"]),
        sorted(["flaky", "fake-status-503", "retryable", "2"]),
        sorted(["backup", "gpt-4o-mini", "ok", "3"]),
    ]


def test_a_hanging_provider_falls_back_without_retry(stack: Stack) -> None:
    raw = _create(stack, "fallback-timeout")
    assert raw.headers["floopy-provider"] == "backup"
    row = stack.row(raw.headers["floopy-request-id"], "providers_tried, retries")
    assert row == (["slow", "backup"], 0)


def test_all_targets_failing_is_502_with_the_last_providers_error(stack: Stack) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        stack.sdk.chat.completions.create(model="all-fail", messages=MESSAGES)
    error = caught.value
    assert error.status_code == 502
    body = error.body
    assert isinstance(body, dict) and body["code"] == "PROVIDER_ERROR"
    assert body["provider"] == "doomed2" and body["provider_status"] == 429
    assert body["provider_error"] == {
        "message": "Fake failure with status 429.",
        "type": "rate_limit_exceeded",
        "param": None,
        "code": "fake_429",
    }
    assert body["providers_tried"] == ["doomed", "doomed2"]
    request_id = error.response.headers["floopy-request-id"]
    row = stack.row(request_id, "status_code, error_code, provider, providers_tried, retries")
    assert row == (502, "PROVIDER_ERROR", "doomed2", ["doomed", "doomed2"], 2)


def test_a_provider_timeout_is_504_and_logged(stack: Stack) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        stack.sdk.chat.completions.create(model="timeout-model", messages=MESSAGES)
    assert caught.value.status_code == 504
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "GATEWAY_TIMEOUT"
    assert body["provider"] == "slow"
    row = stack.row(caught.value.response.headers["floopy-request-id"], "status_code, error_code")
    assert row == (504, "GATEWAY_TIMEOUT")


def test_breaker_opens_skips_the_provider_and_a_probe_closes_it(stack: Stack) -> None:
    floopy = stack.floopy
    assert _create(stack, "breaker-model").headers["floopy-provider"] == "breakme"
    floopy.stop("breakme")  # connection refused from now on
    for _ in range(2):  # 2 attempts each: the third failure opens the breaker
        raw = _create(stack, "breaker-model")
        assert raw.headers["floopy-provider"] == "backup"
    # the breaker is open now, for COOLDOWN_S: no target is left for this model
    with pytest.raises(openai.APIStatusError) as caught:
        stack.sdk.chat.completions.create(model="breaker-only", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert "every circuit breaker is open" in str(caught.value.body)
    assert caught.value.response.headers["retry-after"] == str(int(COOLDOWN_S))
    health = stack.health()
    assert health["breakme"]["state"] == "open" and health["breakme"]["recent_failures"] >= 3
    assert health["backup"]["state"] == "closed"
    skipped = _create(stack, "breaker-model")
    assert skipped.headers["floopy-provider"] == "backup"
    assert stack.row(skipped.headers["floopy-request-id"], "providers_tried") == (["backup"],)
    floopy.wait_for(
        lambda: bool(
            floopy.query(
                "SELECT 1 FROM breaker_events FINAL WHERE provider = 'breakme' "
                "AND from_state = 'closed' AND to_state = 'open'"
            )
        ),
        what="the breaker-open event row",
    )

    stack.start_openai("breakme", stack.breakme_port)
    deadline = time.monotonic() + COOLDOWN_S + 30
    provider = ""
    while provider != "breakme" and time.monotonic() < deadline:
        time.sleep(0.2)
        provider = _create(stack, "breaker-model").headers["floopy-provider"]
    assert provider == "breakme", "no half-open probe reached the recovered provider"
    assert stack.health()["breakme"]["state"] == "closed"
    floopy.wait_for(
        lambda: (
            {
                (f, t)
                for f, t in floopy.query(
                    "SELECT from_state, to_state FROM breaker_events FINAL "
                    "WHERE provider = 'breakme'"
                )
            }
            >= {("closed", "open"), ("open", "half_open"), ("half_open", "closed")}
        ),
        what="open, half-open and closed events",
    )


def test_health_providers_is_public_and_shows_no_secrets(stack: Stack) -> None:
    response = httpx.get(f"{stack.floopy.gateway_url}/health/providers", timeout=5)
    assert response.status_code == 200
    assert {p["name"] for p in response.json()["providers"]} >= {"primary", "azure", "anthropic"}
    assert "sk-" not in response.text and "azure-up" not in response.text


def test_anthropic_stream_is_a_valid_openai_stream_with_usage_and_cost(stack: Stack) -> None:
    raw = _create(
        stack, "claude-3-5-haiku-latest", stream=True, stream_options={"include_usage": True}
    )
    assert raw.headers["floopy-provider"] == "anthropic"
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANTHROPIC_TEXT
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    row = stack.row(
        raw.headers["floopy-request-id"],
        "provider, stream, total_tokens, tokens_estimated, cost_usd",
    )
    assert row[:4] == ("anthropic", 1, usage.total_tokens, 0)
    assert row[4] is not None and row[4] > 0


def test_azure_adapter_plain_and_streamed(stack: Stack) -> None:
    raw = _create(stack, "azure/gpt-4o")
    completion = raw.parse()
    assert raw.headers["floopy-provider"] == "azure"
    assert completion.model == "gpt-4o" and completion.choices[0].message.content
    # a mapped deployment: the model asked for is not the deployment's name
    mapped = _create(stack, "azure/gpt-4o-deploy")
    assert mapped.parse().model == "gpt-4o"
    streamed = _create(stack, "azure/gpt-4o", stream=True)
    chunks = list(streamed.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("Hello from the fake provider")
    row = stack.row(raw.headers["floopy-request-id"], "provider, model_used, status_code, cost_usd")
    assert row[:3] == ("azure", "gpt-4o", 200) and row[3] is not None and row[3] > 0


@pytest.mark.parametrize("stream", [False, True])
def test_missing_usage_is_estimated_flagged_and_priced(stack: Stack, stream: bool) -> None:
    raw = _create(stack, "fake-no-usage", stream=stream)
    if stream:
        chunks = list(raw.parse())
        assert all(c.usage is None for c in chunks)
    else:
        assert raw.parse().usage is None  # the provider said nothing, the caller sees that
    row = stack.row(
        raw.headers["floopy-request-id"],
        "tokens_estimated, prompt_tokens, completion_tokens, total_tokens, cost_usd",
    )
    estimated, prompt, completion, total, cost = row
    assert estimated == 1 and completion == estimate_completion_tokens(REPLY_TEXT)
    assert prompt > 0 and total == prompt + completion
    assert cost == pytest.approx(total)  # the override: one dollar per token


def test_a_stream_cut_midway_counts_against_the_breaker(stack: Stack) -> None:
    raw = _create(stack, "stall/fake-stall", stream=True)
    assert raw.status_code == 200  # the first chunk was on its way: no fallback now
    chunks = list(raw.parse())
    assert len(chunks) == 1  # the stall: the read timeout cut the stream after the first
    assert stack.health()["stall"]["recent_failures"] == 1
    row = stack.row(raw.headers["floopy-request-id"], "status_code, error_message")
    assert row[0] == 200 and "GATEWAY_TIMEOUT" in row[1]


def test_no_provider_key_in_any_record(stack: Stack) -> None:
    _create(stack, "gpt-4o-mini")
    checks = {
        "requests": "position(request_body, %(s)s) + position(response_body, %(s)s) "
        "+ position(error_message, %(s)s) > 0",
        "spans": "arrayExists(v -> position(v, %(s)s) > 0, attribute_values)",
        "breaker_events": "position(reason, %(s)s) > 0",
    }
    for secret in ("sk-up", "sk-backup-from-env", "sk-ant-up", "azure-up"):
        for table, where in checks.items():
            rows = stack.floopy.query(f"SELECT count() FROM {table} WHERE {where}", {"s": secret})
            assert rows == [(0,)], (table, secret)
    log = (stack.floopy.root / "gateway.log").read_text()
    assert all(s not in log for s in ("sk-backup-from-env", "sk-ant-up", "azure-up"))
