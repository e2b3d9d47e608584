from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ingester.settings import IngesterSettings, default_consumer_name


def test_defaults_are_consistent() -> None:
    settings = IngesterSettings()
    assert settings.spool_cap_bytes == 100 * 2**20
    assert settings.spool_generations == 3
    assert settings.claim_min_idle_s >= 2 * settings.max_hold_s


def test_env_prefix_and_nested_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOOPY_INGESTER_CLICKHOUSE__PORT", "9123")
    monkeypatch.setenv("FLOOPY_INGESTER_REDIS__KEY_PREFIX", "t1")
    monkeypatch.setenv("FLOOPY_INGESTER_SPOOL_DIR", "/tmp/spool-x")
    monkeypatch.setenv("FLOOPY_INGESTER_BATCH_RECORDS", "17")
    settings = IngesterSettings()
    assert settings.clickhouse.port == 9123
    assert settings.clickhouse.host == "127.0.0.1"
    assert settings.redis.key_prefix == "t1"
    assert settings.spool_dir == Path("/tmp/spool-x")
    assert settings.batch_records == 17


def test_init_overrides_merge_with_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOOPY_INGESTER_CLICKHOUSE__HOST", "ch.internal")
    settings = IngesterSettings(clickhouse={"port": 9001})  # type: ignore[arg-type]
    assert (settings.clickhouse.host, settings.clickhouse.port) == ("ch.internal", 9001)


def test_claim_min_idle_must_exceed_what_a_live_consumer_holds() -> None:
    with pytest.raises(ValidationError, match="claim_min_idle_s"):
        IngesterSettings(claim_min_idle_s=5.0, batch_age_s=10.0)


def test_insert_budget_grows_with_attempts_and_timeouts() -> None:
    short = IngesterSettings(insert_attempts=1)
    long = IngesterSettings(insert_attempts=3)
    assert long.insert_budget_s > short.insert_budget_s
    assert short.insert_budget_s >= (
        short.clickhouse.connect_timeout_s + short.clickhouse.send_receive_timeout_s
    )


def test_consumer_names_are_unique_per_process_and_call() -> None:
    assert default_consumer_name() != default_consumer_name()
    assert IngesterSettings().consumer_name != IngesterSettings().consumer_name


def test_arq_worker_settings_are_built_from_env_when_looked_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ingester.worker

    monkeypatch.setenv("FLOOPY_INGESTER_REDIS__URL", "redis://10.1.2.3:6380/4")
    monkeypatch.setenv("FLOOPY_INGESTER_REDIS__KEY_PREFIX", "px")
    worker_settings = ingester.worker.WorkerSettings
    assert worker_settings.redis_settings.host == "10.1.2.3"
    assert (worker_settings.redis_settings.port, worker_settings.redis_settings.database) == (
        6380,
        4,
    )
    assert worker_settings.queue_name == "px:arq:queue"
    assert worker_settings.ctx["settings"].redis.key_prefix == "px"
    assert len(worker_settings.functions) >= 1  # arq refuses to start without one
