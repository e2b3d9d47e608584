from __future__ import annotations

import random

import pytest

from shared.spool.rotation import (
    Rotation,
    generation_name,
    parse_generation,
    parse_sealed,
    plan_rotation,
    replay_order,
    sealed_name,
)

CAP = 100


def test_no_rotation_while_the_batch_fits() -> None:
    assert not plan_rotation([60, None, None], 40, CAP, 3).needed


def test_no_rotation_of_an_empty_or_missing_file_even_for_an_oversized_batch() -> None:
    assert not plan_rotation([None], 500, CAP, 3).needed
    assert not plan_rotation([0, 10, 10], 500, CAP, 3).needed


def test_rotation_when_the_batch_would_pass_the_cap() -> None:
    assert plan_rotation([60, None, None], 41, CAP, 3) == Rotation(drop=None, renames=((0, 1),))


def test_full_cascade_drops_the_oldest_generation() -> None:
    plan = plan_rotation([90, 100, 100], 20, CAP, 3)
    assert plan == Rotation(drop=2, renames=((1, 2), (0, 1)))


def test_cascade_stops_at_the_first_gap_and_drops_nothing() -> None:
    plan = plan_rotation([90, None, 100], 20, CAP, 3)
    assert plan == Rotation(drop=None, renames=((0, 1),))
    plan = plan_rotation([90, 100, None, 100], 20, CAP, 4)
    assert plan == Rotation(drop=None, renames=((1, 2), (0, 1)))


def test_single_generation_drops_the_current_file() -> None:
    assert plan_rotation([90], 20, CAP, 1) == Rotation(drop=0, renames=())


def test_sizes_shorter_or_longer_than_generations() -> None:
    assert plan_rotation([90], 20, CAP, 3) == Rotation(drop=None, renames=((0, 1),))
    # a .jsonl.3 left by an older config with more generations is not part of this rotation
    assert plan_rotation([90, 1, 1, 1], 20, CAP, 3) == Rotation(drop=2, renames=((1, 2), (0, 1)))


@pytest.mark.parametrize(
    ("sizes", "batch", "cap", "generations"),
    [([1], 1, 0, 3), ([1], 1, 10, 0), ([1], -1, 10, 3)],
)
def test_invalid_arguments(sizes: list[int | None], batch: int, cap: int, generations: int) -> None:
    with pytest.raises(ValueError, match="required"):
        plan_rotation(sizes, batch, cap, generations)


def _simulate(batches: list[int], cap: int, generations: int) -> tuple[list[int | None], int, int]:
    """Apply the plans to files held as lists of batch sizes, checking every file after every
    append; return the final sizes, the bytes dropped and the largest total seen."""
    files: list[list[int] | None] = [None] * generations
    dropped = peak = 0
    for batch in batches:
        sizes = [None if f is None else sum(f) for f in files]
        plan = plan_rotation(sizes, batch, cap, generations)
        if plan.drop is not None:
            dropped += sizes[plan.drop] or 0
            files[plan.drop] = None
        for src, dst in plan.renames:
            assert files[dst] is None, "a rename must never overwrite a file"
            files[dst], files[src] = files[src], None
        files[0] = [*(files[0] or []), batch]
        for f in files:
            assert f is None or sum(f) <= cap or len(f) == 1, "over the cap by more than a batch"
        peak = max(peak, sum(sum(f) for f in files if f))
    return [None if f is None else sum(f) for f in files], dropped, peak


@pytest.mark.parametrize("seed", range(20))
def test_files_stay_within_generations_times_cap_and_bytes_are_conserved(seed: int) -> None:
    rng = random.Random(seed)
    cap, generations = rng.randint(50, 500), rng.randint(1, 4)
    batches = [rng.randint(1, cap) for _ in range(300)]
    sizes, dropped, peak = _simulate(batches, cap, generations)
    assert dropped > 0, "the run must be long enough to drop"
    assert all(s is None or 0 < s <= cap for s in sizes)
    assert peak <= generations * cap
    assert sum(s or 0 for s in sizes) + dropped == sum(batches)


@pytest.mark.parametrize("seed", range(10))
def test_oversized_batches_exceed_the_cap_by_at_most_one_batch_per_file(seed: int) -> None:
    rng = random.Random(seed)
    cap, generations = 100, 3
    batches = [rng.choice([rng.randint(1, 60), rng.randint(101, 400)]) for _ in range(200)]
    sizes, dropped, peak = _simulate(batches, cap, generations)
    assert peak <= generations * max(cap, *batches)
    assert sum(s or 0 for s in sizes) + dropped == sum(batches)


def test_generation_names_round_trip() -> None:
    for g in range(5):
        assert parse_generation("requests", generation_name("requests", g)) == g
    assert generation_name("spans", 0) == "spans.jsonl"
    assert generation_name("spans", 2) == "spans.jsonl.2"


@pytest.mark.parametrize(
    "name",
    [
        "requests.jsonl.lock",
        "requests.jsonl.0",
        "requests.jsonl.01",
        "requests.dropped.json",
        "requests.replaying",
        "spans.jsonl",
        "requests.jsonlx",
    ],
)
def test_other_files_are_not_generations(name: str) -> None:
    assert parse_generation("requests", name) is None


def test_sealed_names_round_trip_and_start_with_the_spool_prefix() -> None:
    name = sealed_name("requests", 1_700_000_000_123_456_789, 2)
    assert name.startswith("requests.jsonl")
    assert parse_sealed("requests", name) == (1_700_000_000_123_456_789, 2)
    assert parse_generation("requests", name) is None
    assert parse_sealed("spans", name) is None
    assert parse_sealed("requests", "requests.jsonl.2") is None


def test_replay_order_sealed_first_then_oldest_generation_first() -> None:
    names = [
        "requests.jsonl",
        "requests.jsonl.2",
        sealed_name("requests", 20, 0),
        "requests.jsonl.lock",
        sealed_name("requests", 10, 1),
        "requests.jsonl.1",
        sealed_name("requests", 10, 0),
        "spans.jsonl.1",
        "requests.replaying",
    ]
    assert replay_order("requests", names) == [
        sealed_name("requests", 10, 0),
        sealed_name("requests", 10, 1),
        sealed_name("requests", 20, 0),
        "requests.jsonl.2",
        "requests.jsonl.1",
        "requests.jsonl",
    ]


def test_sealed_names_sort_as_text_in_replay_order() -> None:
    names = [sealed_name("r", ns, rank) for ns in (9, 10, 1_000_000) for rank in (0, 1, 11)]
    assert sorted(names) == replay_order("r", names)
