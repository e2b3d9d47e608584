from __future__ import annotations

from gateway.clients.ratelimiter import Bucket
from gateway.clients.usage import UsageEntry, merge_usage
from gateway.policy.ratelimit import parse_policy

DAY_MS = 86_400_000
NOON = 20_000 * DAY_MS + DAY_MS // 2


def test_a_batch_adds_up_per_key_and_day() -> None:
    charge = Bucket("rl", parse_policy("1000;w=60;u=token"), 5, force=True)
    batch = [
        UsageEntry("k1", 10, None, NOON, (charge,), org_id="o"),
        UsageEntry("k1", 5, 0.25, NOON + 1000, org_id="o"),
        UsageEntry("k2", 7, 0.5, NOON, org_id="o"),
        UsageEntry("k1", 1, 0.5, NOON + 2000, org_id="o"),
        UsageEntry("k1", 3, None, NOON + DAY_MS, org_id="o"),  # the next day: its own counters
    ]
    assert merge_usage(batch) == [
        UsageEntry("k1", 16, 0.75, NOON + 2000, org_id="o"),
        UsageEntry("k2", 7, 0.5, NOON, org_id="o"),
        UsageEntry("k1", 3, None, NOON + DAY_MS, org_id="o"),
    ]


def test_entries_of_other_orgs_stay_apart() -> None:
    batch = [UsageEntry("k", 1, None, NOON, org_id="a"), UsageEntry("k", 2, None, NOON, org_id="b")]
    assert merge_usage(batch) == batch
