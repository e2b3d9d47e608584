from __future__ import annotations

import pytest

from ingester.stream_policy import (
    Batch,
    Cadence,
    ConsumerState,
    FlushPolicy,
    GroupPosition,
    consumers_to_forget,
    format_stream_id,
    next_stream_id,
    parse_stream_id,
    trim_bound,
)


def batch_of(n: int, first_at: float = 0.0) -> Batch:
    batch = Batch()
    for i in range(n):
        batch.add(f"1-{i}".encode(), b"{}", first_at)
    return batch


def test_empty_batch_is_never_due() -> None:
    assert not FlushPolicy(10, 1.0).due(Batch(), now=1e9)


def test_batch_due_on_size() -> None:
    policy = FlushPolicy(3, 60.0)
    assert not policy.due(batch_of(2), now=0.0)
    assert policy.due(batch_of(3), now=0.0)


def test_batch_due_on_age_of_first_entry() -> None:
    policy = FlushPolicy(100, 1.0)
    batch = batch_of(1, first_at=10.0)
    batch.add(b"2-0", b"{}", 10.9)  # later entries do not renew the age
    assert not policy.due(batch, now=10.99)
    assert policy.due(batch, now=11.0)


def test_read_block_waits_only_until_batch_comes_of_age() -> None:
    policy = FlushPolicy(100, 1.0)
    assert policy.read_block_ms(Batch(), now=5.0, block_ms=2000) == 2000
    assert policy.read_block_ms(batch_of(1, first_at=5.0), now=5.75, block_ms=2000) == 250
    # never 0: Redis reads BLOCK 0 as "forever"
    assert policy.read_block_ms(batch_of(1, first_at=0.0), now=50.0, block_ms=2000) == 1


def test_read_count_fills_the_batch_but_asks_for_at_least_one() -> None:
    policy = FlushPolicy(5, 1.0)
    assert policy.read_count(batch_of(2)) == 3
    assert policy.read_count(batch_of(7)) == 1


def test_clear_resets_age() -> None:
    batch = batch_of(2, first_at=3.0)
    batch.clear()
    assert (batch.ids, batch.payloads, batch.first_at) == ([], [], None)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(b"5-0", (5, 1)), ("5-9", (5, 10)), (f"7-{2**64 - 1}", (8, 0)), ("12", (12, 1))],
)
def test_next_stream_id(raw: bytes | str, expected: tuple[int, int]) -> None:
    assert next_stream_id(raw) == expected


def test_stream_ids_compare_numerically_not_as_text() -> None:
    assert parse_stream_id("10-0") > parse_stream_id("9-5")
    assert format_stream_id(parse_stream_id(b"1700000000000-42")) == "1700000000000-42"


def test_trim_bound_without_pending_is_past_last_delivered() -> None:
    assert trim_bound([GroupPosition("100-3", None)]) == (100, 4)


def test_trim_bound_keeps_oldest_pending_entry() -> None:
    assert trim_bound([GroupPosition("100-3", "90-0")]) == (90, 0)


def test_trim_bound_is_the_slowest_group() -> None:
    groups = [GroupPosition("100-3", None), GroupPosition("50-0", None)]
    assert trim_bound(groups) == (50, 1)


def test_nothing_trimmed_without_groups_or_deliveries() -> None:
    assert trim_bound([]) is None
    assert trim_bound([GroupPosition("0-0", None)]) is None


def test_only_quiet_consumers_with_nothing_pending_are_forgotten() -> None:
    consumers = [
        ConsumerState("me", 0, 10_000),
        ConsumerState("dead-empty", 0, 10_000),
        ConsumerState("dead-holding", 3, 10_000),
        ConsumerState("alive", 0, 10),
    ]
    assert consumers_to_forget(consumers, me="me", forget_after_ms=5_000) == ["dead-empty"]


def test_cadence_is_due_at_once_then_every_interval() -> None:
    cadence = Cadence(5.0)
    assert cadence.due(100.0)
    cadence.mark(100.0)
    assert not cadence.due(104.9)
    assert cadence.due(105.0)
