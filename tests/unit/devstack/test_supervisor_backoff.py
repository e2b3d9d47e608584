from __future__ import annotations

from devstack.supervisor import next_backoff


def test_backoff_doubles_while_a_child_keeps_dying_and_resets_once_it_was_stable() -> None:
    failures, waits = 0, []
    for _ in range(7):
        failures, wait = next_backoff(failures, ran_for_s=0.5)
        waits.append(wait)
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert next_backoff(failures, ran_for_s=30.0) == (1, 1.0)
    assert next_backoff(3, ran_for_s=29.9) == (4, 8.0)
