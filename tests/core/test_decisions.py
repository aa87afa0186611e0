"""Where allotment deliberately differs from OpenMeter, each rule pinned by a test.

DESIGN D3 (deletion never moves money), D4 (edits and late voids), EntitlementReset (future
resets wait, resets not after the last one are no-ops), and reading at a grant's effectiveAt.
"""

from __future__ import annotations

from allotment.ledger.core.grants import effective_void_at
from allotment.ledger.core.model import EntitlementReset, IssueAfterReset
from allotment.ledger.core.periods import (
    ResetOutcome,
    apply_reset,
    current_period,
    edit_issue_after_reset,
    edit_preserve_overage,
    edit_soft_limit,
)
from tests.core.factory import D, T, grant, metered, value

JAN = metered("2024-01-01T00:00")


def test_reading_at_effective_at_shows_the_full_amount() -> None:
    # OpenMeter reports such a grant with balance 0 until the next minute (spec §12.12).
    result = value(JAN, "2024-01-10T00:00", [grant("g", 100, "2024-01-10T00:00")])
    assert (result.balance, result.has_access) == (D(100), True)


def test_future_void_takes_effect_when_it_arrives() -> None:
    g = grant("g", 100, "2024-01-01T00:00", void="2024-01-20T00:00")
    usage = {"2024-01-05T00:00": 30}
    before = value(JAN, "2024-01-19T23:59", [g], usage)
    assert (before.balance, before.valid_until) == (D(70), T("2024-01-20T00:00"))
    after = value(JAN, "2024-01-20T00:00", [g], usage)
    assert (after.balance, after.usage, after.total_available_grant_amount) == (D(0), D(30), D(30))


def test_void_at_deletion_keeps_burnt_usage_and_drops_only_the_unused_balance() -> None:
    g = grant("g", 100, "2024-01-01T00:00", void="2024-01-20T00:00")
    result = value(JAN, "2024-01-25T00:00", [g], {"2024-01-05T00:00": 30, "2024-01-22T00:00": 5})
    assert (result.balance, result.usage, result.overage) == (D(0), D(35), D(5))
    assert result.total_available_grant_amount == D(30)


def test_late_void_applies_at_the_current_period_start_and_never_rewrites_the_past() -> None:
    void_at = effective_void_at(JAN.usage_period, T("2024-01-10T00:00"), T("2024-02-05T00:00"))
    assert void_at == T("2024-02-01T00:00")
    g = grant("g", 100, "2024-01-01T00:00", void=void_at.isoformat())
    assert value(JAN, "2024-01-31T00:00", [g], {"2024-01-05T00:00": 30}).balance == D(70)
    assert value(JAN, "2024-02-05T00:00", [g], {"2024-01-05T00:00": 30}).balance == D(0)


def test_future_reset_waits_until_its_instant() -> None:
    reset = EntitlementReset(T("2024-01-15T00:00"))
    assert apply_reset(JAN, reset, T("2024-01-14T23:59")).outcome is ResetOutcome.SCHEDULED
    assert apply_reset(JAN, reset, T("2024-01-15T00:00")).outcome is ResetOutcome.APPLIED


def test_reset_not_after_the_last_reset_changes_nothing() -> None:
    applied = apply_reset(JAN, EntitlementReset(T("2024-01-15T00:00")), T("2024-01-16T00:00"))
    again = apply_reset(
        applied.entitlement, EntitlementReset(T("2024-01-10T00:00")), T("2024-01-16T00:00")
    )
    assert again.outcome is ResetOutcome.NOTHING_TO_RESET
    assert again.entitlement == applied.entitlement


def test_manual_reset_remembers_preserve_even_after_the_entitlement_flag_changes() -> None:
    ent = metered("2024-01-01T00:00", issue=50, preserve=False)
    usage = {"2024-01-10T00:00": 80}
    plan = apply_reset(
        ent, EntitlementReset(T("2024-01-15T00:00"), preserve_overage=True), T("2024-01-15T00:00")
    )
    reset_ent = edit_preserve_overage(plan.entitlement, False, T("2024-01-20T00:00"))
    result = value(reset_ent, "2024-01-21T00:00", (), usage)
    assert (result.balance, result.overage, result.usage) == (D(20), D(0), D(0))
    assert current_period(reset_ent.usage_period, T("2024-01-21T00:00")).end == T(
        "2024-02-15T00:00"
    )


def test_preserve_edit_applies_to_later_resets_only() -> None:
    ent = metered("2024-01-01T00:00", issue=50, preserve=False)
    usage = {"2024-01-10T00:00": 80, "2024-02-10T00:00": 80}
    edited = edit_preserve_overage(ent, True, T("2024-02-20T00:00"))
    assert value(edited, "2024-02-01T00:00", (), usage).balance == D(50)  # forgiven
    assert value(edited, "2024-03-01T00:00", (), usage).balance == D(20)  # preserved


def test_issue_after_reset_edit_changes_the_default_grant_from_the_next_period() -> None:
    ent = metered("2024-01-01T00:00", issue=100)
    edited = edit_issue_after_reset(ent, IssueAfterReset(D(40)), T("2024-01-10T00:00"))
    usage = {"2024-01-05T00:00": 30, "2024-02-05T00:00": 10}
    assert value(edited, "2024-01-20T00:00", (), usage).balance == D(70)
    feb = value(edited, "2024-02-06T00:00", (), usage)
    assert (feb.balance, feb.total_available_grant_amount) == (D(30), D(40))


def test_soft_limit_read_in_the_past_answers_with_the_old_value() -> None:
    ent = edit_soft_limit(JAN, True, T("2024-01-10T00:00"))
    assert value(ent, "2024-01-09T00:00").has_access is False
    assert value(ent, "2024-01-10T00:00").has_access is True
