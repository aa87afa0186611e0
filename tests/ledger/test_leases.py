"""Strict-mode leases in the ledger, on SQLite and PostgreSQL: a lease is granted only while
committed usage plus every live lease stays within the budget, and never changes a balance."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from allotment.ledger.core.model import Aggregation, Meter
from allotment.ledger.storage import feed, leases, migrate, usage
from allotment.ledger.storage.engine import Ledger, open_ledger
from tests.ledger.sidecar_role import sidecar_role_ledger

NS = "team-a"
T0 = datetime(2026, 11, 1, tzinfo=UTC)
NOW = T0 + timedelta(days=3)
PERIOD = T0
ENT = "01JENTITLEMENT000000000000"
TTL = timedelta(seconds=10)
SCOPE = leases.UsageScope("tokens", ("customer-1",))
TOKENS = Meter("tokens", "prompt", Aggregation.SUM, "$.tokens")


def seed(ledger: Ledger, namespace: str = NS, *, used: int = 200) -> None:
    """Record the tokens meter and ``used`` tokens of customer-1 in the period."""
    with ledger.write() as conn:
        usage.record_meter(
            conn, namespace, "tokens", TOKENS, uid=namespace, generation=1, acted_at=T0, now=T0
        )
        before_period = usage.IncomingEvent(
            "old", "app", "prompt", "customer-1", T0 - timedelta(days=1), {"tokens": 5000}
        )
        in_period = usage.IncomingEvent(
            "e1", "app", "prompt", "customer-1", T0 + timedelta(days=1), {"tokens": used}
        )
        usage.ingest(conn, namespace, [before_period, in_period], received_at=NOW)


def take(
    conn: sa.Connection,
    holder: str,
    want: str,
    *,
    minimum: str = "0",
    spent: str = "0",
    budget: str = "1000",
    now: datetime = NOW,
    period: datetime = PERIOD,
) -> leases.Lease:
    return leases.take_lease(
        conn,
        NS,
        ENT,
        period,
        holder,
        scope=SCOPE,
        budget=Decimal(budget),
        want=Decimal(want),
        minimum=Decimal(minimum),
        spent=Decimal(spent),
        now=now,
        ttl=TTL,
    )


@pytest.mark.parametrize(
    ("others", "want", "minimum", "granted"),
    [
        pytest.param((), "500", "0", 500, id="fits"),
        pytest.param((), "900", "0", 800, id="capped-at-balance-minus-usage"),
        pytest.param((), "900", "801", 0, id="less-than-the-minimum-grants-nothing"),
        pytest.param(("300",), "900", "0", 500, id="another-holder-claims-300"),
        pytest.param(("300", "500"), "10", "1", 0, id="all-claimed"),
        pytest.param(("800",), "1", "0", 0, id="nothing-left"),
    ],
)
def test_a_lease_fits_within_budget_minus_usage_minus_live_leases(
    ledger: Ledger, others: tuple[str, ...], want: str, minimum: str, granted: int
) -> None:
    seed(ledger)
    with ledger.write() as conn:
        for n, amount in enumerate(others):
            assert take(conn, f"other-{n}", amount).granted == Decimal(amount)
        lease = take(conn, "pod-a", want, minimum=minimum)
        total = leases.outstanding(conn, NS, ENT, PERIOD, now=NOW)
    assert lease.granted == granted
    assert lease.usage == 200
    assert lease.reserved == granted
    assert total == sum((Decimal(o) for o in others), Decimal(granted))
    assert total <= 1000 - 200


def test_expired_leases_and_leases_of_another_period_count_for_nothing(ledger: Ledger) -> None:
    seed(ledger)
    with ledger.write() as conn:
        take(conn, "dead-pod", "800", now=NOW - TTL - timedelta(seconds=1))
        take(conn, "last-month", "800", period=PERIOD - timedelta(days=30))
        lease = take(conn, "pod-a", "800")
    assert lease.granted == 800


def test_spent_frees_the_claim_and_only_grows(ledger: Ledger) -> None:
    seed(ledger)
    with ledger.write() as conn:
        take(conn, "pod-a", "800")
        assert take(conn, "pod-b", "1").granted == 0
        renewed = take(conn, "pod-a", "0", spent="300")
        assert (renewed.reserved, renewed.spent, renewed.claimed) == (800, 300, 500)
        assert take(conn, "pod-b", "400").granted == 300
        # A smaller spent never takes back what was recorded.
        again = take(conn, "pod-a", "0", spent="100")
    assert (again.spent, again.claimed) == (300, 500)


def test_an_expired_lease_of_the_same_holder_starts_again_from_what_it_spent(
    ledger: Ledger,
) -> None:
    seed(ledger)
    with ledger.write() as conn:
        take(conn, "pod-a", "800", now=NOW - TTL - timedelta(seconds=1))
        revived = take(conn, "pod-a", "100", spent="50")
    assert (revived.reserved, revived.spent, revived.claimed) == (150, 50, 100)


def test_return_keeps_approvals_until_hold_until_then_they_lapse(ledger: Ledger) -> None:
    seed(ledger)
    with ledger.write() as conn:
        take(conn, "pod-a", "800")
        returned = leases.return_lease(
            conn,
            NS,
            ENT,
            PERIOD,
            "pod-a",
            keep=Decimal(120),
            spent=Decimal(20),
            hold_until=NOW + timedelta(seconds=5),
        )
        assert returned is not None
        assert (returned.reserved, returned.claimed) == (120, 100)
        assert take(conn, "pod-b", "800").granted == 700
        later = NOW + timedelta(seconds=6)
        assert take(conn, "pod-c", "800", now=later).granted == 100
        assert leases.outstanding(conn, NS, ENT, PERIOD, now=later) == 800
        assert (
            leases.return_lease(
                conn, NS, ENT, PERIOD, "nobody", keep=Decimal(0), spent=Decimal(0), hold_until=NOW
            )
            is None
        )


def test_leases_never_change_usage_or_the_feed(ledger: Ledger) -> None:
    seed(ledger)
    with ledger.read() as conn:
        head = feed.feed_head(conn)
        used = leases.committed_usage(conn, NS, SCOPE, since=PERIOD)
    with ledger.write() as conn:
        take(conn, "pod-a", "800")
        leases.return_lease(
            conn, NS, ENT, PERIOD, "pod-a", keep=Decimal(0), spent=Decimal(0), hold_until=NOW
        )
    with ledger.read() as conn:
        assert feed.feed_head(conn) == head
        assert leases.committed_usage(conn, NS, SCOPE, since=PERIOD) == used == 200


def test_prune_deletes_only_expired_leases(ledger: Ledger) -> None:
    seed(ledger)
    with ledger.write() as conn:
        take(conn, "dead-pod", "100", now=NOW - TTL - timedelta(seconds=1))
        take(conn, "pod-a", "100")
        assert leases.prune_leases(conn, before=NOW) == 1
        assert leases.outstanding(conn, NS, ENT, PERIOD, now=NOW) == 100


def test_concurrent_holders_never_reserve_more_than_the_budget(migrated_ledger_url: str) -> None:
    ledgers = [open_ledger(migrated_ledger_url) for _ in range(4)]
    try:
        seed(ledgers[0])
        granted: list[Decimal] = []
        guard = threading.Lock()

        def holder(n: int) -> None:
            for _ in range(15):
                with ledgers[n].write() as conn:
                    lease = take(conn, f"pod-{n}", "37", minimum="1")
                with guard:
                    granted.append(lease.granted)

        threads = [threading.Thread(target=holder, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with ledgers[0].read() as conn:
            total = leases.outstanding(conn, NS, ENT, PERIOD, now=NOW)
    finally:
        for ledger in ledgers:
            ledger.dispose()
    assert sum(granted) == total == 800


# --- least privilege (D12): the sidecar's role on PostgreSQL --------------------------------


@pytest.fixture
def sidecar_ledger(fresh_postgres_database: str) -> Iterator[tuple[Ledger, Ledger]]:
    """The owner's ledger with usage in team-a and team-b, and team-a's sidecar's ledger."""
    migrate.upgrade(fresh_postgres_database)
    owner = open_ledger(fresh_postgres_database)
    seed(owner, "team-a")
    seed(owner, "team-b")
    try:
        with sidecar_role_ledger(
            owner, fresh_postgres_database, "team-a", "sidecar_leases"
        ) as sidecar:
            yield owner, sidecar
    finally:
        owner.dispose()


def test_a_sidecar_role_takes_and_returns_leases_of_its_namespace(
    sidecar_ledger: tuple[Ledger, Ledger],
) -> None:
    owner, sidecar = sidecar_ledger
    with sidecar.write() as conn:
        assert take(conn, "pod-a", "300").granted == 300
        assert take(conn, "pod-a", "900").granted == 500
        leases.return_lease(
            conn, NS, ENT, PERIOD, "pod-a", keep=Decimal(0), spent=Decimal(0), hold_until=NOW
        )
    with owner.read() as conn:
        assert leases.outstanding(conn, NS, ENT, PERIOD, now=NOW) == 0


def _lease_of_another_namespace(conn: sa.Connection) -> None:
    leases.take_lease(
        conn,
        "team-b",
        ENT,
        PERIOD,
        "pod-a",
        scope=SCOPE,
        budget=Decimal(1000),
        want=Decimal(1),
        minimum=Decimal(0),
        spent=Decimal(0),
        now=NOW,
        ttl=TTL,
    )


def _delete_a_lease(conn: sa.Connection) -> None:
    conn.execute(sa.text("DELETE FROM leases"))


def _move_a_lease(conn: sa.Connection) -> None:
    conn.execute(sa.text("UPDATE leases SET namespace = 'team-b'"))


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(_lease_of_another_namespace, id="a-lease-in-another-namespace"),
        pytest.param(_delete_a_lease, id="deleting-a-lease"),
        pytest.param(_move_a_lease, id="moving-a-lease-to-another-namespace"),
    ],
)
def test_a_sidecar_role_cannot_write_leases_outside_ingestion(
    sidecar_ledger: tuple[Ledger, Ledger], write: Callable[[sa.Connection], None]
) -> None:
    _, sidecar = sidecar_ledger
    with sidecar.write() as conn:
        take(conn, "pod-a", "100")
    with (
        pytest.raises((DBAPIError, LookupError), match=r"permission denied|row-level|no meter"),
        sidecar.write() as conn,
    ):
        write(conn)
    with sidecar.read() as conn:
        assert leases.outstanding(conn, NS, ENT, PERIOD, now=NOW) == 100


def _event(
    subject: str = "customer-1", *, at: datetime = NOW, **data: object
) -> usage.IncomingEvent:
    return usage.IncomingEvent(str(uuid.uuid4()), "app", "prompt", subject, at, dict(data))


@pytest.mark.parametrize(
    ("events", "filters", "added"),
    [
        pytest.param([_event(tokens=30), _event(tokens=12)], {}, 42, id="sum-of-own-events"),
        pytest.param([_event("customer-2", tokens=30)], {}, 0, id="another-subject"),
        pytest.param([_event(tokens=30, at=PERIOD - timedelta(minutes=1))], {}, 0, id="before"),
        pytest.param([_event(tokens="lots")], {}, 0, id="not-a-number-is-not-counted"),
        pytest.param(
            [_event(tokens=30, model="gpt-4"), _event(tokens=5, model="gpt-3")],
            {"model": "gpt-4"},
            30,
            id="group-by-filter",
        ),
    ],
)
def test_what_events_add_to_a_lease_scope_is_what_ingestion_counts(
    ledger: Ledger, events: list[usage.IncomingEvent], filters: dict[str, str], added: int
) -> None:
    grouped = Meter("tokens", "prompt", Aggregation.SUM, "$.tokens", {"model": "$.model"})
    with ledger.write() as conn:
        usage.record_meter(conn, NS, "tokens", grouped, uid="m", generation=1, acted_at=T0, now=T0)
        scope = leases.UsageScope("tokens", ("customer-1",), filters)
        meter = leases.recorded_meter(conn, NS, scope)
        assert meter is not None
        usage.ingest(conn, NS, events, received_at=NOW)
        counted = leases.committed_usage(conn, NS, scope, since=PERIOD)
    assert leases.usage_of_events(meter, scope, events, since=PERIOD) == added == counted
