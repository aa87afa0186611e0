"""In-memory usage: per-minute buckets per (meter, subject, group-by values), with prefix sums.

Role: hold the usage the view loaded and the bucket states that followed, and answer the core's
``UsageQuery`` (the meter's aggregate over ``[start, end)``) for one entitlement in logarithmic
time: a bisection on the minute index and a subtraction of prefix sums (SUM, COUNT), the last
bucket in the window (LATEST), or a union of distinct values (UNIQUE_COUNT). Which series count
for an entitlement (its customer's subject keys, its feature's group-by filters) is decided by
the caller.

It must not decide balances or read the clock; it never stores floats.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from allotment.ledger.core.model import Aggregation

from .source import UsageBucketState

__all__ = ["Series", "UsageStore", "minute_index"]

ZERO = Decimal(0)
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


class UsageStore:
    """Every series of a namespace, indexed by (meter slug, subject)."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, str], dict[GroupKey, Series]] = {}
        self.bucket_count = 0
        #: Meters whose buckets need no latest value nor distinct values (SUM, COUNT).
        self.plain_meters: set[str] = set()

    def put(self, bucket: UsageBucketState) -> bool:
        """Store a bucket state; return whether it changed what the store holds."""
        by_group = self._series.setdefault((bucket.meter_slug, bucket.subject), {})
        series = by_group.get(bucket.groups)
        if series is None:
            series = by_group[bucket.groups] = Series()
        before = len(series.minutes)
        changed = series.put(bucket, bucket.meter_slug not in self.plain_meters)
        self.bucket_count += len(series.minutes) - before
        return changed

    def matching(
        self, meter_slug: str, subjects: Iterable[str], filters: Mapping[str, str]
    ) -> list[Series]:
        """Return the series of ``meter_slug`` for ``subjects`` whose group-by values match."""
        found: list[Series] = []
        for subject in subjects:
            by_group = self._series.get((meter_slug, subject))
            if not by_group:
                continue
            for group, series in by_group.items():
                if not filters or _matches(group, filters):
                    found.append(series)
        return found

    def aggregate(
        self, aggregation: Aggregation, series: list[Series], start: datetime, end: datetime
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


def _matches(group: GroupKey, filters: Mapping[str, str]) -> bool:
    values = dict(group)
    return all(values.get(key) == value for key, value in filters.items())
