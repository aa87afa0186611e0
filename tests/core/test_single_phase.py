"""A fresh replay in which nothing happens after measureUsageFrom equals the general replay.

``engine.run`` answers such a replay (every grant active from measureUsageFrom through the read
instant, no refill, no reset in between) in one step; ``run(..., record=True)`` always walks the
general replay. Both must give the same snapshot (same numbers, same Decimal representations)
and the same next reset, for every aggregation, whether or not the case is the one-step one.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allotment.ledger.core.engine import run
from allotment.ledger.core.model import (
    Aggregation,
    CalendarDuration,
    Entitlement,
    Expiration,
    ExpirationUnit,
    Grant,
    Recurrence,
    UsageBucket,
)
from allotment.ledger.core.periods import new_usage_period
from allotment.ledger.core.timeutil import MINUTE
from allotment.ledger.core.usage import MinuteSeries
from tests.core.factory import T, metered

START = T("2024-01-10T00:00")
DAY = timedelta(days=1)
AMOUNTS = [Decimal(5), Decimal("2.50"), Decimal("1E+2"), Decimal(0), Decimal(-3), Decimal("0.001")]


@st.composite
def grant_lists(draw: st.DrawFn) -> list[Grant]:
    result = []
    for i in range(draw(st.integers(0, 4))):
        effective = START - MINUTE * draw(st.sampled_from([0, 0, 1, 90, -5]))
        expiration = draw(st.sampled_from([None, None, Expiration(ExpirationUnit.DAY, 3)]))
        void_at = draw(st.sampled_from([None, None, START + DAY, START + 40 * DAY]))
        recurrence = draw(
            st.sampled_from([None, None, None, Recurrence(CalendarDuration(days=1), START)])
        )
        result.append(
            Grant(
                id=f"g{draw(st.integers(0, 5))}",
                namespace="default",
                name=f"g{i}",
                entitlement_id="ent-1",
                amount=draw(st.sampled_from(AMOUNTS)),
                effective_at=effective,
                created_at=effective,
                priority=draw(st.integers(0, 2)),
                expiration=expiration,
                void_at=void_at,
                recurrence=recurrence,
                min_rollover_amount=Decimal(0),
            )
        )
    return result


@st.composite
def entitlements(draw: st.DrawFn) -> Entitlement:
    anchor = draw(st.sampled_from([T("2024-01-01T00:00"), START, T("2024-01-31T12:00")]))
    interval = CalendarDuration.parse(draw(st.sampled_from(["MONTH", "WEEK", "DAY"])))
    base = metered("2024-01-10T00:00")
    # measureUsageFrom after the timeline's start: the phase's period starts before it
    measure_from = START + MINUTE * draw(st.sampled_from([0, 0, 30]))
    return replace(
        base,
        usage_period=new_usage_period(interval, anchor, START),
        measure_usage_from=measure_from,
    )


@settings(max_examples=300, deadline=None)
@given(
    entitlements(),
    grant_lists(),
    st.lists(st.tuples(st.integers(-100, 6000), st.sampled_from(AMOUNTS)), max_size=8),
    st.integers(0, 6000),
    st.sampled_from(list(Aggregation)),
)
def test_a_fresh_replay_equals_the_general_one(
    entitlement: Entitlement,
    grant_list: list[Grant],
    events: list[tuple[int, Decimal]],
    minutes: int,
    aggregation: Aggregation,
) -> None:
    buckets: dict[datetime, Decimal] = {}
    for minute, amount in events:
        at = START + MINUTE * minute
        buckets[at] = buckets[at] + abs(amount) if at in buckets else abs(amount)
    usage = MinuteSeries(
        aggregation,
        (UsageBucket(m, a, frozenset({str(a)})) for m, a in sorted(buckets.items())),
    )
    until = max(START + MINUTE * minutes, entitlement.measure_usage_from or START)
    quick = run(entitlement, grant_list, aggregation, usage, until)
    walked = run(entitlement, grant_list, aggregation, usage, until, record=True)
    assert quick.snapshot == walked.snapshot
    assert repr(quick.snapshot) == repr(walked.snapshot)  # 1E+2 is not 100
    assert quick.next_reset == walked.next_reset


@pytest.mark.parametrize(
    ("minutes", "grant_effective"),
    [
        pytest.param(0, START, id="read-at-measure-from"),
        pytest.param(600, START, id="one-phase"),
        pytest.param(600, START + MINUTE, id="grant-starts-later"),
    ],
)
def test_the_seed_shape_reads_the_same_both_ways(minutes: int, grant_effective: datetime) -> None:
    entitlement = metered("2024-01-10T00:00")
    grant = Grant("g", "default", "g", "ent-1", Decimal(1000), grant_effective, grant_effective)
    usage = MinuteSeries(Aggregation.SUM, [UsageBucket(START + MINUTE * 5, Decimal(7))])
    until = START + MINUTE * minutes
    quick = run(entitlement, [grant], Aggregation.SUM, usage, until)
    walked = run(entitlement, [grant], Aggregation.SUM, usage, until, record=True)
    assert repr(quick.snapshot) == repr(walked.snapshot)
