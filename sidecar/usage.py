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

from allotment.ledger.core.model import Aggregation

from .source import UsageBucketState

__all__ = ["AnySeries", "IntegerSeries", "Series", "UsageStore", "minute_index"]

ZERO = Decimal(0)
_FITS_MIN, _FITS_MAX = -(2**63), 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: The number of words an ``IntegerSeries`` holds (its own ``len`` counts buckets).
_WORDS = array.__len__

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


class IntegerSeries(array):  # type: ignore[type-arg]
    """The buckets of one SUM or COUNT series whose sums are whole numbers, in one flat array.

    The series *is* one machine-word array (no other object, about 190 bytes for 4 buckets
    instead of 400 in three arrays), laid out for ``n`` buckets as ``n`` minute indexes, then
    the ``n + 1`` running totals of the event count, then the ``n + 1`` running totals of the
    value sum (``total[i]`` = first ``i`` buckets), so a window's aggregate is two bisections
    and a subtraction. A bucket's own count and sum are differences of running totals. A late
    bucket shifts the running totals after it. ``put`` answers None when a bucket does not fit
    (a fractional sum, or a total past 64 bits): the store then moves the series to ``Series``.
    ``len`` is the number of buckets.
    """

    __slots__ = ()

    def __new__(cls) -> IntegerSeries:
        series: IntegerSeries = super().__new__(cls, "q", (0, 0))  # type: ignore[assignment]
        return series

    @classmethod
    def of(cls, words: list[int]) -> IntegerSeries:
        """Return a series of exactly these words (the layout above)."""
        series: IntegerSeries = array.__new__(cls, "q", words)  # type: ignore[assignment]
        return series

    def __len__(self) -> int:
        return (_WORDS(self) - 2) // 3

    def columns(self) -> tuple[list[int], list[int], list[int]]:
        """Return the minutes, running counts and running sums as lists."""
        n = len(self)
        return self[:n].tolist(), self[n : 2 * n + 1].tolist(), self[2 * n + 1 :].tolist()

    def put(self, bucket: UsageBucketState, keep_extra: bool) -> bool | None:
        """Store a bucket's state; False when an equal or newer one is held, None: no fit."""
        value = bucket.value_sum
        if keep_extra or value != value.to_integral_value():
            return None
        whole = int(value)
        minute = minute_index(bucket.minute)
        n = len(self)
        if not n or minute > self[n - 1]:  # the common case: a newer minute, appended
            total = self[3 * n + 1] + whole
            if not _FITS_MIN <= total <= _FITS_MAX:
                return None
            self.append(total)
            self.insert(2 * n + 1, self[2 * n] + bucket.event_count)
            self.insert(n, minute)
            return True
        minutes, counts, sums = self.columns()
        i = bisect_left(minutes, minute)
        exists = i < n and minutes[i] == minute
        held_count = counts[i + 1] - counts[i] if exists else 0
        if exists and bucket.event_count <= held_count:
            return False
        sum_delta = whole - (sums[i + 1] - sums[i] if exists else 0)
        new_total = sums[i] + whole
        shifted = [total + sum_delta for total in sums[i + 1 :]]
        if not all(_FITS_MIN <= total <= _FITS_MAX for total in (*shifted, new_total)):
            return None
        count_delta = bucket.event_count - held_count
        if not exists:  # a late minute: open its slot, then shift the totals after it
            minutes.insert(i, minute)
            counts.insert(i + 1, counts[i])
            sums[i + 1 :] = [new_total, *shifted]
        else:
            sums[i + 1 :] = shifted
        counts[i + 1 :] = [c + count_delta for c in counts[i + 1 :]]
        self[:] = array("q", minutes + counts + sums)
        return True

    def window(self, start: int, end: int) -> tuple[int, int]:
        """Return the bucket index range of minutes in ``[start, end)``."""
        n = len(self)
        return bisect_left(self, start, 0, n), bisect_left(self, end, 0, n)

    def total(self, start: int, end: int) -> Decimal:
        """Return the sum of values in ``[start, end)``."""
        i, j = self.window(start, end)
        base = 2 * len(self) + 1
        return Decimal(self[base + j] - self[base + i])

    def count(self, start: int, end: int) -> int:  # type: ignore[override]
        """Return the number of events in ``[start, end)`` (not ``array.count``: shadowed)."""
        i, j = self.window(start, end)
        base = len(self)
        return int(self[base + j] - self[base + i])

    def latest(self, start: int, end: int) -> tuple[datetime, Decimal] | None:
        """Return nothing: integer series belong to SUM and COUNT meters only."""
        return None

    def distinct(self, start: int, end: int) -> set[str]:
        """Return nothing: integer series belong to SUM and COUNT meters only."""
        return set()

    def to_series(self) -> Series:
        """Return the same buckets as a general ``Series`` (for a bucket that does not fit)."""
        series = Series()
        minutes, counts, sums = self.columns()
        for i, minute in enumerate(minutes):
            series.minutes.append(minute)
            series.counts.append(counts[i + 1] - counts[i])
            series.sums.append(Decimal(sums[i + 1] - sums[i]))
            series.extras.append(None)
        series.dirty_from = 0
        return series


AnySeries = Series | IntegerSeries
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
        subjects = self._series.get(slug)
        if subjects is None:
            subjects = self._series[sys.intern(slug)] = {}
        held = subjects.get(bucket.subject)
        groups = bucket.groups
        series: AnySeries
        if isinstance(held, dict):
            found = held.get(groups)
            if found is None:
                found = held[groups] = _new_series(keep_extra)
            series = found
        elif held is None or groups:
            series = _new_series(keep_extra)
            if held is not None:
                subjects[bucket.subject] = {(): held, groups: series}
            else:
                subject = share(bucket.subject) if share is not None else bucket.subject
                subjects[subject] = {groups: series} if groups else series
        else:
            series = held
        before = len(series)
        changed = series.put(bucket, keep_extra)
        if changed is None and isinstance(series, IntegerSeries):
            moved = series.to_series()
            self._replace(slug, bucket.subject, groups, moved)
            series = moved
            changed = moved.put(bucket, keep_extra)
        self.bucket_count += len(series) - before
        return bool(changed)

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
            _integer_series(run)
            if first.meter_slug in self.plain_meters
            and not self._has(first.meter_slug, first.subject)
            else None
        )
        if built is None:
            for bucket in run:
                self.put(bucket, share)
            return
        self.put(first, share)  # places an (integer) series for the run, then replaced whole
        self._replace(first.meter_slug, first.subject, first.groups, built)
        self.bucket_count += len(run) - 1

    def _has(self, slug: str, subject: str) -> bool:
        return subject in self._series.get(slug, {})

    def _replace(self, slug: str, subject: str, groups: GroupKey, series: AnySeries) -> None:
        subjects = self._series[slug]
        held = subjects[subject]
        if isinstance(held, dict):
            held[groups] = series
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
            return sum((s.total(lo, hi) for s in series), ZERO)
        if aggregation is Aggregation.COUNT:
            return Decimal(sum(s.count(lo, hi) for s in series))
        if aggregation is Aggregation.UNIQUE_COUNT:
            seen: set[str] = set()
            for s in series:
                seen |= s.distinct(lo, hi)
            return Decimal(len(seen))
        latest: tuple[datetime, Decimal] | None = None
        for s in series:
            candidate = s.latest(lo, hi)
            if candidate is not None and (latest is None or candidate[0] > latest[0]):
                latest = candidate
        return ZERO if latest is None else latest[1]


def _integer_series(run: list[UsageBucketState]) -> IntegerSeries | None:
    """Return the run as one ``IntegerSeries``, or None where it does not fit one at once."""
    minutes: list[int] = []
    counts, sums = [0], [0]
    for bucket in run:
        value = bucket.value_sum
        if value != value.to_integral_value():
            return None
        minute = minute_index(bucket.minute)
        if minutes and minute <= minutes[-1]:
            return None
        total = sums[-1] + int(value)
        if not _FITS_MIN <= total <= _FITS_MAX:
            return None
        minutes.append(minute)
        counts.append(counts[-1] + bucket.event_count)
        sums.append(total)
    return IntegerSeries.of(minutes + counts + sums)


def _new_series(keep_extra: bool) -> AnySeries:
    return Series() if keep_extra else IntegerSeries()


def _matches(group: GroupKey, filters: Mapping[str, str]) -> bool:
    values = dict(group)
    return all(values.get(key) == value for key, value in filters.items())
