"""Properties of the engine over generated grants and usage (spec §6 identities, §8)."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from allotment.ledger.core.engine import run
from allotment.ledger.core.model import (
    Aggregation,
    CalendarDuration,
    EntitlementValue,
    Expiration,
    ExpirationUnit,
    Grant,
    Recurrence,
    UsageBucket,
)
from allotment.ledger.core.timeutil import MINUTE
from allotment.ledger.core.usage import MinuteSeries
from allotment.ledger.core.values import entitlement_value
from tests.core.factory import T, metered

START = T("2024-01-01T00:00")
PERIOD_MINUTES = 31 * 24 * 60  # January: no reset inside
ENT = metered("2024-01-01T00:00")
FAST = settings(max_examples=60, deadline=None)


@st.composite
def grants(draw: st.DrawFn, *, simple: bool = False, horizon: int = PERIOD_MINUTES) -> list[Grant]:
    result = []
    for i in range(draw(st.integers(0, 5))):
        expiration = None
        void_at = None
        recurrence = None
        if not simple:
            if draw(st.booleans()):
                expiration = Expiration(ExpirationUnit.DAY, draw(st.integers(1, 40)))
            if draw(st.booleans()):
                void_at = START + MINUTE * draw(st.integers(0, horizon))
            if draw(st.booleans()):
                interval = CalendarDuration.parse(draw(st.sampled_from(["DAY", "WEEK", "MONTH"])))
                anchor = START + MINUTE * draw(st.integers(0, horizon))
                recurrence = Recurrence(interval, anchor)
        effective = START + MINUTE * draw(st.integers(0, horizon - 1))
        result.append(
            Grant(
                id=f"g{i}",
                namespace="default",
                name=f"g{i}",
                entitlement_id=ENT.id,
                amount=Decimal(draw(st.integers(1, 100))),
                min_rollover_amount=Decimal(draw(st.integers(0, 20))),
                max_rollover_amount=draw(st.sampled_from([None, Decimal(0), Decimal(50)])),
                effective_at=effective,
                created_at=effective,
                priority=draw(st.integers(0, 3)),
                expiration=expiration,
                void_at=void_at,
                recurrence=recurrence,
            )
        )
    return result


@st.composite
def usage_events(draw: st.DrawFn, *, before: int = PERIOD_MINUTES) -> dict[datetime, Decimal]:
    events: dict[datetime, Decimal] = {}
    for _ in range(draw(st.integers(0, 12))):
        minute = START + MINUTE * draw(st.integers(0, before - 1))
        events[minute] = events.get(minute, Decimal(0)) + Decimal(draw(st.integers(0, 60)))
    return events


def evaluate(
    grant_list: list[Grant], events: dict[datetime, Decimal], at: datetime
) -> EntitlementValue:
    usage = MinuteSeries(Aggregation.SUM, [UsageBucket(m, a) for m, a in events.items()])
    return entitlement_value(ENT, at, grants=grant_list, aggregation=Aggregation.SUM, usage=usage)


minute_in_period = st.integers(1, PERIOD_MINUTES - 1).map(lambda m: START + MINUTE * m)


@FAST
@given(grants(simple=True), usage_events(), minute_in_period)
def test_usage_plus_balance_minus_overage_is_what_was_available(
    grant_list: list[Grant], events: dict[datetime, Decimal], at: datetime
) -> None:
    result = evaluate(grant_list, events, at)
    available = sum((g.amount for g in grant_list if g.effective_at <= at), Decimal(0))
    assert result.usage is not None and result.balance is not None and result.overage is not None
    assert result.usage + result.balance - result.overage == available
    assert result.total_available_grant_amount == available


@FAST
@given(grants(), usage_events(), minute_in_period)
def test_total_available_is_balance_plus_usage_minus_overage(
    grant_list: list[Grant], events: dict[datetime, Decimal], at: datetime
) -> None:
    result = evaluate(grant_list, events, at)
    assert result.usage is not None and result.balance is not None and result.overage is not None
    assert result.total_available_grant_amount == result.balance + result.usage - result.overage
    assert result.balance >= 0 and result.overage >= 0


@FAST
@given(grants(), usage_events(), minute_in_period, st.randoms(use_true_random=False))
def test_order_of_equal_inputs_does_not_matter(
    grant_list: list[Grant], events: dict[datetime, Decimal], at: datetime, rnd: object
) -> None:
    shuffled = list(grant_list)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    reordered_events = dict(reversed(list(events.items())))
    assert evaluate(shuffled, reordered_events, at) == evaluate(grant_list, events, at)


@FAST
@given(grants(), usage_events(), minute_in_period, minute_in_period, st.integers(0, 60))
def test_usage_is_monotonic(
    grant_list: list[Grant],
    events: dict[datetime, Decimal],
    t1: datetime,
    t2: datetime,
    extra: int,
) -> None:
    early, late = sorted((t1, t2))
    first, second = evaluate(grant_list, events, early), evaluate(grant_list, events, late)
    assert first.usage is not None and second.usage is not None
    assert first.usage <= second.usage
    more = dict(events)
    more[early - MINUTE] = more.get(early - MINUTE, Decimal(0)) + Decimal(extra)
    with_more = evaluate(grant_list, more, late)
    assert with_more.usage is not None and with_more.balance is not None
    assert second.balance is not None
    assert with_more.usage >= second.usage
    assert with_more.balance <= second.balance


@FAST
@given(grants(), st.integers(1, PERIOD_MINUTES // 2), st.data())
def test_value_holds_until_valid_until_without_new_usage(
    grant_list: list[Grant], at_minute: int, data: st.DataObject
) -> None:
    at = START + MINUTE * at_minute
    events = data.draw(usage_events(before=at_minute))
    result = evaluate(grant_list, events, at)
    end = result.valid_until or at + timedelta(days=60)
    span = int((end - at) / MINUTE)
    probe = at + MINUTE * data.draw(st.integers(0, max(0, span - 1)))
    later = evaluate(grant_list, events, probe)
    assert (later.balance, later.usage, later.overage, later.grant_balances, later.has_access) == (
        result.balance,
        result.usage,
        result.overage,
        result.grant_balances,
        result.has_access,
    )


QUARTER = 91 * 24 * 60


@FAST
@given(
    grants(horizon=QUARTER),
    usage_events(before=QUARTER),
    st.integers(1, QUARTER - 1),
    st.integers(1, QUARTER - 1),
    st.booleans(),
    st.sampled_from([None, 30]),
)
def test_resuming_from_any_snapshot_equals_a_full_replay(
    grant_list: list[Grant],
    events: dict[datetime, Decimal],
    cut_minute: int,
    end_minute: int,
    preserve: bool,
    issue: int | None,
) -> None:
    ent = metered("2024-01-01T00:00", preserve=preserve, issue=issue)
    cut, end = sorted((START + MINUTE * cut_minute, START + MINUTE * end_minute))
    usage = MinuteSeries(Aggregation.SUM, [UsageBucket(m, a) for m, a in events.items()])
    full = run(ent, grant_list, Aggregation.SUM, usage, end).snapshot
    snapshot = run(ent, grant_list, Aggregation.SUM, usage, cut).snapshot
    resumed = run(ent, grant_list, Aggregation.SUM, usage, end, start=snapshot).snapshot
    assert resumed == full
