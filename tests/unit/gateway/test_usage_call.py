"""The arguments of the usage script (``add_usage_call``), without a server: entries of one key
and day share their counters, each entry carries the bit that makes it count once."""

from __future__ import annotations

from gateway.clients.usage_counters import SEEN_BLOCK, SEEN_TTL_S, add_usage_call, usage_expiry_s
from gateway.domain import UsageEntry
from shared.redis_keys import RedisKeys

DAY_MS = 86_400_000
NOON = 20_000 * DAY_MS + DAY_MS // 2
KEYS = RedisKeys("p")


def _rows(args: list[str | int | float], counters: int) -> list[tuple[object, ...]]:
    rows = args[4 + counters :]
    return [tuple(rows[i : i + 5]) for i in range(0, len(rows), 5)]


def test_entries_of_one_key_and_day_share_their_counters() -> None:
    batch = [
        UsageEntry("k1", 10, None, NOON, org_id="o", origin="g", seq=0),
        UsageEntry("k2", 7, 0.5, NOON, org_id="o", origin="g", seq=1),
        UsageEntry("k1", 5, 0.25, NOON + 1000, org_id="o", origin="g", seq=2),
        UsageEntry("k1", 3, None, NOON + DAY_MS, org_id="o", origin="g", seq=3),  # next day
    ]
    keys, args = add_usage_call(KEYS, batch)
    assert keys == [
        "p:usage:seen:o:g:0",
        "p:usage:key:k1:d:20241004",
        "p:usage:key:k1:m:202410",
        "p:usage:key:k2:d:20241004",
        "p:usage:key:k2:m:202410",
        "p:usage:key:k1:d:20241005",
        "p:usage:key:k1:m:202410",
    ]
    assert args[:4] == [SEEN_TTL_S, 1, 6, 0]
    assert args[4:10] == [
        usage_expiry_s(NOON, False),
        usage_expiry_s(NOON, True),
        usage_expiry_s(NOON, False),
        usage_expiry_s(NOON, True),
        usage_expiry_s(NOON + DAY_MS, False),
        usage_expiry_s(NOON + DAY_MS, True),
    ]
    # bitmap, bit, day counter (the month is the next), tokens, cost (0: none)
    assert _rows(args, 6) == [
        (1, 0, 1, 10, 0),
        (1, 1, 3, 7, 0.5),
        (1, 2, 1, 5, 0.25),
        (1, 3, 5, 3, 0),
    ]


def test_identities_map_to_bitmaps_by_org_origin_and_block() -> None:
    batch = [
        UsageEntry("k", 1, None, NOON, org_id="a", origin="g", seq=SEEN_BLOCK - 1),
        UsageEntry("k", 1, None, NOON, org_id="a", origin="g", seq=SEEN_BLOCK),
        UsageEntry("k", 1, None, NOON, org_id="a", origin="h", seq=5),
        UsageEntry("j", 1, None, NOON, org_id="b", origin="g", seq=5),
    ]
    keys, args = add_usage_call(KEYS, batch)
    assert keys[:4] == [
        "p:usage:seen:a:g:0",
        "p:usage:seen:a:g:1",
        "p:usage:seen:a:h:0",
        "p:usage:seen:b:g:0",
    ]
    assert [(b, bit) for b, bit, *_ in _rows(args, 4)] == [
        (1, SEEN_BLOCK - 1),
        (2, 0),
        (3, 5),
        (4, 5),
    ]


def test_an_entry_without_identity_has_no_bitmap() -> None:
    keys, args = add_usage_call(KEYS, [UsageEntry("k", 4, 0.125, NOON)])
    assert args[1] == 0 and len(keys) == 2
    assert _rows(args, 2) == [(0, 0, 1, 4, 0.125)]


def test_on_a_cluster_every_key_carries_the_org_tag() -> None:
    keys, _ = add_usage_call(
        RedisKeys("p", cluster=True),
        [UsageEntry("k", 1, None, NOON, org_id="a", origin="g", seq=0)],
    )
    assert all("{a}" in key for key in keys)


def test_last_used_goes_with_the_entries_on_one_node() -> None:
    keys, args = add_usage_call(KEYS, [UsageEntry("k", 1, None, NOON)], {"k": NOON, "j": 5})
    assert keys == ["p:usage:key:k:d:20241004", "p:usage:key:k:m:202410", "p:key_last_used"]
    assert args[3] == 2 and args[6:10] == ["k", NOON, "j", 5]
    assert args[10:] == [0, 0, 1, 1, 0]
