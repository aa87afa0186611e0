"""Usage over per-minute buckets: a ``UsageQuery`` backed by a sorted sequence in memory.

Role: answer ``usage(from, to)`` for the half-open, minute-aligned window ``[from, to)`` from a
sorted sequence of ``UsageBucket`` (one per minute), for each aggregation: SUM and COUNT add the
bucket amounts (prefix sums, O(log n)), LATEST returns the latest bucket's value, UNIQUE_COUNT
counts the distinct values. Storage may back the same protocol with SQL over its bucket table.

Must not: read the clock, log, or do I/O.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

from .model import Aggregation, UsageBucket
from .timeutil import is_minute_aligned

__all__ = ["MinuteSeries"]

ZERO = Decimal(0)


class MinuteSeries:
    """An immutable series of per-minute usage buckets, queryable as a ``UsageQuery``."""

    __slots__ = ("_aggregation", "_buckets", "_minutes", "_prefix")

    def __init__(self, aggregation: Aggregation, buckets: Iterable[UsageBucket]) -> None:
        """Index ``buckets``; they must be minute-aligned and have distinct minutes."""
        ordered = sorted(buckets, key=lambda b: b.minute)
        for bucket in ordered:
            if not is_minute_aligned(bucket.minute):
                raise ValueError(f"bucket {bucket.minute.isoformat()} is not minute-aligned")
        minutes = [b.minute for b in ordered]
        if len(set(minutes)) != len(minutes):
            raise ValueError("two buckets share a minute")
        self._aggregation = aggregation
        self._buckets = tuple(ordered)
        self._minutes = tuple(minutes)
        prefix = [ZERO]
        for bucket in ordered:
            prefix.append(prefix[-1] + bucket.amount)
        self._prefix = tuple(prefix)

    @property
    def buckets(self) -> tuple[UsageBucket, ...]:
        """Return the buckets in time order."""
        return self._buckets

    def __call__(self, start: datetime, end: datetime, /) -> Decimal:
        """Return the aggregate over ``[start, end)``."""
        if end <= start:
            return ZERO
        lo = bisect.bisect_left(self._minutes, start)
        hi = bisect.bisect_left(self._minutes, end)
        if self._aggregation is Aggregation.LATEST:
            return self._buckets[hi - 1].amount if hi > lo else ZERO
        if self._aggregation is Aggregation.UNIQUE_COUNT:
            seen: set[str] = set()
            for bucket in self._buckets[lo:hi]:
                seen.update(bucket.distinct)
            return Decimal(len(seen))
        return self._prefix[hi] - self._prefix[lo]
