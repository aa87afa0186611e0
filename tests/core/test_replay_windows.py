"""The replay's remembered active-grant set agrees with filtering the grants at each instant.

The engine remembers which grants are active together with the window between grant edges in
which that set holds; these properties ask it at instants in any order (forwards as the replay
does, and backwards, repeated, on edges) and compare with the plain definition
``effectiveAt <= t < min(expiresAt, voidAt)`` for every grant, in burn-down order.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from allotment.ledger.core.engine import _Replay, relevant_grants, starting_snapshot
from allotment.ledger.core.grants import grant_is_active_at
from allotment.ledger.core.model import (
    Aggregation,
    Expiration,
    ExpirationUnit,
    Grant,
)
from allotment.ledger.core.usage import MinuteSeries
from tests.core.factory import T, metered

START = T("2024-01-01T00:00")
HOUR = timedelta(hours=1)


@st.composite
def grant_lists(draw: st.DrawFn) -> list[Grant]:
    """Zero to five grants starting, expiring and voided on hours of the first ten days."""
    grants = []
    for i in range(draw(st.integers(0, 5))):
        effective = START + draw(st.integers(0, 240)) * HOUR
        expiration = draw(
            st.none() | st.builds(Expiration, st.just(ExpirationUnit.HOUR), st.integers(1, 120))
        )
        void = draw(st.none() | st.integers(0, 240).map(lambda h: START + h * HOUR))
        grants.append(
            Grant(
                id=f"g{i}",
                namespace="default",
                name=f"grant-{i}",
                entitlement_id="ent-1",
                amount=Decimal(100),
                effective_at=effective,
                created_at=effective,
                priority=draw(st.integers(0, 2)),
                expiration=expiration,
                void_at=void,
            )
        )
    return grants


@given(grant_lists(), st.lists(st.integers(-10, 260), min_size=1, max_size=30))
def test_active_grants_match_the_plain_filter(grants: list[Grant], hours: list[int]) -> None:
    entitlement = metered("2024-01-01T00:00")
    chosen = relevant_grants(grants, START, START + 300 * HOUR)
    replay = _Replay(
        entitlement,
        chosen,
        Aggregation.SUM,
        MinuteSeries(Aggregation.SUM, ()),
        starting_snapshot(entitlement, chosen),
        record=False,
    )
    for hour in [*hours, *sorted(hours)]:
        instant: datetime = START + hour * HOUR
        expected = tuple(g for g in chosen if grant_is_active_at(g, instant))
        assert replay.active_at(instant) == expected
