from __future__ import annotations

import pytest

from gateway.policy.breaker import (
    ANY_ORG,
    Admission,
    BreakerConfig,
    BreakerState,
    BreakerStatus,
    admit,
    on_failure,
    on_success,
    recent_failures,
    to_event,
)

CFG = BreakerConfig(failure_threshold=3, window_s=10, cooldown_s=5, probe_timeout_s=4)


def fail_times(times: list[float], status: BreakerStatus | None = None) -> BreakerStatus:
    status = status or BreakerStatus()
    for t in times:
        status, _ = on_failure(status, t, CFG)
    return status


def test_opens_after_k_failures_within_window() -> None:
    status = fail_times([0, 1])
    assert status.state is BreakerState.CLOSED
    status, t = on_failure(status, 2, CFG)
    assert status.state is BreakerState.OPEN and status.opened_at == 2
    assert t is not None and (t.from_state, t.to_state, t.failure_count) == (
        BreakerState.CLOSED,
        BreakerState.OPEN,
        3,
    )
    assert "3 failures within 10s" in t.reason


def test_old_failures_fall_out_of_the_window() -> None:
    status = fail_times([0, 1, 11, 12])
    assert status.state is BreakerState.CLOSED
    assert recent_failures(status, 12, CFG) == (11, 12)


def test_closed_admits_and_success_changes_nothing() -> None:
    status = fail_times([0])
    assert admit(status, 1, CFG) == (Admission.ALLOW, status, None)
    assert on_success(status, 1, CFG) == (status, None)


def test_open_rejects_until_cooldown_then_one_probe() -> None:
    opened = fail_times([0, 1, 2])
    assert admit(opened, 6.9, CFG)[0] is Admission.REJECT
    decision, probing, t = admit(opened, 7, CFG)
    assert decision is Admission.PROBE and probing.state is BreakerState.HALF_OPEN
    assert t is not None and t.to_state is BreakerState.HALF_OPEN
    assert admit(probing, 8, CFG)[0] is Admission.REJECT  # probe in flight


def test_lost_probe_is_given_up_after_timeout() -> None:
    _, probing, _ = admit(fail_times([0, 1, 2]), 7, CFG)
    decision, again, t = admit(probing, 11, CFG)
    assert decision is Admission.PROBE and again.probe_started_at == 11 and t is None


def test_probe_success_closes() -> None:
    _, probing, _ = admit(fail_times([0, 1, 2]), 7, CFG)
    closed, t = on_success(probing, 8, CFG)
    assert closed == BreakerStatus()
    assert t is not None and (t.from_state, t.to_state) == (
        BreakerState.HALF_OPEN,
        BreakerState.CLOSED,
    )


def test_probe_failure_reopens_with_fresh_cooldown() -> None:
    _, probing, _ = admit(fail_times([0, 1, 2]), 7, CFG)
    reopened, t = on_failure(probing, 8, CFG)
    assert reopened.state is BreakerState.OPEN and reopened.opened_at == 8
    assert t is not None and t.reason == "probe failed"
    assert admit(reopened, 12.9, CFG)[0] is Admission.REJECT
    assert admit(reopened, 13, CFG)[0] is Admission.PROBE


def test_straggler_failure_while_open_does_not_extend_cooldown() -> None:
    opened = fail_times([0, 1, 2])
    later, t = on_failure(opened, 3, CFG)
    assert t is None and later.opened_at == 2 and later.state is BreakerState.OPEN


def test_failure_list_is_bounded() -> None:
    status = BreakerStatus()
    big = BreakerConfig(failure_threshold=50, window_s=10**9)
    for i in range(500):
        status, _ = on_failure(status, float(i), big)
    assert len(status.failures) == 100 and status.failures[-1] == 499
    with pytest.raises(ValueError, match="failure_threshold"):
        BreakerConfig(failure_threshold=10**6)


def test_transition_becomes_breaker_event_record() -> None:
    _, t = on_failure(fail_times([0, 1]), 2, CFG)
    assert t is not None
    event = to_event("openai", t, 2000)
    assert (event.provider, event.from_state, event.to_state, event.failure_count) == (
        "openai",
        "closed",
        "open",
        3,
    )
    assert event.created_at_ms == 2000 and len(event.event_id) == 36
    assert to_event("openai", t, 2000).event_id != event.event_id


MULTI = BreakerConfig(failure_threshold=3, window_s=10, cooldown_s=5, probe_timeout_s=4, min_orgs=2)


def test_one_orgs_answered_failures_never_open_the_provider_wide_breaker() -> None:
    status = BreakerStatus()
    for t in range(10):
        status, transition = on_failure(status, float(t), MULTI, "org-b")
        assert transition is None
    assert status.state is BreakerState.CLOSED and len(status.failures) == 10


def test_failures_from_two_orgs_open_it() -> None:
    status, _ = on_failure(BreakerStatus(), 0, MULTI, "org-b")
    status, _ = on_failure(status, 1, MULTI, "org-b")
    status, transition = on_failure(status, 2, MULTI, "org-c")
    assert status.state is BreakerState.OPEN
    assert transition is not None and "from 2 orgs" in transition.reason


def test_a_failure_no_request_can_cause_counts_for_every_org() -> None:
    status, _ = on_failure(BreakerStatus(), 0, MULTI, "org-b")
    status, _ = on_failure(status, 1, MULTI, ANY_ORG)
    status, _ = on_failure(status, 2, MULTI, ANY_ORG)
    assert status.state is BreakerState.OPEN


def test_failure_orgs_age_out_with_their_failures() -> None:
    status, _ = on_failure(BreakerStatus(), 0, MULTI, "org-c")
    status, _ = on_failure(status, 20, MULTI, "org-b")  # org-c's failure left the window
    status, _ = on_failure(status, 21, MULTI, "org-b")
    assert status.failure_orgs == ("org-b", "org-b") and status.state is BreakerState.CLOSED
    # a state stored before orgs were kept still decides
    old = BreakerStatus(failures=(20.0, 21.0))
    opened, _ = on_failure(old, 22, MULTI, "org-b")
    assert opened.failure_orgs == ("", "", "org-b") and opened.state is BreakerState.OPEN
