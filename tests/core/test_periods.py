"""Usage periods: recurrence arithmetic, the timeline, resets and edits (spec §5, §10, D4)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import pytest

from allotment.ledger.core.model import (
    CalendarDuration,
    EntitlementReset,
    IssueAfterReset,
    PeriodSource,
    Recurrence,
    Versioned,
)
from allotment.ledger.core.periods import (
    Period,
    ResetOutcome,
    add_interval,
    apply_reset,
    current_period,
    edit_interval,
    edit_issue_after_reset,
    edit_preserve_overage,
    edit_soft_limit,
    last_reset,
    last_reset_at,
    next_after,
    period_of,
    prev_before,
    recurrence_instant,
    reset_times,
)
from tests.core.factory import D, T, metered

MONTHLY_JAN31 = Recurrence(CalendarDuration.parse("MONTH"), T("2025-01-31T15:00"))


def test_interval_parsing_accepts_enums_and_iso() -> None:
    assert CalendarDuration.parse("month") == CalendarDuration(months=1)
    assert CalendarDuration.parse("P2W") == CalendarDuration(weeks=2)
    assert CalendarDuration.parse("PT6H").iso() == "PT6H"
    assert CalendarDuration.parse("P1Y").enum_name() == "YEAR"
    with pytest.raises(ValueError):
        CalendarDuration.parse("P")
    with pytest.raises(ValueError):
        CalendarDuration.parse("FORTNIGHT")


def test_monthly_recurrence_from_jan31_clamps_every_month() -> None:
    instants = [recurrence_instant(MONTHLY_JAN31, k).date().isoformat() for k in range(1, 10)]
    assert instants == [
        "2025-02-28",
        "2025-03-31",
        "2025-04-30",
        "2025-05-31",
        "2025-06-30",
        "2025-07-31",
        "2025-08-31",
        "2025-09-30",
        "2025-10-31",
    ]


@pytest.mark.parametrize(
    ("anchor", "at", "start", "end"),
    [
        pytest.param(
            "2025-01-31T15:00",
            "2025-08-13T20:00",
            "2025-07-31T15:00",
            "2025-08-31T15:00",
            id="jan31-anchor-august",
        ),
        pytest.param(
            "2025-01-31T15:00",
            "2025-09-30T15:00",
            "2025-09-30T15:00",
            "2025-10-31T15:00",
            id="jan31-anchor-at-instant",
        ),
        pytest.param(
            "2025-01-30T15:00",
            "2025-02-13T20:00",
            "2025-01-30T15:00",
            "2025-02-28T15:00",
            id="jan30-anchor-february",
        ),
        pytest.param(
            "2025-01-31T15:00",
            "2024-12-01T00:00",
            "2024-11-30T15:00",
            "2024-12-31T15:00",
            id="before-anchor",
        ),
    ],
)
def test_period_at_matches_openmeter(anchor: str, at: str, start: str, end: str) -> None:
    recurrence = Recurrence(CalendarDuration.parse("MONTH"), T(anchor))
    assert period_of(recurrence, T(at)) == Period(T(start), T(end))


def test_next_after_and_prev_before_inclusive_and_exclusive() -> None:
    at = T("2025-02-28T15:00")
    assert next_after(MONTHLY_JAN31, at, inclusive=True) == at
    assert next_after(MONTHLY_JAN31, at, inclusive=False) == T("2025-03-31T15:00")
    assert prev_before(MONTHLY_JAN31, at, inclusive=True) == at
    assert prev_before(MONTHLY_JAN31, at, inclusive=False) == T("2025-01-31T15:00")


def test_interval_components_apply_years_months_then_days() -> None:
    duration = CalendarDuration(years=1, months=1, days=1, hours=1)
    assert add_interval(T("2024-02-29T00:00"), duration) == T("2025-03-29T01:00")


def test_first_period_starts_at_measure_usage_from() -> None:
    ent = metered("2024-01-20T00:00", anchor="2024-01-01T00:00")
    assert current_period(ent.usage_period, T("2024-01-25T00:00")) == Period(
        T("2024-01-20T00:00"), T("2024-02-01T00:00")
    )
    assert current_period(ent.usage_period, T("2024-02-03T00:00")) == Period(
        T("2024-02-01T00:00"), T("2024-03-01T00:00")
    )
    # before the first entry the first period is reported
    assert current_period(ent.usage_period, T("2023-12-01T00:00")).start == T("2024-01-20T00:00")


@pytest.mark.parametrize(
    ("retain", "expected_end"),
    [
        pytest.param(True, "2024-02-01T00:00", id="retain-anchor"),
        pytest.param(False, "2024-02-15T00:00", id="new-anchor"),
    ],
)
def test_manual_reset_starts_a_period(retain: bool, expected_end: str) -> None:
    ent = metered("2024-01-01T00:00")
    plan = apply_reset(ent, EntitlementReset(T("2024-01-15T00:00"), retain), T("2024-01-20T00:00"))
    assert plan.outcome is ResetOutcome.APPLIED
    period = current_period(plan.entitlement.usage_period, T("2024-01-16T00:00"))
    assert period == Period(T("2024-01-15T00:00"), T(expected_end))
    assert last_reset(plan.entitlement) == T("2024-01-15T00:00")


def test_interval_changes_through_resets() -> None:
    ent = metered("2024-01-01T00:00")
    week = replace(
        ent,
        usage_period=(
            *ent.usage_period,
            replace(
                ent.usage_period[0],
                start=T("2024-01-10T00:00"),
                recurrence=Recurrence(CalendarDuration.parse("P1W"), T("2024-01-10T00:00")),
                source=PeriodSource.RESET,
            ),
        ),
    )
    day = replace(
        week,
        usage_period=(
            *week.usage_period,
            replace(
                week.usage_period[1],
                start=T("2024-01-20T00:00"),
                recurrence=Recurrence(CalendarDuration.parse("P1D"), T("2024-01-20T00:00")),
            ),
        ),
    )
    resets = reset_times(day.usage_period, T("2024-01-01T00:00"), T("2024-01-22T00:00"))
    assert [r.isoformat()[:10] for r in resets] == [
        "2024-01-10",
        "2024-01-17",
        "2024-01-20",
        "2024-01-21",
        "2024-01-22",
    ]


def test_reset_timeline_excludes_start_and_includes_end() -> None:
    ent = metered("2024-01-01T00:00")
    assert reset_times(ent.usage_period, T("2024-01-01T00:00"), T("2024-03-01T00:00")) == (
        T("2024-02-01T00:00"),
        T("2024-03-01T00:00"),
    )


@pytest.mark.parametrize(
    ("effective", "now", "outcome"),
    [
        pytest.param("2024-01-15T00:00", "2024-01-20T00:00", ResetOutcome.APPLIED, id="applied"),
        pytest.param(
            "2024-02-01T00:00",
            "2024-02-01T00:00",
            ResetOutcome.APPLIED,
            id="at-programmatic-boundary",
        ),
        pytest.param(
            "2024-01-25T00:00", "2024-01-20T00:00", ResetOutcome.SCHEDULED, id="future-waits"
        ),
        pytest.param(
            "2024-01-01T00:00",
            "2024-01-20T00:00",
            ResetOutcome.NOTHING_TO_RESET,
            id="at-measure-usage-from",
        ),
        pytest.param(
            "2024-01-15T00:00",
            "2024-02-10T00:00",
            ResetOutcome.BEFORE_CURRENT_PERIOD,
            id="previous-period",
        ),
    ],
)
def test_manual_reset_outcomes(effective: str, now: str, outcome: ResetOutcome) -> None:
    plan = apply_reset(metered("2024-01-01T00:00"), EntitlementReset(T(effective)), T(now))
    assert plan.outcome is outcome
    if outcome is not ResetOutcome.APPLIED:
        assert plan.entitlement == metered("2024-01-01T00:00")


def test_reset_not_after_last_reset_is_a_no_op() -> None:
    ent = metered("2024-01-01T00:00")
    first = apply_reset(ent, EntitlementReset(T("2024-01-15T00:00")), T("2024-01-20T00:00"))
    again = apply_reset(
        first.entitlement, EntitlementReset(T("2024-01-15T00:00:40Z")), T("2024-01-20T00:00")
    )
    assert again.outcome is ResetOutcome.NOTHING_TO_RESET
    assert again.entitlement == first.entitlement


def test_reset_remembers_its_preserve_flag() -> None:
    ent = metered("2024-01-01T00:00", preserve=False)
    explicit = apply_reset(
        ent, EntitlementReset(T("2024-01-15T00:00"), preserve_overage=True), T("2024-01-16T00:00")
    )
    default = apply_reset(ent, EntitlementReset(T("2024-01-15T00:00")), T("2024-01-16T00:00"))
    assert explicit.entitlement.usage_period[-1].preserve_overage is True
    assert default.entitlement.usage_period[-1].preserve_overage is False


def test_interval_edit_takes_effect_at_next_boundary() -> None:
    ent = metered("2024-01-01T00:00")
    edited = edit_interval(ent, CalendarDuration.parse("WEEK"), T("2024-01-10T00:00"))
    assert current_period(edited.usage_period, T("2024-01-20T00:00")) == Period(
        T("2024-01-01T00:00"), T("2024-02-01T00:00")
    )
    assert current_period(edited.usage_period, T("2024-02-09T00:00")) == Period(
        T("2024-02-08T00:00"), T("2024-02-15T00:00")
    )
    back = edit_interval(edited, CalendarDuration.parse("MONTH"), T("2024-01-11T00:00"))
    assert back.usage_period == ent.usage_period


def test_reset_moves_pending_interval_edit_to_the_new_boundary() -> None:
    ent = edit_interval(
        metered("2024-01-01T00:00"), CalendarDuration.parse("WEEK"), T("2024-01-05T00:00")
    )
    plan = apply_reset(ent, EntitlementReset(T("2024-01-15T00:00")), T("2024-01-16T00:00"))
    starts = [e.start for e in plan.entitlement.usage_period]
    assert starts == [T("2024-01-01T00:00"), T("2024-01-15T00:00"), T("2024-02-15T00:00")]


def test_issue_after_reset_edit_starts_at_next_boundary() -> None:
    ent = metered("2024-01-01T00:00", issue=100)
    edited = edit_issue_after_reset(ent, IssueAfterReset(D(50)), T("2024-01-10T00:00"))
    assert edited.issue_after_reset[-1] == Versioned(T("2024-02-01T00:00"), IssueAfterReset(D(50)))


def test_soft_limit_and_preserve_edits_are_versioned_from_the_edit() -> None:
    ent = metered("2024-01-01T00:00")
    soft = edit_soft_limit(ent, True, T("2024-01-10T12:00"))
    assert soft.soft_limit_at(T("2024-01-10T11:59")) is False
    assert soft.soft_limit_at(T("2024-01-10T12:00")) is True
    keep = edit_preserve_overage(ent, True, T("2024-01-10T12:00"))
    assert keep.preserve_overage_at(T("2024-01-10T00:00")) is False
    assert keep.preserve_overage_at(T("2024-02-01T00:00")) is True


def test_dates_are_aware() -> None:
    assert all(isinstance(e.start, datetime) and e.start.tzinfo for e in metered().usage_period)


def test_interval_edit_before_measurement_starts_changes_the_first_period() -> None:
    ent = metered("2024-03-01T00:00")
    edited = edit_interval(ent, CalendarDuration.parse("WEEK"), T("2024-02-01T00:00"))
    assert len(edited.usage_period) == 1
    assert current_period(edited.usage_period, T("2024-03-02T00:00")) == Period(
        T("2024-03-01T00:00"), T("2024-03-08T00:00")
    )


def test_last_reset_at_includes_programmatic_boundaries() -> None:
    ent = metered("2024-01-01T00:00")
    assert last_reset(ent) == T("2024-01-01T00:00")
    assert last_reset_at(ent, T("2024-03-15T00:00")) == T("2024-03-01T00:00")
