"""The view's usage store: compact integer series answer exactly what the general series does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from allotment.ledger.core.model import Aggregation
from allotment.ledger.storage.usage import BucketState
from allotment.sidecar.usage import (
    Series,
    UsageStore,
    minute_index,
    packed,
    packed_count,
    packed_length,
    packed_total,
    put_packed,
)

T0 = datetime(2026, 11, 1, tzinfo=UTC)
BASE = minute_index(T0)


def bucket(minute: int, count: int, total: str, subject: str = "sub-a") -> BucketState:
    return BucketState(
        "meter-id", "tokens", subject, (), T0 + timedelta(minutes=minute), count, Decimal(total)
    )


def store(*buckets: BucketState) -> UsageStore:
    held = UsageStore()
    held.plain_meters.add("tokens")
    for each in buckets:
        held.put(each)
    return held


def total(held: UsageStore, start: int, end: int, subject: str = "sub-a") -> Decimal:
    series = held.matching("tokens", [subject], {})
    return held.aggregate(
        Aggregation.SUM, series, T0 + timedelta(minutes=start), T0 + timedelta(minutes=end)
    )


@pytest.mark.parametrize(
    ("buckets", "window", "expected"),
    [
        pytest.param([bucket(0, 1, "5"), bucket(3, 2, "7")], (0, 10), "12", id="in-order"),
        pytest.param([bucket(3, 2, "7"), bucket(0, 1, "5")], (0, 3), "5", id="late-minute"),
        pytest.param(
            [bucket(1, 1, "5"), bucket(1, 3, "9"), bucket(1, 2, "7")], (0, 2), "9", id="newest"
        ),
        pytest.param([bucket(0, 1, "2.5"), bucket(1, 1, "1")], (0, 2), "3.5", id="fraction"),
        pytest.param(
            [bucket(0, 1, str(2**62)), bucket(1, 1, str(2**62))],
            (0, 2),
            str(2**63),
            id="past-64-bits",
        ),
        pytest.param([bucket(0, 1, "-4"), bucket(1, 1, "1")], (0, 2), "-3", id="negative"),
        pytest.param(
            [bucket(0, 1, str(2**31 - 1)), bucket(2, 1, "5"), bucket(1, 1, "-7")],
            (0, 3),
            str(2**31 - 3),
            id="past-32-bits",
        ),
        pytest.param(
            [bucket(0, 1, "5"), bucket(1, 1, "1"), bucket(1, 2, str(2**31 + 5))],
            (0, 2),
            str(2**31 + 10),
            id="last-minute-past-32-bits",
        ),
    ],
)
def test_sums_are_exact_whatever_the_order_and_size(
    buckets: list[BucketState], window: tuple[int, int], expected: str
) -> None:
    assert total(store(*buckets), *window) == Decimal(expected)


def test_a_bucket_state_applied_twice_counts_once() -> None:
    held = store(bucket(0, 2, "10"))
    assert held.put(bucket(0, 2, "10")) is False
    assert held.put(bucket(0, 1, "4")) is False
    assert total(held, 0, 1) == Decimal(10)
    assert held.bucket_count == 1


def test_the_live_minute_updated_in_place_holds_its_newest_count_and_sum() -> None:
    held = store(bucket(0, 4, "40"), bucket(2, 1, "5"), bucket(2, 3, "9"), bucket(2, 2, "7"))
    assert total(held, 0, 3) == Decimal(49)
    assert total(held, 2, 3) == Decimal(9)
    window = (T0 + timedelta(minutes=2), T0 + timedelta(minutes=3))
    count = held.aggregate(Aggregation.COUNT, held.matching("tokens", ["sub-a"], {}), *window)
    assert count == 3
    assert held.bucket_count == 2


def test_group_by_series_of_one_subject_are_kept_apart() -> None:
    held = store(bucket(0, 1, "5"))
    grouped = BucketState("meter-id", "tokens", "sub-a", (("model", "gpt-4"),), T0, 1, Decimal(7))
    held.put(grouped)
    everything = held.matching("tokens", ["sub-a"], {})
    only_gpt4 = held.matching("tokens", ["sub-a"], {"model": "gpt-4"})
    window = (T0, T0 + timedelta(minutes=1))
    assert held.aggregate(Aggregation.SUM, everything, *window) == Decimal(12)
    assert held.aggregate(Aggregation.SUM, only_gpt4, *window) == Decimal(7)


STATES = st.lists(
    st.tuples(st.integers(0, 40), st.integers(1, 6), st.integers(-1000, 10**6)),
    max_size=60,
)


@given(STATES, st.integers(0, 42), st.integers(0, 42))
def test_packed_series_answers_what_the_general_series_does(
    states: list[tuple[int, int, int]], start: int, end: int
) -> None:
    compact, general = packed([], [0], [0]), Series()
    assert compact is not None
    for minute, count, value in states:
        state = bucket(minute, count, str(value))
        stored = put_packed(compact, state)
        assert stored is not None
        assert (stored is not False) == general.put(state, False)
        compact = compact if stored is False else stored
    lo, hi = BASE + min(start, end), BASE + max(start, end)
    # the same bytes as packing the general series' buckets at once, whichever way each came in
    minutes, counts, sums = general.minutes, [0], [0]
    for count, value in zip(general.counts, general.sums, strict=True):
        counts.append(counts[-1] + count)
        sums.append(sums[-1] + int(value))
    assert compact == packed(minutes, counts, sums)
    assert packed_total(compact, lo, hi) == general.total(lo, hi)
    assert packed_count(compact, lo, hi) == general.count(lo, hi)
    assert packed_length(compact) == len(general)


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        pytest.param([(0, 1, "2.5")], None, id="fraction"),
        pytest.param([(0, 1, str(2**62)), (1, 1, str(2**62))], None, id="past-64-bits"),
        pytest.param([(0, 1, "5"), (0, 1, "6")], False, id="same-count-again"),
        pytest.param([(0, 2, "5"), (0, 1, "6")], False, id="older-state"),
    ],
)
def test_a_packed_series_refuses_what_it_cannot_hold_or_already_has(
    states: list[tuple[int, int, str]], expected: bool | None
) -> None:
    compact = packed([], [0], [0])
    result: object = compact
    for minute, count, value in states:
        assert isinstance(compact, bytes)
        result = put_packed(compact, bucket(minute, count, value))
        compact = result if isinstance(result, bytes) else compact
    assert result is expected


def test_minutes_past_32_bits_keep_a_general_series() -> None:
    far = BucketState(
        "meter-id", "tokens", "sub-a", (), datetime(9999, 1, 1, tzinfo=UTC), 1, Decimal(3)
    )
    held = store(bucket(0, 1, "5"), far)
    series = held.matching("tokens", ["sub-a"], {})
    assert held.bucket_count == 2
    assert held.aggregate(
        Aggregation.SUM, series, T0, datetime(9999, 12, 31, tzinfo=UTC)
    ) == Decimal(8)


SUBJECT_STATES = st.lists(
    st.tuples(
        st.sampled_from(["sub-a", "sub-b"]),
        st.sampled_from([(), (("model", "gpt-4"),)]),
        st.integers(0, 20),
        st.integers(1, 6),
        st.sampled_from(["0", "3", "-2", "2.5", str(2**62)]),
    ),
    max_size=40,
)


@given(SUBJECT_STATES, st.integers(0, 22), st.integers(0, 22))
def test_a_bulk_load_holds_what_bucket_by_bucket_puts_hold(
    states: list[tuple[str, tuple[tuple[str, str], ...], int, int, str]], start: int, end: int
) -> None:
    buckets = [
        BucketState(
            "meter-id", "tokens", subject, groups, T0 + timedelta(minutes=m), count, Decimal(v)
        )
        for subject, groups, m, count, v in sorted(states, key=lambda s: (s[0], s[1], s[2]))
    ]
    loaded = UsageStore()
    loaded.plain_meters.add("tokens")
    loaded.load(buckets)
    one_by_one = store(*buckets)
    window = (T0 + timedelta(minutes=min(start, end)), T0 + timedelta(minutes=max(start, end)))
    assert loaded.bucket_count == one_by_one.bucket_count
    for subject in ("sub-a", "sub-b"):
        for filters in ({}, {"model": "gpt-4"}):
            for aggregation in (Aggregation.SUM, Aggregation.COUNT):
                assert loaded.aggregate(
                    aggregation, loaded.matching("tokens", [subject], filters), *window
                ) == one_by_one.aggregate(
                    aggregation, one_by_one.matching("tokens", [subject], filters), *window
                )
