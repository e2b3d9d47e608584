"""Retention planning: which partitions are dropped whole and which orgs get a delete."""

from __future__ import annotations

from ingester.retention import cutoff_for, delete_sql, plan_retention, ttl_sql
from ingester.rollup_sql import DAY

NOW = 1_700_000_000
TODAY = NOW - NOW % DAY


def test_cutoff_is_start_of_today_minus_days() -> None:
    assert cutoff_for(30, NOW) == TODAY - 30 * DAY
    assert cutoff_for(0, NOW) == TODAY


def test_partition_is_dropped_only_when_every_org_in_it_expired() -> None:
    cut_a, cut_b = TODAY - 7 * DAY, TODAY - 90 * DAY
    survey = [
        ("202301", "a", TODAY - 400 * DAY, TODAY - 380 * DAY),
        ("202301", "b", TODAY - 400 * DAY, TODAY - 370 * DAY),
        ("202310", "a", TODAY - 40 * DAY, TODAY - 20 * DAY),
        ("202310", "b", TODAY - 40 * DAY, TODAY - 20 * DAY),
    ]
    plan = plan_retention(survey, {"a": cut_a, "b": cut_b}, default_cutoff=TODAY - 30 * DAY)
    assert plan.drop_partitions == ("202301",)
    assert dict(plan.delete_before) == {"a": cut_a}


def test_orgs_without_a_setting_use_the_default() -> None:
    survey = [("202310", "x", TODAY - 40 * DAY, TODAY - DAY)]
    plan = plan_retention(survey, {}, default_cutoff=TODAY - 30 * DAY)
    assert plan.drop_partitions == ()
    assert dict(plan.delete_before) == {"x": TODAY - 30 * DAY}


def test_nothing_expired_means_nothing_to_do() -> None:
    survey = [("202310", "x", TODAY - 3 * DAY, TODAY)]
    plan = plan_retention(survey, {}, default_cutoff=TODAY - 30 * DAY)
    assert plan.drop_partitions == () and not plan.delete_before


def test_delete_sql_is_one_parameterised_mutation() -> None:
    sql = delete_sql("db", "requests", "org_id", 2)
    assert sql.startswith("ALTER TABLE `db`.`requests` DELETE WHERE ")
    assert "(`org_id` = %(o0)s AND created_at < toDateTime(%(c0)s))" in sql
    assert " OR (`org_id` = %(o1)s" in sql
    assert delete_sql("db", "breaker_events", None, 1).endswith(
        "WHERE created_at < toDateTime(%(c0)s)"
    )


def test_ttl_sql() -> None:
    assert ttl_sql("db", "spans", 31) == (
        "ALTER TABLE `db`.`spans` MODIFY TTL created_at + toIntervalDay(31)"
    )
