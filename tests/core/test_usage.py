"""Usage windows over per-minute buckets (spec §2.2, §1.4) and the customer filter (§2.3)."""

from __future__ import annotations

import pytest

from allotment.ledger.core.model import Aggregation, Customer, UsageBucket
from allotment.ledger.core.usage import MinuteSeries
from tests.core.factory import D, T

BUCKETS = [
    UsageBucket(T("2024-01-01T10:00"), D(5), frozenset({"a"})),
    UsageBucket(T("2024-01-01T10:01"), D(7), frozenset({"a", "b"})),
    UsageBucket(T("2024-01-01T10:03"), D(2), frozenset({"c"})),
]


@pytest.mark.parametrize(
    ("aggregation", "start", "end", "expected"),
    [
        pytest.param(Aggregation.SUM, "2024-01-01T10:00", "2024-01-01T10:04", 14, id="sum-all"),
        pytest.param(
            Aggregation.SUM,
            "2024-01-01T10:01",
            "2024-01-01T10:03",
            7,
            id="sum-half-open-excludes-end",
        ),
        pytest.param(
            Aggregation.SUM, "2024-01-01T10:01", "2024-01-01T10:01", 0, id="sum-empty-window"
        ),
        pytest.param(
            Aggregation.COUNT,
            "2024-01-01T10:00",
            "2024-01-01T10:02",
            12,
            id="count-adds-bucket-counts",
        ),
        pytest.param(
            Aggregation.LATEST, "2024-01-01T10:00", "2024-01-01T10:03", 7, id="latest-in-window"
        ),
        pytest.param(
            Aggregation.LATEST,
            "2024-01-01T11:00",
            "2024-01-01T12:00",
            0,
            id="latest-without-events-is-zero",
        ),
        pytest.param(
            Aggregation.UNIQUE_COUNT,
            "2024-01-01T10:00",
            "2024-01-01T10:04",
            3,
            id="unique-count-distinct",
        ),
    ],
)
def test_usage_query(aggregation: Aggregation, start: str, end: str, expected: int) -> None:
    assert MinuteSeries(aggregation, BUCKETS)(T(start), T(end)) == D(expected)


def test_buckets_must_be_minute_aligned_and_distinct() -> None:
    with pytest.raises(ValueError, match="minute-aligned"):
        MinuteSeries(Aggregation.SUM, [UsageBucket(T("2024-01-01T10:00:30Z"), D(1))])
    with pytest.raises(ValueError, match="share a minute"):
        MinuteSeries(Aggregation.SUM, [BUCKETS[0], BUCKETS[0]])


def test_customer_key_always_counts_as_a_subject_key() -> None:
    customer = Customer("customer-1", "ACME", subject_keys=("svc-a", "customer-1"))
    assert customer.all_subject_keys == ("customer-1", "svc-a")
