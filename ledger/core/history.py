"""The balance history of a metered entitlement (spec §9): windows and burn-down segments.

Role: ``balance_history`` returns the exact burn-down segments between ``from`` and ``to`` and
OpenMeter's approximate windowed history: one window per HOUR/DAY (or MINUTE/MONTH) in a time
zone, including windows without usage, each with its usage and the balance at its start: the
balance of the last engine segment starting at or before the window, reduced by the usage since
the segment began and then window by window, each time floored at 0 (as OpenMeter computes it).
A grant that activates inside a window therefore shows from the next window on.

Must not: read the clock, log, or do I/O (time zones arrive as ``tzinfo`` objects).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, time, timedelta, tzinfo
from decimal import Decimal

from .engine import Segment, run
from .grants import with_default_grants
from .model import Aggregation, Entitlement, Grant, UsageQuery
from .timeutil import UTC, add_months_clamped, ceil_to_minute, format_rfc3339, require_utc

__all__ = ["BalanceHistory", "HistoryError", "Window", "WindowSize", "balance_history"]

ZERO = Decimal(0)


class WindowSize(enum.Enum):
    """Window sizes of the windowed history."""

    MINUTE = "MINUTE"
    HOUR = "HOUR"
    DAY = "DAY"
    MONTH = "MONTH"


class HistoryError(ValueError):
    """A history request the rules refuse (spec §9: ``from`` before measureUsageFrom)."""


@dataclass(frozen=True)
class Window:
    """One window ``[start, end)`` of the windowed history."""

    start: datetime
    end: datetime
    usage: Decimal
    balance_at_start: Decimal


@dataclass(frozen=True)
class BalanceHistory:
    """``windowedHistory`` and ``burndownHistory`` of spec §9."""

    windows: tuple[Window, ...]
    segments: tuple[Segment, ...]


def _window_floor(instant: datetime, size: WindowSize, zone: tzinfo) -> datetime:
    local = instant.astimezone(zone)
    if size is WindowSize.MINUTE:
        local = local.replace(second=0, microsecond=0)
    elif size is WindowSize.HOUR:
        local = local.replace(minute=0, second=0, microsecond=0)
    elif size is WindowSize.DAY:
        local = datetime.combine(local.date(), time(), tzinfo=zone)
    else:
        local = datetime.combine(local.date().replace(day=1), time(), tzinfo=zone)
    return local.astimezone(UTC)


def _window_next(start: datetime, size: WindowSize, zone: tzinfo) -> datetime:
    if size is WindowSize.MINUTE:
        return start + timedelta(minutes=1)
    if size is WindowSize.HOUR:
        return start + timedelta(hours=1)
    local = start.astimezone(zone)
    if size is WindowSize.DAY:
        nxt = datetime.combine(local.date() + timedelta(days=1), time(), tzinfo=zone)
    else:
        nxt = datetime.combine(add_months_clamped(local, 1).date(), time(), tzinfo=zone)
    return nxt.astimezone(UTC)


def balance_history(
    entitlement: Entitlement,
    grants: Iterable[Grant],
    aggregation: Aggregation,
    usage: UsageQuery,
    *,
    start: datetime,
    end: datetime,
    window_size: WindowSize,
    zone: tzinfo = UTC,
    include_default_grants: bool = True,
) -> BalanceHistory:
    """Return the windowed and burn-down history over ``[start, end]`` (spec §9).

    ``start`` defaults, at the caller, to the last reset; it must not precede measureUsageFrom.
    ``end`` is rounded up to the minute. Windows starting before measureUsageFrom are dropped.
    """
    measure_from = entitlement.measure_usage_from
    if measure_from is None:
        raise HistoryError(f"entitlement {entitlement.id} is not metered")
    start = require_utc(start)
    if start < measure_from:
        raise HistoryError(
            f"from {format_rfc3339(start)} cannot be before {format_rfc3339(measure_from)}"
        )
    end = ceil_to_minute(end)
    if end < start:
        raise HistoryError(
            f"to {format_rfc3339(end)} cannot be before from {format_rfc3339(start)}"
        )
    all_grants = (
        with_default_grants(entitlement, grants) if include_default_grants else tuple(grants)
    )
    result = run(entitlement, all_grants, aggregation, usage, end, record=True)
    phases = [s for s in result.segments if not s.rollover]
    segments = tuple(s for s in result.segments if s.end >= start and s.start <= end)

    windows: list[Window] = []
    cursor = _window_floor(start, window_size, zone)
    current: Segment | None = None
    balance = ZERO
    while cursor < end:
        nxt = _window_next(cursor, window_size, zone)
        if cursor >= measure_from:
            window_end = min(nxt, end)
            segment = _segment_at(phases, cursor)
            if segment is None:
                balance = ZERO
            elif segment is not current:
                # first window of a segment: deduct the usage since the segment began
                balance = max(ZERO, segment.balance_at_start - usage(segment.start, cursor))
            current = segment
            reported = usage(max(cursor, start), window_end)  # counted from ``from`` on
            windows.append(Window(cursor, window_end, reported, balance))
            balance = max(ZERO, balance - usage(cursor, window_end))
        cursor = nxt
    return BalanceHistory(tuple(windows), segments)


def _segment_at(phases: list[Segment], instant: datetime) -> Segment | None:
    """Return the last engine phase starting at or before ``instant``."""
    chosen = None
    for phase in phases:
        if phase.start <= instant:
            chosen = phase
        else:
            break
    return chosen
