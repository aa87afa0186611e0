"""Balance snapshots: saved, found, resumed by the engine, and invalidated by late usage."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from allotment.ledger.core.engine import run
from allotment.ledger.core.grants import with_default_grants
from allotment.ledger.core.model import Aggregation, BalanceSnapshot, Meter
from allotment.ledger.core.usage import MinuteSeries
from allotment.ledger.storage import feed, snapshots, usage
from allotment.ledger.storage.engine import Ledger
from tests.core.factory import T, grant, metered

NS = "default"
TOKENS = Meter("tokens", "prompt", Aggregation.SUM, "$.tokens")
RECEIVED = T("2024-01-25T00:00")


def snapshot(at: str, balance: str = "10") -> BalanceSnapshot:
    return BalanceSnapshot(
        at=T(at),
        period_start=T("2024-01-01T00:00"),
        balances={"g1": Decimal(balance)},
        usage=Decimal("1.5"),
    )


def record_tokens(ledger: Ledger) -> str:
    with ledger.write() as conn:
        meter = usage.record_meter(
            conn,
            NS,
            "tokens",
            TOKENS,
            uid="u",
            generation=1,
            acted_at=T("2024-01-01T00:00"),
            now=RECEIVED,
        )
    return meter.id


def ingest(ledger: Ledger, *points: tuple[str, int]) -> None:
    events = [
        usage.IncomingEvent(
            f"{at}-{tokens}", "app", "prompt", "customer-1", T(at), {"tokens": tokens}
        )
        for at, tokens in points
    ]
    with ledger.write() as conn:
        usage.ingest(conn, NS, events, received_at=RECEIVED)


def head(ledger: Ledger) -> int:
    with ledger.read() as conn:
        return feed.feed_head(conn)


def save(ledger: Ledger, meter_id: str, *saved: BalanceSnapshot) -> list[bool]:
    position = head(ledger)
    with ledger.write() as conn:
        return [
            snapshots.save_snapshot(
                conn, NS, "ent-1", meter_id, one, read_position=position, recorded_at=RECEIVED
            )
            for one in saved
        ]


def latest(ledger: Ledger, at: str) -> BalanceSnapshot | None:
    with ledger.read() as conn:
        return snapshots.latest_snapshot(conn, "ent-1", at_or_before=T(at))


def test_the_latest_snapshot_at_or_before_an_instant_comes_back_exactly(ledger: Ledger) -> None:
    meter_id = record_tokens(ledger)
    early, late = snapshot("2024-01-05T00:00", "10.25"), snapshot("2024-01-10T00:00", "3")
    save(ledger, meter_id, early, late)
    assert latest(ledger, "2024-01-04T23:59") is None
    assert latest(ledger, "2024-01-09T00:00") == early
    assert latest(ledger, "2024-01-10T00:00") == late


def test_saving_the_same_instant_twice_keeps_the_first(ledger: Ledger) -> None:
    meter_id = record_tokens(ledger)
    save(ledger, meter_id, snapshot("2024-01-05T00:00", "10"))
    assert save(ledger, meter_id, snapshot("2024-01-05T00:00", "99")) == [False]
    assert latest(ledger, "2024-01-05T00:00") == snapshot("2024-01-05T00:00", "10")


@pytest.mark.parametrize(
    ("event_at", "kept"),
    [
        pytest.param("2024-01-07T12:00", ["2024-01-05T00:00"], id="late-event-drops-later-ones"),
        pytest.param("2024-01-10T00:00", ["2024-01-05T00:00", "2024-01-10T00:00"], id="at-instant"),
        pytest.param("2024-01-12T00:00", ["2024-01-05T00:00", "2024-01-10T00:00"], id="after-all"),
        pytest.param("2024-01-04T23:59:30", [], id="before-all"),
    ],
)
def test_usage_invalidates_the_snapshots_that_include_its_minute(
    ledger: Ledger, event_at: str, kept: list[str]
) -> None:
    meter_id = record_tokens(ledger)
    saved = [snapshot("2024-01-05T00:00"), snapshot("2024-01-10T00:00")]
    save(ledger, meter_id, *saved)
    ingest(ledger, (event_at, 1))
    remaining = {s.at for s in saved if latest(ledger, s.at.isoformat()) == s}
    assert sorted(remaining) == [T(at) for at in kept]


def test_the_engine_resumes_from_a_stored_snapshot_to_the_full_replays_balance(
    ledger: Ledger,
) -> None:
    meter_id = record_tokens(ledger)
    ingest(ledger, *[(f"2024-01-{day:02d}T10:00", 7) for day in range(1, 24, 2)])
    entitlement = metered("2024-01-01T00:00", interval="WEEK")
    grants = with_default_grants(entitlement, [grant("g1", 100, "2024-01-01T00:00")])
    with ledger.read() as conn:
        buckets = usage.read_buckets(
            conn,
            NS,
            "tokens",
            subjects=["customer-1"],
            start=T("2024-01-01T00:00"),
            end=RECEIVED,
        )
    series = MinuteSeries(Aggregation.SUM, buckets)
    until = T("2024-01-24T00:00")
    full = run(entitlement, grants, Aggregation.SUM, series, until).snapshot
    cut = run(entitlement, grants, Aggregation.SUM, series, T("2024-01-15T00:00")).snapshot
    save(ledger, meter_id, cut)
    stored = latest(ledger, "2024-01-24T00:00")
    assert stored == cut
    resumed = run(entitlement, grants, Aggregation.SUM, series, until, start=stored).snapshot
    assert resumed == full
    assert full.usage > 0


def test_a_grant_or_reset_invalidates_the_entitlements_later_snapshots(ledger: Ledger) -> None:
    meter_id = record_tokens(ledger)
    save(ledger, meter_id, snapshot("2024-01-05T00:00"), snapshot("2024-01-10T00:00"))
    with ledger.write() as conn:
        dropped = snapshots.invalidate_entitlement_after(
            conn, "ent-1", datetime(2024, 1, 6, tzinfo=UTC)
        )
    assert dropped == 1
    assert latest(ledger, "2024-01-20T00:00") == snapshot("2024-01-05T00:00")
    assert latest(ledger, "2024-01-05T00:00") is not None


def test_a_snapshot_read_before_new_usage_of_its_meter_is_not_saved(ledger: Ledger) -> None:
    meter_id = record_tokens(ledger)
    read_at = head(ledger)
    ingest(ledger, ("2024-01-03T00:00", 5))  # lands after the read, inside the snapshot
    with ledger.write() as conn:
        saved = snapshots.save_snapshot(
            conn,
            NS,
            "ent-1",
            meter_id,
            snapshot("2024-01-05T00:00"),
            read_position=read_at,
            recorded_at=RECEIVED,
        )
    assert saved is False
    assert latest(ledger, "2024-01-06T00:00") is None


def test_usage_of_another_meter_since_the_read_does_not_refuse_a_snapshot(ledger: Ledger) -> None:
    meter_id = record_tokens(ledger)
    with ledger.write() as conn:
        usage.record_meter(
            conn,
            NS,
            "calls",
            Meter("calls", "call", Aggregation.COUNT),
            uid="c",
            generation=1,
            acted_at=T("2024-01-01T00:00"),
            now=RECEIVED,
        )
    read_at = head(ledger)
    call = usage.IncomingEvent("c1", "app", "call", "customer-1", T("2024-01-03T00:00"), {})
    with ledger.write() as conn:
        usage.ingest(conn, NS, [call], received_at=RECEIVED)
        saved = snapshots.save_snapshot(
            conn,
            NS,
            "ent-1",
            meter_id,
            snapshot("2024-01-05T00:00"),
            read_position=read_at,
            recorded_at=RECEIVED,
        )
    assert saved is True


def test_a_late_event_racing_a_snapshot_save_still_deletes_it(
    fresh_postgres_database: str,
) -> None:
    from allotment.ledger.storage import migrate
    from allotment.ledger.storage.engine import open_ledger
    from tests.ledger.test_feed import in_thread, wait_until_blocked

    migrate.upgrade(fresh_postgres_database)
    saver, writer = open_ledger(fresh_postgres_database), open_ledger(fresh_postgres_database)
    try:
        meter_id = record_tokens(saver)
        read_at = head(saver)
        with saver.writer.connect() as holding:
            transaction = holding.begin()
            assert snapshots.save_snapshot(
                holding,
                NS,
                "ent-1",
                meter_id,
                snapshot("2024-01-05T00:00"),
                read_position=read_at,
                recorded_at=RECEIVED,
            )
            thread, _ = in_thread(lambda: ingest(writer, ("2024-01-03T00:00", 5)))
            wait_until_blocked(saver, "allotment_allocate_feed_positions")
            transaction.commit()
        thread.join(timeout=30)
        assert latest(saver, "2024-01-06T00:00") is None
    finally:
        saver.dispose()
        writer.dispose()
