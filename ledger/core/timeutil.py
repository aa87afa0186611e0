"""Time helpers of the ledger core: minute resolution, RFC 3339 parsing, calendar arithmetic.

Role: every instant the core sees is an aware UTC ``datetime``. This module turns text into such
instants (rejecting naive input), applies OpenMeter's one-minute resolution (truncate for stored
instants, round up for query instants, spec §1) and does the two kinds of calendar arithmetic the
spec distinguishes (§7.2): *clamped* (recurrences and usage periods: Jan 31 + 1 month = Feb 28)
and *overflowing* (grant expiration, Go's ``AddDate``: Jan 31 + 1 month = Mar 3).

Must not: read the clock, log, or do I/O. ``now`` is always a parameter of the caller.
"""

from __future__ import annotations

import calendar
import re
from datetime import UTC, datetime, timedelta

__all__ = [
    "MINUTE",
    "UTC",
    "add_months_clamped",
    "add_months_overflow",
    "ceil_to_minute",
    "format_rfc3339",
    "is_minute_aligned",
    "month_length",
    "parse_rfc3339",
    "require_utc",
    "truncate_to_minute",
]

MINUTE = timedelta(minutes=1)

_RFC3339 = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})[Tt ](?P<time>\d{2}:\d{2}:\d{2})(?P<frac>\.\d+)?"
    r"(?P<offset>[Zz]|[+-]\d{2}:\d{2})$"
)


def require_utc(instant: datetime) -> datetime:
    """Return ``instant`` converted to UTC; raise ``ValueError`` if it is naive."""
    if instant.tzinfo is UTC:
        return instant
    if instant.tzinfo is None or instant.tzinfo.utcoffset(instant) is None:
        raise ValueError(f"naive datetime {instant.isoformat()} has no time zone; use UTC")
    return instant.astimezone(UTC)


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 timestamp into an aware UTC datetime.

    A time-zone designator (``Z`` or ``±hh:mm``) is required; fractions beyond microseconds are
    truncated (the core works at minute resolution anyway).
    """
    match = _RFC3339.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not an RFC 3339 timestamp with a time zone")
    frac = (match.group("frac") or "")[:7]  # '.' + at most 6 digits
    offset = match.group("offset")
    offset = "+00:00" if offset in ("Z", "z") else offset
    parsed = datetime.fromisoformat(f"{match.group('date')}T{match.group('time')}{frac}{offset}")
    return require_utc(parsed)


def format_rfc3339(instant: datetime) -> str:
    """Format an aware instant as RFC 3339 in UTC with a ``Z`` suffix."""
    utc = require_utc(instant)
    text = utc.isoformat(timespec="microseconds" if utc.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def truncate_to_minute(instant: datetime) -> datetime:
    """Floor an instant to its minute (stored instants: effectiveAt, anchors, voids, resets)."""
    utc = require_utc(instant)
    if utc.second or utc.microsecond:
        return utc - timedelta(0, utc.second, utc.microsecond)
    return utc


def ceil_to_minute(instant: datetime) -> datetime:
    """Round a query instant up to the next minute unless it already is on one (spec §1.3)."""
    utc = require_utc(instant)
    if utc.second or utc.microsecond:
        return utc + timedelta(0, 60 - utc.second, -utc.microsecond)
    return utc


def is_minute_aligned(instant: datetime) -> bool:
    """Tell whether an instant has zero seconds and microseconds."""
    return instant.second == 0 and instant.microsecond == 0


def add_months_clamped(instant: datetime, months: int) -> datetime:
    """Add calendar months, clamping the day to the target month's last day (no overflow)."""
    total = instant.year * 12 + (instant.month - 1) + months
    year, month0 = divmod(total, 12)
    day = instant.day
    if day > 28:
        day = min(day, month_length(year, month0 + 1))
    return instant.replace(year=year, month=month0 + 1, day=day)


_MONTH_LENGTHS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def month_length(year: int, month: int) -> int:
    """Return the number of days of ``month`` in ``year`` (Gregorian)."""
    if month == 2 and calendar.isleap(year):
        return 29
    return _MONTH_LENGTHS[month - 1]


def add_months_overflow(instant: datetime, months: int) -> datetime:
    """Add calendar months the way Go's ``time.AddDate`` does: overflowing days roll forward.

    Jan 31 + 1 month = Mar 3 (Mar 2 in a leap year); Feb 29 + 12 months = Mar 1.
    """
    total = instant.year * 12 + (instant.month - 1) + months
    year, month0 = divmod(total, 12)
    month = month0 + 1
    first = instant.replace(year=year, month=month, day=1)
    return first + timedelta(days=instant.day - 1)
