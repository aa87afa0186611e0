"""Value reads through snapshots equal a full recomputation, on both databases.

The wired path (``values.status_values`` and ``values.value_of``: resume from the latest
snapshot of the same basis, read only the buckets after it, save a new one on whole hours) is
compared after every step of random histories with the straightforward computation: every
bucket since the epoch replayed by the core from measureUsageFrom, for SUM and UNIQUE_COUNT
meters. Steps ingest usage (late events included), record grants and voids, reset the
entitlement, and read at a later ``now``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select

from allotment.ledger.core.model import (
    Aggregation,
    CalendarDuration,
    EntitlementReset,
    EntitlementValue,
    Expiration,
    ExpirationUnit,
    Feature,
    Grant,
    Meter,
    Recurrence,
)
from allotment.ledger.core.periods import ResetOutcome, apply_reset
from allotment.ledger.core.timeutil import MINUTE, ceil_to_minute
from allotment.ledger.core.usage import MinuteSeries
from allotment.ledger.core.values import entitlement_value
from allotment.ledger.storage import catalogue, records, usage
from allotment.ledger.storage.codec import FeatureRecord
from allotment.ledger.storage.engine import Ledger
from allotment.ledger.storage.schema import BalanceSnapshotRow, UsageBucketRow
from allotment.ledger.values import (
    load_records,
    status_value,
    status_values,
    value_of,
    values_of,
)
from tests.core.factory import metered

START = datetime(2024, 1, 1, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TOKENS = Meter("tokens", "prompt", Aggregation.SUM, "$.tokens")
USERS = Meter("tokens", "prompt", Aggregation.UNIQUE_COUNT, "$.user")
CUSTOMER = "customer-1"
_namespaces = itertools.count()


@dataclass
class Scenario:
    """One namespace holding one metered entitlement, and the instant the story is at."""

    ledger: Ledger
    namespace: str
    entitlement_id: str
    now: datetime
    meter: Meter = TOKENS
    events: int = 0

    def record(self, *recorded: Any) -> None:
        with self.ledger.write() as conn:
            catalogue.record_versions(conn, self.namespace, list(recorded), recorded_at=self.now)

    def new_id(self, kind: str, name: str) -> str:
        with self.ledger.write() as conn:
            return records.create_identity(conn, self.namespace, kind, name, created_at=self.now).id

    def ingest(self, points: list[tuple[int, int]]) -> None:
        events = []
        for back, tokens in points:
            self.events += 1
            at = self.now - MINUTE * back
            events.append(
                usage.IncomingEvent(
                    f"e{self.events}",
                    "test",
                    "prompt",
                    CUSTOMER,
                    at,
                    {"tokens": tokens, "user": f"u{tokens % 3}"},
                )
            )
        with self.ledger.write() as conn:
            usage.ingest(conn, self.namespace, events, received_at=self.now)

    def grants(self) -> dict[str, Grant]:
        with self.ledger.read() as conn:
            loaded = load_records(conn, self.namespace)
        return {g.id: g for g in loaded.grants.get(self.entitlement_id, ())}

    def add_grant(self, amount: int, priority: int, offset: int, kind: str) -> None:
        grant_id = self.new_id("Grant", f"g{len(self.grants())}")
        effective = self.now + MINUTE * offset
        self.record(
            Grant(
                id=grant_id,
                namespace=self.namespace,
                name=grant_id,
                entitlement_id=self.entitlement_id,
                amount=Decimal(amount),
                effective_at=effective,
                created_at=self.now,
                priority=priority,
                expiration=Expiration(ExpirationUnit.DAY, 2) if kind == "expiring" else None,
                recurrence=(
                    Recurrence(CalendarDuration.parse("DAY"), effective)
                    if kind == "recurring"
                    else None
                ),
            )
        )

    def void_grant(self, back: int) -> None:
        open_grants = [g for g in self.grants().values() if g.void_at is None]
        if open_grants:
            chosen = sorted(open_grants, key=lambda g: g.id)[0]
            self.record(replace(chosen, void_at=max(chosen.effective_at, self.now - MINUTE * back)))

    def reset(self, back: int, retain_anchor: bool) -> None:
        with self.ledger.read() as conn:
            entitlement = load_records(conn, self.namespace).entitlements[self.entitlement_id]
        plan = apply_reset(
            entitlement, EntitlementReset(self.now - MINUTE * back, retain_anchor), self.now
        )
        if plan.outcome is ResetOutcome.APPLIED:
            self.record(plan.entitlement)

    def full_value(self) -> EntitlementValue:
        """Recompute from every bucket since the epoch, with no snapshot."""
        with self.ledger.read() as conn:
            loaded = load_records(conn, self.namespace)
            buckets = usage.read_buckets(
                conn,
                self.namespace,
                self.meter.slug,
                subjects=[CUSTOMER],
                start=EPOCH,
                end=ceil_to_minute(self.now),
            )
        return entitlement_value(
            loaded.entitlements[self.entitlement_id],
            self.now,
            grants=loaded.grants.get(self.entitlement_id, ()),
            aggregation=self.meter.aggregation,
            usage=MinuteSeries(self.meter.aggregation, buckets),
        )

    def snapshot_instants(self) -> list[datetime]:
        table = BalanceSnapshotRow.__table__
        with self.ledger.read() as conn:
            return list(
                conn.execute(
                    select(table.c.at)
                    .where(table.c.entitlement_id == self.entitlement_id)
                    .order_by(table.c.at)
                ).scalars()
            )


def open_scenario(
    ledger: Ledger, *, interval: str = "DAY", issue: int | None = None, meter: Meter = TOKENS
) -> Scenario:
    namespace = f"snap-{next(_namespaces)}"
    scenario = Scenario(ledger, namespace, "", START, meter)
    with ledger.write() as conn:
        usage.record_meter(
            conn, namespace, "tokens", meter, uid="m", generation=1, acted_at=START, now=START
        )
    feature_id = scenario.new_id("Feature", "tokens")
    scenario.record(FeatureRecord(feature_id, Feature("tokens", "Tokens", "tokens"), START))
    scenario.entitlement_id = scenario.new_id("Entitlement", "customer-1-tokens")
    entitlement = replace(
        metered("2024-01-01T00:00", interval=interval, issue=issue),
        id=scenario.entitlement_id,
        namespace=namespace,
    )
    scenario.record(entitlement)
    return scenario


def read_through_snapshots(scenario: Scenario) -> tuple[dict[str, Any], EntitlementValue | None]:
    """Return the operator's status.value (saving snapshots) and a value_of read after it."""
    ref = (scenario.namespace, "customer-1-tokens")
    with scenario.ledger.read() as conn:
        status = status_values(conn, [ref], scenario.now).get(ref, {}).get("value", {})
    with scenario.ledger.read() as conn:
        loaded = load_records(conn, scenario.namespace)
        value = value_of(conn, loaded, loaded.entitlements[scenario.entitlement_id], scenario.now)
    return status, value


change = st.one_of(
    st.tuples(
        st.just("ingest"),
        st.lists(
            st.tuples(st.sampled_from([0, 1, 5, 20, 90, 600, 3000]), st.integers(0, 40)),
            min_size=1,
            max_size=4,
        ),
    ),
    st.tuples(
        st.just("grant"),
        st.integers(1, 200),
        st.integers(0, 2),
        st.sampled_from([-3000, -60, 0, 30, 600]),
        st.sampled_from(["plain", "expiring", "recurring"]),
    ),
    st.tuples(st.just("void"), st.sampled_from([0, 30, 2000])),
    st.tuples(st.just("reset"), st.sampled_from([0, 45, 700]), st.booleans()),
)
#: A change, then a read that many minutes later.
step = st.tuples(change, st.integers(0, 36 * 60))


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    interval=st.sampled_from(["DAY", "WEEK"]),
    issue=st.sampled_from([None, 50]),
    meter=st.sampled_from([TOKENS, USERS]),
    steps=st.lists(step, min_size=1, max_size=8),
)
def test_reads_through_snapshots_equal_a_full_recomputation(
    ledger: Ledger, interval: str, issue: int | None, meter: Meter, steps: list[tuple[Any, ...]]
) -> None:
    scenario = open_scenario(ledger, interval=interval, issue=issue, meter=meter)
    scenario.add_grant(100, 0, 0, "plain")
    scenario.ingest([(0, 5)])
    for (action, *args), advance in [(("ingest", [(0, 1)]), 24 * 60), *steps]:
        if action == "ingest":
            scenario.ingest(args[0])
        elif action == "grant":
            scenario.add_grant(*args)
        elif action == "void":
            scenario.void_grant(args[0])
        else:
            scenario.reset(*args)
        scenario.now += MINUTE * advance + timedelta(seconds=7)
        status, value = read_through_snapshots(scenario)
        full = scenario.full_value()
        assert value == full
        assert status == status_value(full)


def test_a_read_saves_a_snapshot_on_the_hour_behind_it_and_the_next_reads_start_there(
    ledger: Ledger,
) -> None:
    scenario = open_scenario(ledger)
    scenario.add_grant(1000, 0, 0, "plain")
    scenario.now = START + timedelta(hours=30, minutes=10)
    scenario.ingest([(back, 3) for back in range(1, 30 * 60, 45)])
    read_through_snapshots(scenario)
    assert scenario.snapshot_instants() == [START + timedelta(hours=29)]
    scenario.now += timedelta(minutes=5)
    expected = status_value(scenario.full_value())
    table = UsageBucketRow.__table__
    with ledger.write() as conn:  # the history the snapshot holds is no longer read
        conn.execute(
            delete(table).where(
                table.c.namespace == scenario.namespace,
                table.c.minute < START + timedelta(hours=29),
            )
        )
    later, _ = read_through_snapshots(scenario)
    assert later == expected
    assert expected["usage"] > 0


def test_a_late_event_or_a_grant_drops_the_snapshots_it_makes_stale(ledger: Ledger) -> None:
    scenario = open_scenario(ledger)
    scenario.add_grant(1000, 0, 0, "plain")
    scenario.now = START + timedelta(hours=50)
    scenario.ingest([(60 * 49, 2), (60, 2)])
    read_through_snapshots(scenario)
    saved = scenario.snapshot_instants()
    assert saved == [START + timedelta(hours=49)]
    scenario.ingest([(5, 4)])  # fresh usage, after the snapshot: kept
    assert scenario.snapshot_instants() == saved
    scenario.ingest([(120, 4)])  # a late event before it: dropped
    assert scenario.snapshot_instants() == []
    read_through_snapshots(scenario)
    assert scenario.snapshot_instants() == saved
    scenario.add_grant(5, 0, 0, "plain")
    assert scenario.snapshot_instants() == []
    status, value = read_through_snapshots(scenario)
    assert value == scenario.full_value()
    assert status["usage"] == 10  # this day's period: 00:00, 01:00 and 01:55


def test_values_of_without_a_pending_list_saves_what_it_crossed(ledger: Ledger) -> None:
    scenario = open_scenario(ledger)
    scenario.add_grant(100, 0, 0, "plain")
    scenario.now = START + timedelta(hours=5, minutes=20)
    scenario.ingest([(30, 4)])
    with ledger.read() as conn:
        loaded = load_records(conn, scenario.namespace)
        values = values_of(conn, loaded, [scenario.entitlement_id], scenario.now)
    assert values[scenario.entitlement_id] == scenario.full_value()
    assert scenario.snapshot_instants() == [START + timedelta(hours=5)]


def test_a_read_inside_a_write_transaction_answers_and_gives_up_saving(ledger: Ledger) -> None:
    scenario = open_scenario(ledger)
    scenario.add_grant(100, 0, 0, "plain")
    scenario.now = START + timedelta(hours=5, minutes=20)
    with ledger.write() as conn:  # holds the writer lock (SQLite) and the feed lock (PostgreSQL)
        usage.ingest(
            conn,
            scenario.namespace,
            [usage.IncomingEvent("w1", "test", "prompt", CUSTOMER, START, {"tokens": 3})],
            received_at=scenario.now,
        )
        loaded = load_records(conn, scenario.namespace)
        values = values_of(conn, loaded, [scenario.entitlement_id], scenario.now)
    assert values[scenario.entitlement_id].usage == 3
    assert scenario.snapshot_instants() == []
