"""Usage periods: recurrence arithmetic, the usage-period timeline and its edits (spec §5, §10).

Role: compute recurrence instants (clamped month/year arithmetic, always from the anchor), the
period containing an instant, the reset timeline the engine replays, and the pure edits that
append timeline entries: manual resets (``apply_reset``) and interval edits (``edit_interval``,
DESIGN D4: from the next period boundary).

Must not: read the clock, log, or do I/O; it never decides balances (see ``engine``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from .model import (
    CalendarDuration,
    Entitlement,
    EntitlementReset,
    IssueAfterReset,
    PeriodSource,
    Recurrence,
    UsagePeriodEntry,
    Versioned,
    value_at,
)
from .timeutil import add_months_clamped, month_length, require_utc, truncate_to_minute

__all__ = [
    "Period",
    "ResetOutcome",
    "ResetPlan",
    "add_interval",
    "apply_reset",
    "current_period",
    "edit_interval",
    "edit_issue_after_reset",
    "edit_preserve_overage",
    "edit_soft_limit",
    "entry_at",
    "is_reset_instant",
    "last_reset",
    "last_reset_at",
    "new_usage_period",
    "next_after",
    "next_reset_after",
    "period_of",
    "preserve_overage_for_reset",
    "prev_before",
    "recurrence_instant",
    "reset_schedule",
    "reset_times",
    "reset_times_by_walking",
]


_BEGINNING = datetime.min.replace(tzinfo=UTC)
_ZERO_DURATION = timedelta(0)


@dataclass(frozen=True)
class Period:
    """A half-open interval ``[start, end)``."""

    start: datetime
    end: datetime

    def contains(self, instant: datetime) -> bool:
        """Tell whether ``start <= instant < end``."""
        return self.start <= instant < self.end


# --- recurrence arithmetic -------------------------------------------------------------------


def add_interval(instant: datetime, interval: CalendarDuration, times: int = 1) -> datetime:
    """Return ``instant + times·interval`` with clamped years and months (spec §5.1).

    Components apply in the order years, months, weeks+days (calendar days), then time.
    """
    result = instant
    if interval.years:
        result = add_months_clamped(result, 12 * interval.years * times)
    if interval.months:
        result = add_months_clamped(result, interval.months * times)
    days = (7 * interval.weeks + interval.days) * times
    seconds = (3600 * interval.hours + 60 * interval.minutes + interval.seconds) * times
    if days or seconds:
        return result + timedelta(days=days, seconds=seconds)
    return result


def _approximate_seconds(interval: CalendarDuration) -> float:
    days = 365.2425 * interval.years + 30.436875 * interval.months + 7 * interval.weeks
    days += interval.days
    return days * 86400 + 3600 * interval.hours + 60 * interval.minutes + interval.seconds


def recurrence_instant(recurrence: Recurrence, k: int) -> datetime:
    """Return ``anchor + k·interval`` (k may be negative)."""
    return add_interval(recurrence.anchor, recurrence.interval, k)


def _month_step(interval: CalendarDuration) -> int:
    """Return the months per step of a years-only or months-only interval, else 0."""
    if interval.weeks or interval.days or interval.hours or interval.minutes or interval.seconds:
        return 0
    if interval.years and interval.months:
        return 0  # clamped twice (years, then months): not one month count
    return 12 * interval.years + interval.months


def _fixed_step(interval: CalendarDuration) -> timedelta | None:
    """Return the length of an interval without years or months, else None."""
    if interval.years or interval.months:
        return None
    days = 7 * interval.weeks + interval.days
    return timedelta(
        days=days, seconds=3600 * interval.hours + 60 * interval.minutes + interval.seconds
    )


def _later_in_month(anchor: datetime, instant: datetime) -> bool:
    """Tell whether ``anchor`` moved to ``instant``'s month (day clamped) lies after ``instant``."""
    day = anchor.day
    if day > 28:
        day = min(day, month_length(instant.year, instant.month))
    if day != instant.day:
        return day > instant.day
    return (anchor.hour, anchor.minute, anchor.second, anchor.microsecond) > (
        instant.hour,
        instant.minute,
        instant.second,
        instant.microsecond,
    )


def _index_at_or_before(recurrence: Recurrence, instant: datetime) -> int:
    """Return the largest k with ``recurrence_instant(k) <= instant``, without walking.

    Months-only and years-only intervals: the k-th instant lies in the calendar month
    ``anchor's + k·step`` (clamping never leaves the month), so ``k = ⌊month distance / step⌋``,
    less one when that instant is later in the same month than ``instant``. Intervals without
    years or months have a fixed length: an exact floor division. Mixed intervals (and anchors
    outside UTC) start from an estimate and correct it a step at a time (a few steps at most).
    """
    interval = recurrence.interval
    anchor = recurrence.anchor
    if anchor.tzinfo is not UTC:
        return _index_by_estimate(recurrence, instant)  # wall-clock arithmetic elsewhere
    months = _month_step(interval)
    if months > 0 and instant.tzinfo is UTC:
        distance = 12 * (instant.year - anchor.year) + instant.month - anchor.month
        k, into = divmod(distance, months)
        if into == 0 and _later_in_month(anchor, instant):
            k -= 1  # the k-th instant falls in instant's month, after it
        return k
    fixed = _fixed_step(interval)
    if fixed is not None:
        if fixed <= _ZERO_DURATION:
            raise ValueError(f"recurrence interval {interval.iso()} is not positive")
        return (instant - anchor) // fixed
    return _index_by_estimate(recurrence, instant)


def _index_by_estimate(recurrence: Recurrence, instant: datetime) -> int:
    """Return ``_index_at_or_before`` from an average-length estimate, corrected step by step."""
    interval = recurrence.interval
    step = _approximate_seconds(interval)
    if step <= 0:
        raise ValueError(f"recurrence interval {interval.iso()} is not positive")
    k = int((instant - recurrence.anchor).total_seconds() // step)
    while recurrence_instant(recurrence, k) > instant:
        k -= 1
    while recurrence_instant(recurrence, k + 1) <= instant:
        k += 1
    return k


def _instants_from(recurrence: Recurrence, k: int) -> Iterator[datetime]:
    """Yield the recurrence instants ``k, k+1, ...``, each equal to ``recurrence_instant``.

    A fixed-length step from a UTC anchor is added (exact: integer microseconds, no zone
    rules); calendar steps are computed from the anchor every time (clamping).
    """
    fixed = _fixed_step(recurrence.interval) if recurrence.anchor.tzinfo is UTC else None
    if fixed is None:
        while True:
            yield recurrence_instant(recurrence, k)
            k += 1
    instant = recurrence_instant(recurrence, k)
    while True:
        yield instant
        instant += fixed


def prev_before(recurrence: Recurrence, instant: datetime, *, inclusive: bool) -> datetime:
    """Return the largest recurrence instant ``<= instant`` (``< instant`` when exclusive)."""
    k = _index_at_or_before(recurrence, instant)
    found = recurrence_instant(recurrence, k)
    if not inclusive and found == instant:
        found = recurrence_instant(recurrence, k - 1)
    return found


def next_after(recurrence: Recurrence, instant: datetime, *, inclusive: bool) -> datetime:
    """Return the smallest recurrence instant ``>= instant`` (``> instant`` when exclusive)."""
    k = _index_at_or_before(recurrence, instant)
    if inclusive:
        found = recurrence_instant(recurrence, k)
        if found == instant:
            return found
    return recurrence_instant(recurrence, k + 1)


def period_of(recurrence: Recurrence, instant: datetime) -> Period:
    """Return ``[prev_before(t, incl), next_after(t, excl))``: the period containing ``t``."""
    k = _index_at_or_before(recurrence, instant)
    return Period(recurrence_instant(recurrence, k), recurrence_instant(recurrence, k + 1))


# --- the usage-period timeline ---------------------------------------------------------------


def new_usage_period(
    interval: CalendarDuration, anchor: datetime, measure_usage_from: datetime
) -> tuple[UsagePeriodEntry, ...]:
    """Return the timeline of a new metered entitlement (anchor and start truncated, §1.2)."""
    recurrence = Recurrence(interval, truncate_to_minute(anchor))
    return (UsagePeriodEntry(truncate_to_minute(measure_usage_from), recurrence),)


def _index_of_entry(timeline: tuple[UsagePeriodEntry, ...], instant: datetime) -> int:
    if not timeline:
        raise ValueError("the entitlement has no usage period")
    index = 0
    for i, entry in enumerate(timeline):
        if entry.start <= instant:
            index = i
        else:
            break
    return index


def entry_at(timeline: tuple[UsagePeriodEntry, ...], instant: datetime) -> UsagePeriodEntry:
    """Return the entry in force at ``instant`` (before the first entry: the first)."""
    return timeline[_index_of_entry(timeline, instant)]


def current_period(timeline: tuple[UsagePeriodEntry, ...], instant: datetime) -> Period:
    """Return the usage period containing ``instant`` (spec §5.2 ``GetCurrentPeriodAt``).

    Before the first entry the first period is returned. The first period starts at
    measureUsageFrom; an entry's periods end at the next entry's start.
    """
    i = _index_of_entry(timeline, instant)
    entry = timeline[i]
    at = max(instant, entry.start)
    period = period_of(entry.recurrence, at)
    start = max(period.start, entry.start)
    end = period.end
    if i + 1 < len(timeline):
        end = min(end, timeline[i + 1].start)
    return Period(start, end)


def next_reset_after(timeline: tuple[UsagePeriodEntry, ...], instant: datetime) -> datetime:
    """Return the first period start strictly after ``instant``."""
    if instant < timeline[0].start:
        return timeline[0].start
    return current_period(timeline, instant).end


def reset_times(
    timeline: tuple[UsagePeriodEntry, ...], after: datetime, until: datetime
) -> tuple[datetime, ...]:
    """Return every period start ``s`` with ``after < s <= until``, sorted, unique.

    These are the resets the engine replays: programmatic boundaries and timeline entries
    (manual resets, interval edits). measureUsageFrom itself is never a reset.
    """
    return reset_schedule(timeline, after, until)[0]


def reset_schedule(
    timeline: tuple[UsagePeriodEntry, ...], after: datetime, until: datetime
) -> tuple[tuple[datetime, ...], datetime]:
    """Return ``reset_times(after, until)`` and ``next_reset_after(until)`` in one pass.

    The period starts are each entry's start and its recurrence instants strictly between that
    start and the next entry's; they are listed by recurrence index from the first one after
    ``after``, never by walking from the anchor. ``reset_times_by_walking`` is the definition
    this agrees with (and what an unsorted timeline falls back to).
    """
    if not timeline:
        raise ValueError("the entitlement has no usage period")
    first = timeline[0].start
    if first > until:
        return (), first
    if len(timeline) == 1:  # the common case, and usually no reset: one index, one instant
        recurrence = timeline[0].recurrence
        k = _index_at_or_before(recurrence, after if after > first else first) + 1
        instant = recurrence_instant(recurrence, k)
        if instant > until:
            return (), instant
        listed: list[datetime] = []
        for instant in _instants_from(recurrence, k):
            if instant > until:
                return tuple(listed), instant
            listed.append(instant)
    found: list[datetime] = []
    last = len(timeline) - 1
    for i, entry in enumerate(timeline):
        end = timeline[i + 1].start if i < last else None
        if end is not None and end < entry.start:
            walked = reset_times_by_walking(timeline, after, until)
            return walked, next_reset_after(timeline, until)
        if entry.start > until:
            return tuple(found), entry.start
        if end is not None and end <= after:
            continue
        if entry.start > after and entry.start > first and (not found or found[-1] != entry.start):
            found.append(entry.start)
        recurrence = entry.recurrence
        k = _index_at_or_before(recurrence, max(after, entry.start)) + 1
        for instant in _instants_from(recurrence, k):
            if end is not None and instant >= end:
                break
            if instant > until:
                return tuple(found), instant
            found.append(instant)
    raise RuntimeError("the last usage-period entry ended")  # pragma: no cover - it never ends


def reset_times_by_walking(
    timeline: tuple[UsagePeriodEntry, ...], after: datetime, until: datetime
) -> tuple[datetime, ...]:
    """Return what ``reset_times`` does, by walking ``next_reset_after`` period by period.

    The reference definition: slow (one period computation per reset), kept for unsorted
    timelines and as the oracle of the property tests.
    """
    found: list[datetime] = []
    cursor = after
    while True:
        nxt = next_reset_after(timeline, cursor)
        if nxt > until:
            break
        if nxt > timeline[0].start:
            found.append(nxt)
        cursor = nxt
    return tuple(found)


def is_reset_instant(timeline: tuple[UsagePeriodEntry, ...], instant: datetime) -> bool:
    """Tell whether a period starts at ``instant`` (other than the first, measureUsageFrom)."""
    if instant <= timeline[0].start:
        return False
    return current_period(timeline, instant).start == instant


def preserve_overage_for_reset(entitlement: Entitlement, at: datetime) -> bool:
    """Return whether overage survives the reset at ``at``.

    A manual reset remembers its own flag (spec §10.4); any other boundary uses the
    preserveOverageAtReset version in force at ``at`` (D4: edits apply to later resets).
    """
    for entry in entitlement.usage_period:
        if entry.start == at and entry.preserve_overage is not None:
            return entry.preserve_overage
    return entitlement.preserve_overage_at(at)


def last_reset_at(entitlement: Entitlement, now: datetime) -> datetime:
    """Return the newest reset at or before ``now``, manual or programmatic.

    This is what OpenMeter's ``lastReset`` shows once its background job has persisted the
    programmatic boundaries (spec §5.3, §12.7): the start of the current usage period.
    """
    return current_period(entitlement.usage_period, require_utc(now)).start


def last_reset(entitlement: Entitlement) -> datetime:
    """Return the newest manual reset, or measureUsageFrom when there is none (spec §4.3).

    Resets at or before it are no-ops (NOTHING_TO_RESET).
    """
    resets = [e.start for e in entitlement.usage_period if e.source is PeriodSource.RESET]
    if resets:
        return max(resets)
    return entitlement.usage_period[0].start


# --- edits -----------------------------------------------------------------------------------


class ResetOutcome(enum.Enum):
    """What a manual reset does when evaluated at ``now``."""

    APPLIED = "Applied"
    SCHEDULED = "Scheduled"  # effectiveAt in the future: waits (OpenMeter refuses)
    NOTHING_TO_RESET = "NothingToReset"  # not after the last reset: no-op (OpenMeter refuses)
    BEFORE_CURRENT_PERIOD = "BeforeCurrentPeriod"  # refused, as OpenMeter does


@dataclass(frozen=True)
class ResetPlan:
    """The outcome of a manual reset, the instant applied, and the updated entitlement."""

    outcome: ResetOutcome
    at: datetime
    entitlement: Entitlement


def apply_reset(entitlement: Entitlement, reset: EntitlementReset, now: datetime) -> ResetPlan:
    """Append a manual reset to the usage-period timeline (spec §10, DESIGN EntitlementReset).

    ``at = trunc(effective_at)``. A future ``at`` is SCHEDULED (evaluate again at ``at``); an
    ``at`` not after the last manual reset (or measureUsageFrom) is NOTHING_TO_RESET; an ``at``
    before the current period at ``now`` is refused. Otherwise a new entry
    ``(at, Recurrence(interval, anchor'))`` is appended with the preserve flag resolved now, and
    interval edits pending after ``at`` are moved to the next boundary of the new recurrence.

    A reset recorded before its ``effective_at`` is evaluated again with ``now = effective_at``
    once that instant has arrived (it acts at its own instant, DESIGN D2), so a late evaluation
    never turns a scheduled reset into a refused one.
    """
    at = truncate_to_minute(reset.effective_at)
    now = require_utc(now)
    timeline = entitlement.usage_period
    if at > now:
        return ResetPlan(ResetOutcome.SCHEDULED, at, entitlement)
    if at <= last_reset(entitlement):
        return ResetPlan(ResetOutcome.NOTHING_TO_RESET, at, entitlement)
    if at < current_period(timeline, now).start:
        return ResetPlan(ResetOutcome.BEFORE_CURRENT_PERIOD, at, entitlement)
    in_force = entry_at(timeline, at).recurrence
    anchor = in_force.anchor if reset.retain_anchor else at
    preserve = (
        reset.preserve_overage
        if reset.preserve_overage is not None
        else entitlement.preserve_overage_at(at)
    )
    entry = UsagePeriodEntry(
        at, Recurrence(in_force.interval, anchor), PeriodSource.RESET, preserve
    )
    kept = tuple(e for e in timeline if e.start < at)
    pending = [e for e in timeline if e.start > at and e.source is PeriodSource.EDIT]
    updated = replace(entitlement, usage_period=(*kept, entry))
    for edit in pending:
        updated = _with_interval_from(updated, edit.recurrence.interval, at)
    old_boundary = next_reset_after(timeline, at)
    new_boundary = next_reset_after(updated.usage_period, at)
    if old_boundary != new_boundary:
        updated = replace(
            updated,
            issue_after_reset=_move_pending(updated.issue_after_reset, old_boundary, new_boundary),
        )
    return ResetPlan(ResetOutcome.APPLIED, at, updated)


def _move_pending(
    timeline: tuple[Versioned[IssueAfterReset | None], ...],
    old_boundary: datetime,
    new_boundary: datetime,
) -> tuple[Versioned[IssueAfterReset | None], ...]:
    """Move issueAfterReset versions pending at ``old_boundary`` to ``new_boundary``."""
    return tuple(
        Versioned(new_boundary, v.value) if v.since == old_boundary else v for v in timeline
    )


def _with_interval_from(
    entitlement: Entitlement, interval: CalendarDuration, now: datetime
) -> Entitlement:
    timeline = entitlement.usage_period
    boundary = next_reset_after(timeline, now)
    if boundary <= timeline[0].start:
        # before measurement starts: the first period itself takes the new interval
        first = timeline[0]
        recurrence = Recurrence(interval, first.recurrence.anchor)
        return replace(entitlement, usage_period=(replace(first, recurrence=recurrence),))
    kept = tuple(e for e in timeline if e.start < boundary)
    if entry_at(kept, boundary).recurrence.interval == interval:
        return replace(entitlement, usage_period=kept)
    entry = UsagePeriodEntry(boundary, Recurrence(interval, boundary), PeriodSource.EDIT)
    return replace(entitlement, usage_period=(*kept, entry))


def edit_interval(
    entitlement: Entitlement, interval: CalendarDuration, now: datetime
) -> Entitlement:
    """Change the usage-period interval from the next period boundary after ``now`` (D4).

    The new periods are anchored at that boundary. Entries after it that were pending are
    replaced; an edit back to the interval in force is a no-op.
    """
    return _with_interval_from(entitlement, interval, require_utc(now))


def edit_issue_after_reset(
    entitlement: Entitlement, value: IssueAfterReset | None, now: datetime
) -> Entitlement:
    """Change issueAfterReset from the next period boundary after ``now`` (D4)."""
    boundary = next_reset_after(entitlement.usage_period, require_utc(now))
    kept = tuple(v for v in entitlement.issue_after_reset if v.since < boundary)
    if kept and kept[-1].value == value:
        return replace(entitlement, issue_after_reset=kept)
    return replace(entitlement, issue_after_reset=(*kept, Versioned(boundary, value)))


def edit_soft_limit(entitlement: Entitlement, value: bool, now: datetime) -> Entitlement:
    """Change isSoftLimit from the edit instant ``now`` (D4)."""
    return replace(
        entitlement, is_soft_limit=_versioned_edit(entitlement.is_soft_limit, value, now)
    )


def edit_preserve_overage(entitlement: Entitlement, value: bool, now: datetime) -> Entitlement:
    """Change preserveOverageAtReset for resets at or after ``now`` (D4)."""
    timeline = _versioned_edit(entitlement.preserve_overage_at_reset, value, now)
    return replace(entitlement, preserve_overage_at_reset=timeline)


def _versioned_edit(
    timeline: tuple[Versioned[bool], ...], value: bool, now: datetime
) -> tuple[Versioned[bool], ...]:
    now = require_utc(now)
    kept = tuple(v for v in timeline if v.since < now)
    if kept and value_at(kept, now) == value:
        return kept
    if not kept:
        if not value:
            return ()
        kept = (Versioned(_BEGINNING, False),)
    return (*kept, Versioned(now, value))
