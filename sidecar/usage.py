"""In-memory usage: per-minute buckets per (meter, subject, group-by values), with running totals.

Role: hold the usage the view loaded and the bucket states that followed, and answer the core's
``UsageQuery`` (the meter's aggregate over ``[start, end)``) for one entitlement in logarithmic
time: a bisection on the minute index and a subtraction of running totals (SUM, COUNT; kept in
machine-word arrays while the sums are whole numbers), the last bucket in the window (LATEST),
or a union of distinct values (UNIQUE_COUNT). Which series count
for an entitlement (its customer's subject keys, its feature's group-by filters) is decided by
the caller.

It must not decide balances or read the clock; it never stores floats.
"""

from __future__ import annotations

import sys
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Literal

from allotment.ledger.core.model import Aggregation

from .source import UsageBucketState

__all__ = [
    "AnySeries",
    "Packed",
    "Series",
    "UsageStore",
    "minute_index",
    "packed",
    "packed_columns",
    "packed_count",
    "packed_length",
    "packed_total",
    "put_packed",
    "to_series",
]

ZERO = Decimal(0)
_FITS_MIN, _FITS_MAX = -(2**63), 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

GroupKey = tuple[tuple[str, str], ...]


def minute_index(instant: datetime) -> int:
    """Return the number of whole minutes since the Unix epoch (floored)."""
    return int((instant - _EPOCH).total_seconds() // 60)


def _ceil_minute_index(instant: datetime) -> int:
    seconds = (instant - _EPOCH).total_seconds()
    whole = int(seconds // 60)
    return whole if whole * 60 == seconds else whole + 1


#: What a bucket keeps beyond count and sum, for LATEST and UNIQUE_COUNT meters only.
Extra = tuple[datetime | None, Decimal | None, frozenset[str]]


class Series:
    """The buckets of one (meter, subject, group-by values), sorted by minute, kept compact.

    Parallel lists instead of bucket objects: a minute index, the event count, the value sum,
    and (only when the meter needs them) the latest value and the distinct values.
    """

    __slots__ = ("counts", "dirty_from", "extras", "minutes", "prefix_count", "prefix_sum", "sums")

    def __init__(self) -> None:
        self.minutes: list[int] = []
        self.counts: list[int] = []
        self.sums: list[Decimal] = []
        self.extras: list[Extra | None] = []
        # prefix[i] = totals of the first i buckets; rebuilt from ``dirty_from`` after a late one.
        self.prefix_sum: list[Decimal] = [ZERO]
        self.prefix_count: list[int] = [0]
        self.dirty_from: int | None = None

    def __len__(self) -> int:
        return len(self.minutes)

    def put(self, bucket: UsageBucketState, keep_extra: bool) -> bool:
        """Store a bucket's state; return False when an equal or newer state is already held."""
        minute = minute_index(bucket.minute)
        extra: Extra | None = (
            (bucket.latest_time, bucket.latest_value, bucket.distinct) if keep_extra else None
        )
        if not self.minutes or minute > self.minutes[-1]:
            self.minutes.append(minute)
            self.counts.append(bucket.event_count)
            self.sums.append(bucket.value_sum)
            self.extras.append(extra)
            if self.dirty_from is None:
                self.prefix_sum.append(self.prefix_sum[-1] + bucket.value_sum)
                self.prefix_count.append(self.prefix_count[-1] + bucket.event_count)
            return True
        i = bisect_left(self.minutes, minute)
        if i < len(self.minutes) and self.minutes[i] == minute:
            if bucket.event_count <= self.counts[i]:
                return False
            self.counts[i] = bucket.event_count
            self.sums[i] = bucket.value_sum
            self.extras[i] = extra
        else:
            self.minutes.insert(i, minute)
            self.counts.insert(i, bucket.event_count)
            self.sums.insert(i, bucket.value_sum)
            self.extras.insert(i, extra)
        self.dirty_from = i if self.dirty_from is None else min(self.dirty_from, i)
        return True

    def _prefixes(self) -> tuple[list[Decimal], list[int]]:
        start = self.dirty_from
        if start is not None:
            del self.prefix_sum[start + 1 :]
            del self.prefix_count[start + 1 :]
            for total, count in zip(self.sums[start:], self.counts[start:], strict=True):
                self.prefix_sum.append(self.prefix_sum[-1] + total)
                self.prefix_count.append(self.prefix_count[-1] + count)
            self.dirty_from = None
        return self.prefix_sum, self.prefix_count

    def window(self, start: int, end: int) -> tuple[int, int]:
        """Return the bucket index range of minutes in ``[start, end)``."""
        return bisect_left(self.minutes, start), bisect_left(self.minutes, end)

    def total(self, start: int, end: int) -> Decimal:
        """Return the sum of values in ``[start, end)``."""
        i, j = self.window(start, end)
        sums, _ = self._prefixes()
        return sums[j] - sums[i]

    def count(self, start: int, end: int) -> int:
        """Return the number of events in ``[start, end)``."""
        i, j = self.window(start, end)
        _, counts = self._prefixes()
        return counts[j] - counts[i]

    def latest(self, start: int, end: int) -> tuple[datetime, Decimal] | None:
        """Return the latest (time, value) in ``[start, end)``, if any."""
        i, j = self.window(start, end)
        for k in range(j - 1, i - 1, -1):
            extra = self.extras[k]
            if extra is not None and extra[1] is not None:
                when = extra[0] or _EPOCH + timedelta(minutes=self.minutes[k])
                return when, extra[1]
        return None

    def distinct(self, start: int, end: int) -> set[str]:
        """Return the distinct values seen in ``[start, end)``."""
        i, j = self.window(start, end)
        seen: set[str] = set()
        for extra in self.extras[i:j]:
            if extra is not None:
                seen |= extra[2]
        return seen


#: A SUM or COUNT series whose sums are whole numbers, as one immutable ``bytes`` (see ``packed``).
Packed = bytes
_MINUTE = 4  # bytes per minute index
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def packed(minutes: list[int], counts: list[int], sums: list[int]) -> Packed | None:
    """Return the packed form of a SUM or COUNT series, or None where it does not fit one.

    For ``n`` buckets it holds one byte, the width ``w`` of its running totals (4 while every
    total fits 32 bits, else 8), then the ``n + 1`` running totals of the event count, then the
    ``n + 1`` running totals of the value sum (``total[i]`` = first ``i`` buckets), then the
    ``n`` minute indexes as 32-bit words: one ``bytes`` object (about 100 bytes for 4 buckets;
    an ``array`` cost 190), so a window's aggregate is two bisections and a subtraction. A
    bucket's own count and sum are differences of running totals. It does not fit where a total
    passes 64 bits or a minute 32 bits (the store then keeps a ``Series``).
    """
    totals = counts + sums
    if minutes and not (minutes[0] >= _INT32_MIN and minutes[-1] <= _INT32_MAX):
        return None
    if all(_INT32_MIN <= t <= _INT32_MAX for t in totals):
        width = 4
    elif all(_FITS_MIN <= t <= _FITS_MAX for t in totals):
        width = 8
    else:
        return None
    words = array("i" if width == 4 else "q", totals)
    return bytes((width,)) + words.tobytes() + array("i", minutes).tobytes()


def packed_length(series: Packed) -> int:
    """Return the number of buckets a packed series holds."""
    width = series[0]
    return (len(series) - 1 - 2 * width) // (2 * width + _MINUTE)


def _parts(series: Packed) -> tuple[int, memoryview, memoryview]:
    """Return a packed series's bucket count, running totals and minutes (views, not copies)."""
    width = series[0]
    n = (len(series) - 1 - 2 * width) // (2 * width + _MINUTE)
    split = 1 + 2 * width * (n + 1)
    view = memoryview(series)
    totals = view[1:split].cast("i") if width == 4 else view[1:split].cast("q")
    return n, totals, view[split:].cast("i")


def packed_columns(series: Packed) -> tuple[list[int], list[int], list[int]]:
    """Return the minutes, running counts and running sums of a packed series as lists."""
    n, totals, minutes = _parts(series)
    held = totals.tolist()
    return minutes.tolist(), held[: n + 1], held[n + 1 :]


def put_packed(series: Packed, bucket: UsageBucketState) -> Packed | Literal[False] | None:
    """Return the series with a bucket's state stored in it (a new ``bytes``).

    False when an equal or newer state is already held (nothing changes), None when the bucket
    does not fit a packed series (a fractional sum, or a total past 64 bits).
    """
    value = bucket.value_sum
    if value != value.to_integral_value():
        return None
    whole = int(value)
    minute = minute_index(bucket.minute)
    n, totals, minutes = _parts(series)
    if not n or minute > minutes[n - 1]:  # the common case: a newer minute, appended
        count = totals[n] + bucket.event_count
        total = totals[2 * n + 1] + whole
        width = series[0]
        limit = _INT32_MAX if width == 4 else _FITS_MAX
        if not (-limit - 1 <= count <= limit and -limit - 1 <= total <= limit):
            held, counts, sums = packed_columns(series)  # wider totals, or no fit at all
            return packed([*held, minute], [*counts, count], [*sums, total])
        if not _INT32_MIN <= minute <= _INT32_MAX:
            return None
        split = 1 + width * (n + 1)
        return b"".join(
            (
                series[:split],
                count.to_bytes(width, sys.byteorder, signed=True),
                series[split : 2 * split - 1],
                total.to_bytes(width, sys.byteorder, signed=True),
                series[2 * split - 1 :],
                minute.to_bytes(_MINUTE, sys.byteorder, signed=True),
            )
        )
    if minute == minutes[n - 1]:  # the last minute again (a live one): only its totals change
        if bucket.event_count <= totals[n] - totals[n - 1]:
            return False
        count = totals[n - 1] + bucket.event_count
        total = totals[2 * n] + whole
        width = series[0]
        limit = _INT32_MAX if width == 4 else _FITS_MAX
        if -limit - 1 <= count <= limit and -limit - 1 <= total <= limit:
            last_count, last_sum = 1 + width * n, 1 + width * (2 * n + 1)
            return b"".join(
                (
                    series[:last_count],
                    count.to_bytes(width, sys.byteorder, signed=True),
                    series[last_count + width : last_sum],
                    total.to_bytes(width, sys.byteorder, signed=True),
                    series[last_sum + width :],
                )
            )
    held, counts, sums = packed_columns(series)
    i = bisect_left(held, minute)
    exists = i < n and held[i] == minute
    held_count = counts[i + 1] - counts[i] if exists else 0
    if exists and bucket.event_count <= held_count:
        return False
    sum_delta = whole - (sums[i + 1] - sums[i] if exists else 0)
    count_delta = bucket.event_count - held_count
    if not exists:  # a late minute: open its place, then shift the totals after it
        held.insert(i, minute)
        counts.insert(i + 1, counts[i])
        sums.insert(i + 1, sums[i])
    counts[i + 1 :] = [c + count_delta for c in counts[i + 1 :]]
    sums[i + 1 :] = [t + sum_delta for t in sums[i + 1 :]]
    return packed(held, counts, sums)


def packed_total(series: Packed, start: int, end: int) -> Decimal:
    """Return the sum of values in ``[start, end)``."""
    n, totals, minutes = _parts(series)
    i, j = bisect_left(minutes, start), bisect_left(minutes, end)
    return Decimal(totals[n + 1 + j] - totals[n + 1 + i])


def packed_count(series: Packed, start: int, end: int) -> int:
    """Return the number of events in ``[start, end)``."""
    _, totals, minutes = _parts(series)
    return int(totals[bisect_left(minutes, end)] - totals[bisect_left(minutes, start)])


def to_series(series: Packed) -> Series:
    """Return a packed series's buckets as a general ``Series`` (for a bucket that does not fit)."""
    general = Series()
    minutes, counts, sums = packed_columns(series)
    for i, minute in enumerate(minutes):
        general.minutes.append(minute)
        general.counts.append(counts[i + 1] - counts[i])
        general.sums.append(Decimal(sums[i + 1] - sums[i]))
        general.extras.append(None)
    general.dirty_from = 0
    return general


_EMPTY: Packed = bytes((4, 0, 0, 0, 0, 0, 0, 0, 0))  # no bucket: two zero totals


AnySeries = Series | Packed
#: A subject's series: the one without group-by values alone, or every group's by its values.
SubjectSeries = AnySeries | dict[GroupKey, AnySeries]


class UsageStore:
    """Every series of a namespace, indexed by meter slug, then subject, then group-by values."""

    def __init__(self) -> None:
        self._series: dict[str, dict[str, SubjectSeries]] = {}
        self.bucket_count = 0
        #: Meters whose buckets need no latest value nor distinct values (SUM, COUNT).
        self.plain_meters: set[str] = set()

    def put(self, bucket: UsageBucketState, share: Callable[[str], str] | None = None) -> bool:
        """Store a bucket state; return whether it changed what the store holds.

        ``share`` may return an equal string already held elsewhere, so a subject key is stored
        once.
        """
        slug = bucket.meter_slug
        keep_extra = slug not in self.plain_meters
        subjects = self._subjects(slug)
        held = subjects.get(bucket.subject)
        groups = bucket.groups
        found = held.get(groups) if isinstance(held, dict) else None if groups else held
        series: AnySeries = found if found is not None else Series() if keep_extra else _EMPTY
        before = _length(series)
        if isinstance(series, Series):
            changed = series.put(bucket, keep_extra)
        else:
            stored = None if keep_extra else put_packed(series, bucket)
            if stored is False:
                return False
            if stored is None:  # no fit: kept as a general series from now on
                series = to_series(series)
                changed = series.put(bucket, keep_extra)
            else:
                series, changed = stored, True
        if series is not found:
            self._place(subjects, bucket.subject, groups, series, share)
        self.bucket_count += _length(series) - before
        return changed

    def load(
        self, buckets: Iterable[UsageBucketState], share: Callable[[str], str] | None = None
    ) -> None:
        """Store a load's bucket states, a whole series at a time where it can.

        A run of consecutive buckets of one new (meter, subject, group-by values) of a SUM or
        COUNT meter, in increasing minutes with whole sums (what a source paging by the
        buckets' key yields), becomes one exactly sized ``IntegerSeries`` at once; anything
        else goes through ``put``, bucket by bucket. The result is the same as ``put`` of each.
        """
        run: list[UsageBucketState] = []
        key: tuple[str, str, GroupKey] | None = None
        for bucket in buckets:
            this = (bucket.meter_slug, bucket.subject, bucket.groups)
            if this != key:
                if run:
                    self._load_run(run, share)
                run, key = [bucket], this
            else:
                run.append(bucket)
        if run:
            self._load_run(run, share)

    def _load_run(self, run: list[UsageBucketState], share: Callable[[str], str] | None) -> None:
        first = run[0]
        built = (
            _packed_run(run)
            if first.meter_slug in self.plain_meters
            and not self._has(first.meter_slug, first.subject)
            else None
        )
        if built is None:
            for bucket in run:
                self.put(bucket, share)
            return
        subjects = self._subjects(first.meter_slug)
        self._place(subjects, first.subject, first.groups, built, share)
        self.bucket_count += len(run)

    def _subjects(self, slug: str) -> dict[str, SubjectSeries]:
        subjects = self._series.get(slug)
        if subjects is None:
            subjects = self._series[sys.intern(slug)] = {}
        return subjects

    def _has(self, slug: str, subject: str) -> bool:
        return subject in self._series.get(slug, {})

    @staticmethod
    def _place(
        subjects: dict[str, SubjectSeries],
        subject: str,
        groups: GroupKey,
        series: AnySeries,
        share: Callable[[str], str] | None,
    ) -> None:
        """Hold ``series`` as the subject's series of these group-by values (new or replaced)."""
        held = subjects.get(subject)
        if isinstance(held, dict):
            held[groups] = series
        elif held is None:
            key = share(subject) if share is not None else subject
            subjects[key] = {groups: series} if groups else series
        elif groups:
            subjects[subject] = {(): held, groups: series}
        else:
            subjects[subject] = series

    def matching(
        self, meter_slug: str, subjects: Iterable[str], filters: Mapping[str, str]
    ) -> list[AnySeries]:
        """Return the series of ``meter_slug`` for ``subjects`` whose group-by values match."""
        found: list[AnySeries] = []
        by_subject = self._series.get(meter_slug)
        if not by_subject:
            return found
        for subject in subjects:
            held = by_subject.get(subject)
            if held is None:
                continue
            if not isinstance(held, dict):
                if not filters:
                    found.append(held)
                continue
            for group, series in held.items():
                if not filters or _matches(group, filters):
                    found.append(series)
        return found

    def aggregate(
        self, aggregation: Aggregation, series: list[AnySeries], start: datetime, end: datetime
    ) -> Decimal:
        """Return the meter aggregate over ``[start, end)`` across ``series``."""
        lo, hi = minute_index(start), _ceil_minute_index(end)
        if hi <= lo or not series:
            return ZERO
        if aggregation is Aggregation.SUM:
            return sum(
                (
                    s.total(lo, hi) if isinstance(s, Series) else packed_total(s, lo, hi)
                    for s in series
                ),
                ZERO,
            )
        if aggregation is Aggregation.COUNT:
            return Decimal(
                sum(
                    s.count(lo, hi) if isinstance(s, Series) else packed_count(s, lo, hi)
                    for s in series
                )
            )
        general = [s for s in series if isinstance(s, Series)]  # packed: SUM and COUNT only
        if aggregation is Aggregation.UNIQUE_COUNT:
            seen: set[str] = set()
            for s in general:
                seen |= s.distinct(lo, hi)
            return Decimal(len(seen))
        latest: tuple[datetime, Decimal] | None = None
        for s in general:
            candidate = s.latest(lo, hi)
            if candidate is not None and (latest is None or candidate[0] > latest[0]):
                latest = candidate
        return ZERO if latest is None else latest[1]


def _packed_run(run: list[UsageBucketState]) -> Packed | None:
    """Return the run as one packed series, or None where it does not fit one at once."""
    minutes: list[int] = []
    counts, sums = [0], [0]
    for bucket in run:
        value = bucket.value_sum
        if value != value.to_integral_value():
            return None
        minute = minute_index(bucket.minute)
        if minutes and minute <= minutes[-1]:
            return None
        minutes.append(minute)
        counts.append(counts[-1] + bucket.event_count)
        sums.append(sums[-1] + int(value))
    return packed(minutes, counts, sums)


def _length(series: AnySeries) -> int:
    return len(series) if isinstance(series, Series) else packed_length(series)


def _matches(group: GroupKey, filters: Mapping[str, str]) -> bool:
    values = dict(group)
    return all(values.get(key) == value for key, value in filters.items())
