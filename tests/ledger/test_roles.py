"""Least privilege in the data plane (D12): a sidecar's role on the real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from allotment.ledger.core.model import Aggregation, Grant, Meter
from allotment.ledger.storage import catalogue, feed, migrate, usage
from allotment.ledger.storage.engine import Ledger, open_ledger
from tests.ledger.sidecar_role import sidecar_role_ledger

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=1)
TOKENS = Meter("tokens", "prompt", Aggregation.SUM, "$.tokens")


def event(number: int, tokens: int = 1) -> usage.IncomingEvent:
    return usage.IncomingEvent(f"e{number}", "app", "prompt", "customer-1", T0, {"tokens": tokens})


@pytest.fixture
def owner_and_sidecar(fresh_postgres_database: str) -> Iterator[tuple[Ledger, Ledger]]:
    """The schema owner's ledger with usage in two namespaces, and team-a's sidecar's ledger."""
    migrate.upgrade(fresh_postgres_database)
    owner = open_ledger(fresh_postgres_database)
    with owner.write() as conn:
        for namespace, tokens in (("team-a", 1), ("team-b", 100)):
            usage.record_meter(
                conn, namespace, "tokens", TOKENS, uid=namespace, generation=1, acted_at=T0, now=NOW
            )
            usage.ingest(conn, namespace, [event(1, tokens)], received_at=NOW)
    try:
        with sidecar_role_ledger(
            owner, fresh_postgres_database, "team-a", "sidecar_team_a"
        ) as sidecar:
            yield owner, sidecar
    finally:
        owner.dispose()


def test_a_sidecar_reads_its_namespace_and_nothing_of_another(
    owner_and_sidecar: tuple[Ledger, Ledger],
) -> None:
    _, sidecar = owner_and_sidecar
    with sidecar.read() as conn:
        assert [e.namespace for e in feed.read_feed(conn, "team-a", after=0)] == ["team-a"] * 2
        assert feed.read_feed(conn, "team-b", after=0) == []
        assert [m.namespace for m in usage.load_meters(conn, "team-b")] == []
        assert conn.execute(sa.text("SELECT DISTINCT namespace FROM usage_buckets")).all() == [
            ("team-a",)
        ]
        assert conn.execute(sa.text("SELECT DISTINCT namespace FROM usage_events")).all() == [
            ("team-a",)
        ]


def test_a_sidecar_ingests_usage_into_its_namespace(
    owner_and_sidecar: tuple[Ledger, Ledger],
) -> None:
    owner, sidecar = owner_and_sidecar
    with sidecar.write() as conn:
        outcome = usage.ingest(conn, "team-a", [event(1), event(2, 4)], received_at=NOW)
    assert (outcome.stored, outcome.duplicates, outcome.uncounted) == (1, 1, ())
    with owner.read() as conn:
        buckets = usage.read_buckets(
            conn, "team-a", "tokens", subjects=["customer-1"], start=T0, end=NOW
        )
        entry = feed.read_feed(conn, "team-a", after=0)[-1]
    assert [b.amount for b in buckets] == [Decimal(5)]
    assert entry.position == outcome.feed_position


def _grant(conn: sa.Connection) -> None:
    bonus = Grant(
        id="01JBONUS000000000000000000",
        namespace="team-a",
        name="bonus",
        entitlement_id="01JENTITLEMENT000000000000",
        amount=Decimal(1_000_000),
        effective_at=T0,
        created_at=T0,
    )
    catalogue.record_versions(conn, "team-a", [bonus], recorded_at=NOW)


def _usage_of_another_namespace(conn: sa.Connection) -> None:
    usage.ingest(conn, "team-b", [event(9)], received_at=NOW)


def _meter(conn: sa.Connection) -> None:
    other = Meter("other", "prompt", Aggregation.COUNT)
    usage.record_meter(conn, "team-a", "other", other, uid="x", generation=1, acted_at=T0, now=NOW)


def _epoch(conn: sa.Connection) -> None:
    feed.rotate_epoch(conn)


def _bucket_of_another_namespace(conn: sa.Connection) -> None:
    conn.execute(sa.text("UPDATE usage_buckets SET value_sum = 0 WHERE namespace = 'team-b'"))
    changed = conn.execute(
        sa.text("SELECT count(*) FROM usage_buckets WHERE value_sum = 0")
    ).scalar_one()
    if changed == 0:
        raise PermissionError("row-level security hid every team-b bucket")


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(_grant, id="a-grant"),
        pytest.param(_usage_of_another_namespace, id="usage-of-another-namespace"),
        pytest.param(_meter, id="a-meter"),
        pytest.param(_epoch, id="the-ledger-epoch"),
        pytest.param(_bucket_of_another_namespace, id="a-bucket-of-another-namespace"),
    ],
)
def test_a_sidecar_cannot_write_outside_ingestion(
    owner_and_sidecar: tuple[Ledger, Ledger], write: Callable[[sa.Connection], None]
) -> None:
    owner, sidecar = owner_and_sidecar
    with owner.read() as conn:
        before = conn.execute(
            sa.text("SELECT namespace, value_sum FROM usage_buckets ORDER BY namespace")
        ).all()
        head = feed.feed_head(conn)
    refused = r"permission denied|violates row-level security|row-level security hid"
    with pytest.raises((DBAPIError, PermissionError), match=refused), sidecar.write() as conn:
        write(conn)
    with owner.read() as conn:
        assert catalogue.current_records(conn, "team-a") == []
        assert (
            conn.execute(
                sa.text("SELECT namespace, value_sum FROM usage_buckets ORDER BY namespace")
            ).all()
            == before
        )
        assert feed.feed_head(conn) == head
