"""Grant rules: expiration, activity, burn order, voids, default grants (spec §7, D4, D8)."""

from __future__ import annotations

import pytest

from allotment.ledger.core.grants import (
    active_end,
    burn_order,
    default_grants,
    effective_void_at,
    expiration_instant,
    expires_at,
    grant_is_active_at,
    next_recurrence_after,
    with_default_grants,
)
from allotment.ledger.core.model import Expiration, ExpirationUnit, IssueAfterReset
from allotment.ledger.core.periods import edit_issue_after_reset
from tests.core.factory import D, T, grant, metered

H, DAY, WEEK, MONTH, YEAR = (
    ExpirationUnit.HOUR,
    ExpirationUnit.DAY,
    ExpirationUnit.WEEK,
    ExpirationUnit.MONTH,
    ExpirationUnit.YEAR,
)


@pytest.mark.parametrize(
    ("effective", "unit", "count", "expected"),
    [
        pytest.param("2025-01-31T10:00", MONTH, 1, "2025-03-03T10:00", id="jan31-month-overflows"),
        pytest.param("2024-01-31T10:00", MONTH, 1, "2024-03-02T10:00", id="leap-jan31-month"),
        pytest.param("2024-02-29T00:00", YEAR, 1, "2025-03-01T00:00", id="feb29-year"),
        pytest.param("2024-01-01T00:00", H, 36, "2024-01-02T12:00", id="hours"),
        pytest.param("2024-01-01T00:00", DAY, 31, "2024-02-01T00:00", id="days"),
        pytest.param("2024-01-01T00:00", WEEK, 2, "2024-01-15T00:00", id="weeks"),
    ],
)
def test_expiration_uses_overflow_arithmetic(
    effective: str, unit: ExpirationUnit, count: int, expected: str
) -> None:
    assert expiration_instant(T(effective), Expiration(unit, count)) == T(expected)


def test_grant_without_expiration_never_expires() -> None:
    g = grant("g", 10, "2024-01-01T00:00")
    assert expires_at(g) is None
    assert active_end(g) is None
    assert grant_is_active_at(g, T("2124-01-01T00:00"))


@pytest.mark.parametrize(
    ("at", "active"),
    [
        pytest.param("2023-12-31T23:59", False, id="before-effective"),
        pytest.param("2024-01-01T00:00", True, id="at-effective"),
        pytest.param("2024-01-01T23:59", True, id="last-minute"),
        pytest.param("2024-01-02T00:00", False, id="at-expiry"),
    ],
)
def test_activity_window_is_half_open(at: str, active: bool) -> None:
    g = grant("g", 10, "2024-01-01T00:00", expires=(DAY, 1))
    assert grant_is_active_at(g, T(at)) is active


def test_void_before_effective_means_never_active() -> None:
    g = grant("g", 10, "2024-01-10T00:00", void="2024-01-05T00:00")
    assert active_end(g) == T("2024-01-10T00:00")
    assert not grant_is_active_at(g, T("2024-01-10T00:00"))


def test_future_void_ends_activity_when_it_arrives() -> None:
    g = grant("g", 10, "2024-01-01T00:00", void="2024-03-01T00:00")
    assert grant_is_active_at(g, T("2024-02-29T23:59"))
    assert not grant_is_active_at(g, T("2024-03-01T00:00"))


def test_void_earlier_than_current_period_applies_at_period_start() -> None:
    ent = metered("2024-01-01T00:00")
    period = ent.usage_period
    assert effective_void_at(period, T("2024-01-10T00:00"), T("2024-02-05T00:00")) == T(
        "2024-02-01T00:00"
    )
    assert effective_void_at(period, T("2024-02-03T00:00:45Z"), T("2024-02-05T00:00")) == T(
        "2024-02-03T00:00"
    )
    assert effective_void_at(period, T("2024-04-01T00:00"), T("2024-02-05T00:00")) == T(
        "2024-04-01T00:00"
    )


def test_burn_order_matches_openmeter_prioritize_grants() -> None:
    base = "2024-01-01T10:00"
    grants = [
        grant("lower-priority", 1, base, priority=2, created="2024-01-01T09:00"),
        grant("no-expiration", 1, base, priority=1, created="2024-01-01T09:00"),
        grant("later-expiration", 1, base, priority=1, expires=(H, 2), created="2024-01-01T09:00"),
        grant("cursor-b", 1, base, priority=1, expires=(H, 1), created="2024-01-01T09:00"),
        grant("cursor-a", 1, base, priority=1, expires=(H, 1), created="2024-01-01T09:00"),
        grant("created-first", 1, base, priority=1, expires=(H, 1), created="2024-01-01T08:00"),
    ]
    assert [g.id for g in burn_order(grants)] == [
        "created-first",
        "cursor-a",
        "cursor-b",
        "later-expiration",
        "no-expiration",
        "lower-priority",
    ]


def test_absent_priority_is_zero_and_burns_before_one() -> None:
    default = grant("default-priority", 1, "2024-01-01T00:00", created="2024-01-02T00:00")
    one = grant("priority-one", 1, "2024-01-01T00:00", priority=1)
    assert default.priority == 0
    assert [g.id for g in burn_order([one, default])] == ["default-priority", "priority-one"]


def test_absent_max_rollover_is_the_amount() -> None:
    assert grant("g", 70, "2024-01-01T00:00").rollover_cap == D(70)
    assert grant("g", 70, "2024-01-01T00:00", max_rollover=0).rollover_cap == D(0)


def test_next_recurrence_only_while_active() -> None:
    g = grant("g", 10, "2024-01-01T00:00", recurrence=("DAY", "2024-01-01T00:00"), expires=(DAY, 3))
    assert next_recurrence_after(g, T("2024-01-01T00:00")) == T("2024-01-02T00:00")
    assert next_recurrence_after(g, T("2024-01-03T00:00")) is None


def test_default_grant_identity_priority_and_refill() -> None:
    ent = metered("2024-01-01T00:00", issue=100, issue_priority=3)
    (g,) = default_grants(ent)
    assert (g.amount, g.priority, g.effective_at) == (D(100), 3, T("2024-01-01T00:00"))
    assert (g.min_rollover_amount, g.max_rollover_amount, g.expiration) == (D(100), D(100), None)
    assert g.annotations == {"issueAfterReset": "true"}
    assert default_grants(ent) == (g,)  # same id on every computation
    other = metered("2024-01-01T00:00", issue=100, entitlement_id="ent-2")
    assert default_grants(other)[0].id != g.id


def test_default_grant_changes_at_next_boundary_after_edit() -> None:
    ent = metered("2024-01-01T00:00", issue=100)
    edited = edit_issue_after_reset(ent, IssueAfterReset(D(40)), T("2024-01-10T00:00"))
    first, second = default_grants(edited)
    assert first.void_at == T("2024-02-01T00:00")
    assert (second.amount, second.effective_at) == (D(40), T("2024-02-01T00:00"))
    removed = edit_issue_after_reset(ent, None, T("2024-01-10T00:00"))
    assert [g.void_at for g in default_grants(removed)] == [T("2024-02-01T00:00")]


def test_negative_grants_are_ignored() -> None:
    ent = metered("2024-01-01T00:00")
    kept = with_default_grants(ent, [grant("neg", -5, "2024-01-01T00:00")])
    assert kept == ()
