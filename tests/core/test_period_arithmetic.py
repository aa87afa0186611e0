"""Jumped period arithmetic agrees with the plain step-by-step definitions (spec §5.1, §5.2).

``periods`` finds the recurrence index containing an instant arithmetically (month distance,
floor division, or an estimate corrected) and lists resets by index; these properties compare
it with the definitions walked one period at a time: the k-th instant is ``anchor + k·interval``
computed from the anchor (clamped years, then months, then days and time), the period
containing ``t`` is ``[instant(k), instant(k+1))`` for the largest ``k`` with
``instant(k) <= t``, and the resets are what ``next_reset_after`` reaches step by step.
"""

from __future__ import annotations

import calendar
import itertools
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from allotment.ledger.core.model import CalendarDuration, PeriodSource, Recurrence, UsagePeriodEntry
from allotment.ledger.core.periods import (
    _instants_from,
    add_interval,
    current_period,
    next_after,
    next_reset_after,
    period_of,
    prev_before,
    recurrence_instant,
    reset_schedule,
    reset_times,
    reset_times_by_walking,
)
from allotment.ledger.core.timeutil import (
    add_months_clamped,
    ceil_to_minute,
    truncate_to_minute,
)
from tests.core.factory import T

STEPS = 400  # how far from the anchor an instant lies, in periods: keeps the walks short
UNITS = ("years", "months", "weeks", "days", "hours", "minutes")

instants = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2060, 12, 31), timezones=st.just(UTC)
)
# the same instants seen with an offset: arithmetic must compare instants, not wall clocks
zones = st.sampled_from(
    [UTC, UTC, UTC, timezone(timedelta(hours=-7)), timezone(timedelta(hours=5, minutes=30))]
)
minute_instants = instants.map(lambda t: t.replace(second=0, microsecond=0))


@st.composite
def month_end_anchors(draw: st.DrawFn) -> datetime:
    """Anchors on the 28th to 31st, where clamping happens."""
    year = draw(st.integers(1990, 2060))
    month = draw(st.integers(1, 12))
    last = calendar.monthrange(year, month)[1]
    day = draw(st.integers(28, last))
    return datetime(
        year, month, day, draw(st.integers(0, 23)), draw(st.integers(0, 59)), tzinfo=UTC
    )


anchors = st.one_of(minute_instants, month_end_anchors())


@st.composite
def intervals(draw: st.DrawFn) -> CalendarDuration:
    """Single units with multiples (P1M, P3M, P2W, PT6H...) and a few mixed ones."""
    single = st.builds(
        lambda unit, n: CalendarDuration(**{unit: n}), st.sampled_from(UNITS), st.integers(1, 3)
    )
    mixed = st.sampled_from(
        [
            CalendarDuration(years=1, months=1),
            CalendarDuration(months=1, days=2),
            CalendarDuration(hours=1, minutes=30),
            CalendarDuration(weeks=1, days=1),
            CalendarDuration(days=1, hours=12),
        ]
    )
    return draw(st.one_of(single, single, single, mixed))


@st.composite
def recurrences_and_instants(draw: st.DrawFn) -> tuple[Recurrence, datetime]:
    """A recurrence and an instant at most a few hundred periods from its anchor."""
    interval = draw(intervals())
    anchor = draw(anchors)
    k = draw(st.integers(-STEPS, STEPS))
    base = add_interval(anchor, interval, k)
    offset = draw(st.sampled_from([0, 0, 1, -1, 60, -60, 3600, 86399, -86399]))
    micro = draw(st.sampled_from([0, 0, 1, 999_999]))
    instant = base + timedelta(seconds=offset, microseconds=micro)
    return Recurrence(interval, anchor), instant.astimezone(draw(zones))


# --- the plain definitions -------------------------------------------------------------------


def plain_add_months(instant: datetime, months: int) -> datetime:
    """Month arithmetic with the day clamped to the target month's length (calendar module)."""
    month0 = instant.month - 1 + months
    year = instant.year + month0 // 12
    month = month0 % 12 + 1
    day = min(instant.day, calendar.monthrange(year, month)[1])
    return instant.replace(year=year, month=month, day=day)


def plain_instant(recurrence: Recurrence, k: int) -> datetime:
    """``anchor + k·interval``: years clamped, then months clamped, then days and time."""
    i = recurrence.interval
    result = plain_add_months(recurrence.anchor, 12 * i.years * k)
    result = plain_add_months(result, i.months * k)
    return result + timedelta(
        weeks=i.weeks * k, days=i.days * k, hours=i.hours * k, minutes=i.minutes * k
    )


def plain_index(recurrence: Recurrence, instant: datetime) -> int:
    """The largest k with ``instant(k) <= instant``, walking one period at a time from 0."""
    k = 0
    while plain_instant(recurrence, k) > instant:
        k -= 1
    while plain_instant(recurrence, k + 1) <= instant:
        k += 1
    return k


# --- properties ------------------------------------------------------------------------------


@given(anchors, st.integers(-1200, 1200))
def test_clamped_months_match_the_calendar(anchor: datetime, months: int) -> None:
    assert add_months_clamped(anchor, months) == plain_add_months(anchor, months)


@given(intervals(), anchors, st.integers(-500, 500))
def test_recurrence_instant_is_anchor_plus_k_intervals(
    interval: CalendarDuration, anchor: datetime, k: int
) -> None:
    recurrence = Recurrence(interval, anchor)
    assert recurrence_instant(recurrence, k) == plain_instant(recurrence, k)


@given(intervals(), anchors, st.integers(-500, 500))
def test_listed_instants_are_each_computed_from_the_anchor(
    interval: CalendarDuration, anchor: datetime, k: int
) -> None:
    recurrence = Recurrence(interval, anchor)
    listed = list(itertools.islice(_instants_from(recurrence, k), 40))
    assert listed == [plain_instant(recurrence, k + j) for j in range(40)]


@given(recurrences_and_instants())
def test_period_of_is_the_walked_period(case: tuple[Recurrence, datetime]) -> None:
    recurrence, instant = case
    k = plain_index(recurrence, instant)
    start, end = plain_instant(recurrence, k), plain_instant(recurrence, k + 1)
    period = period_of(recurrence, instant)
    assert (period.start, period.end) == (start, end)
    assert period.contains(instant)


@given(recurrences_and_instants())
def test_prev_and_next_match_the_walk(case: tuple[Recurrence, datetime]) -> None:
    recurrence, instant = case
    k = plain_index(recurrence, instant)
    on = plain_instant(recurrence, k) == instant
    assert prev_before(recurrence, instant, inclusive=True) == plain_instant(recurrence, k)
    assert prev_before(recurrence, instant, inclusive=False) == plain_instant(
        recurrence, k - 1 if on else k
    )
    assert next_after(recurrence, instant, inclusive=True) == plain_instant(
        recurrence, k if on else k + 1
    )
    assert next_after(recurrence, instant, inclusive=False) == plain_instant(recurrence, k + 1)


@st.composite
def timelines(draw: st.DrawFn) -> tuple[UsagePeriodEntry, ...]:
    """One to three entries (a creation, then resets or edits), sorted by start."""
    first = draw(minute_instants.filter(lambda t: t.year < 2050))
    entries = [UsagePeriodEntry(first, Recurrence(draw(intervals()), draw(anchors)))]
    start = first
    for _ in range(draw(st.integers(0, 2))):
        start = start + timedelta(minutes=draw(st.integers(0, 60 * 24 * 90)))
        anchor = draw(st.one_of(st.just(start), anchors))
        source = draw(st.sampled_from([PeriodSource.RESET, PeriodSource.EDIT]))
        entries.append(UsagePeriodEntry(start, Recurrence(draw(intervals()), anchor), source))
    return tuple(entries)


def _within(timeline: tuple[UsagePeriodEntry, ...], draw: st.DrawFn, days: int) -> datetime:
    minutes = draw(st.integers(-60 * 24 * 10, 60 * 24 * days))
    return timeline[0].start + timedelta(minutes=minutes)


@st.composite
def timeline_windows(
    draw: st.DrawFn,
) -> tuple[tuple[UsagePeriodEntry, ...], datetime, datetime]:
    """A timeline and a window ``(after, until]`` spanning up to a few hundred resets."""
    timeline = draw(timelines())
    after = _within(timeline, draw, 200)
    until = after + timedelta(minutes=draw(st.integers(0, 60 * 24 * 60)))
    return timeline, after, until


@given(timeline_windows())
def test_reset_schedule_lists_the_walked_resets(
    case: tuple[tuple[UsagePeriodEntry, ...], datetime, datetime],
) -> None:
    timeline, after, until = case
    resets, following = reset_schedule(timeline, after, until)
    assert resets == reset_times_by_walking(timeline, after, until)
    assert resets == reset_times(timeline, after, until)
    assert following == next_reset_after(timeline, until)


@given(timeline_windows())
def test_every_listed_reset_starts_a_period(
    case: tuple[tuple[UsagePeriodEntry, ...], datetime, datetime],
) -> None:
    timeline, after, until = case
    for reset in reset_times(timeline, after, until):
        assert current_period(timeline, reset).start == reset


@given(instants)
def test_minute_rounding_matches_its_definition(instant: datetime) -> None:
    floor = datetime(
        instant.year, instant.month, instant.day, instant.hour, instant.minute, tzinfo=UTC
    )
    assert truncate_to_minute(instant) == floor
    assert ceil_to_minute(instant) == (floor if floor == instant else floor + timedelta(minutes=1))


# --- named cases the properties generalise ---------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "anchor", "at", "start", "end"),
    [
        pytest.param(
            "P1M",
            "2016-01-31T12:00",
            "2026-02-28T12:00",
            "2026-02-28T12:00",
            "2026-03-31T12:00",
            id="jan31-anchor-ten-years-on-feb28-boundary",
        ),
        pytest.param(
            "P1M",
            "2016-01-31T12:00",
            "2026-02-28T11:59",
            "2026-01-31T12:00",
            "2026-02-28T12:00",
            id="jan31-anchor-minute-before-feb28-boundary",
        ),
        pytest.param(
            "P1D",
            "2016-11-24T06:00",
            "2026-11-24T09:00",
            "2026-11-24T06:00",
            "2026-11-25T06:00",
            id="daily-anchor-ten-years-back",
        ),
        pytest.param(
            "P1Y",
            "2016-02-29T00:00",
            "2027-02-28T00:00",
            "2027-02-28T00:00",
            "2028-02-29T00:00",
            id="leap-day-anchor-yearly-clamps-then-returns",
        ),
        pytest.param(
            "P1M",
            "2026-12-31T00:00",
            "2026-11-30T00:00",
            "2026-11-30T00:00",
            "2026-12-31T00:00",
            id="anchor-after-the-instant",
        ),
        pytest.param(
            "P1Y1M",
            "2024-02-29T00:00",
            "2025-03-28T00:00",
            "2025-03-28T00:00",
            "2026-04-28T00:00",
            id="years-then-months-clamp-separately",
        ),
    ],
)
def test_period_of_far_anchors(interval: str, anchor: str, at: str, start: str, end: str) -> None:
    period = period_of(Recurrence(CalendarDuration.parse(interval), T(anchor)), T(at))
    assert (period.start, period.end) == (T(start), T(end))
