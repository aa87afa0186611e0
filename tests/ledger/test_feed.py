"""The change feed: commit-ordered positions, one NOTIFY per batch, the epoch, shared SQLite."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from allotment.ledger.core.model import Aggregation, Meter
from allotment.ledger.storage import feed, migrate, usage
from allotment.ledger.storage.engine import Ledger, open_ledger

NS = "team-a"
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=1)
TOKENS = Meter("tokens", "prompt", Aggregation.SUM, "$.tokens")


def event(number: int, tokens: int = 1, at: datetime = T0) -> usage.IncomingEvent:
    return usage.IncomingEvent(f"e{number}", "app", "prompt", "customer-1", at, {"tokens": tokens})


def record_tokens(ledger: Ledger) -> None:
    with ledger.write() as conn:
        usage.record_meter(conn, NS, "tokens", TOKENS, uid="u", generation=1, acted_at=T0, now=NOW)


@pytest.fixture
def pg_ledgers(fresh_postgres_database: str) -> Iterator[tuple[Ledger, Ledger]]:
    """Two independently pooled ledgers on one PostgreSQL database: two writer processes."""
    migrate.upgrade(fresh_postgres_database)
    first, second = open_ledger(fresh_postgres_database), open_ledger(fresh_postgres_database)
    try:
        yield first, second
    finally:
        first.dispose()
        second.dispose()


def wait_until_blocked(ledger: Ledger, query_fragment: str) -> None:
    """Wait until another backend is waiting for a lock while running ``query_fragment``."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with ledger.reader.connect() as conn:
            waiting = conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database() AND query LIKE :fragment"
                ),
                {"fragment": f"%{query_fragment}%"},
            ).scalar_one()
        if waiting:
            return
        time.sleep(0.02)
    raise AssertionError(f"no backend blocked on {query_fragment!r}")


def in_thread(work: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    results: list[object] = []
    thread = threading.Thread(target=lambda: results.append(work()))
    thread.start()
    return thread, results


def ingest(ledger: Ledger, *events: usage.IncomingEvent) -> usage.IngestOutcome:
    with ledger.write() as conn:
        return usage.ingest(conn, NS, events, received_at=NOW)


def test_positions_follow_commit_order_with_two_interleaved_writers(
    pg_ledgers: tuple[Ledger, Ledger],
) -> None:
    first, second = pg_ledgers
    record_tokens(first)
    with first.read() as conn:
        start = feed.feed_head(conn)
    with first.writer.connect() as holding:
        transaction = holding.begin()
        early = usage.ingest(holding, NS, [event(1)], received_at=NOW)
        thread, results = in_thread(lambda: ingest(second, event(2, at=T0 + timedelta(minutes=1))))
        wait_until_blocked(first, "allotment_allocate_feed_positions")
        with first.read() as conn:
            assert feed.read_feed(conn, NS, after=start) == []
        transaction.commit()
    thread.join(timeout=30)
    (late,) = results
    assert isinstance(late, usage.IngestOutcome)
    assert early.feed_position is not None and late.feed_position is not None
    assert early.feed_position < late.feed_position
    with first.read() as conn:
        seen = [entry.position for entry in feed.read_feed(conn, NS, after=start)]
    assert seen == [early.feed_position, late.feed_position]


def test_concurrent_copies_of_an_event_count_once(pg_ledgers: tuple[Ledger, Ledger]) -> None:
    first, second = pg_ledgers
    record_tokens(first)
    with first.writer.connect() as holding:
        transaction = holding.begin()
        usage.ingest(holding, NS, [event(1, tokens=5)], received_at=NOW)
        thread, results = in_thread(lambda: ingest(second, event(1, tokens=500)))
        wait_until_blocked(first, "INSERT INTO usage_events")
        transaction.commit()
    thread.join(timeout=30)
    (copy,) = results
    assert isinstance(copy, usage.IngestOutcome)
    assert (copy.stored, copy.duplicates) == (0, 1)
    with first.read() as conn:
        buckets = usage.read_buckets(conn, NS, "tokens", subjects=["customer-1"], start=T0, end=NOW)
    assert [b.amount for b in buckets] == [Decimal(5)]


def test_one_notify_per_committed_batch(
    pg_ledgers: tuple[Ledger, Ledger], fresh_postgres_database: str
) -> None:
    ledger, _ = pg_ledgers
    libpq = fresh_postgres_database.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(libpq, autocommit=True) as listener:
        listener.execute(f"LISTEN {feed.NOTIFY_CHANNEL}")
        ingest(ledger, event(1))  # no meter yet: stored, nothing counted, no feed entry
        record_tokens(ledger)  # the meter and its backfilled usage: two entries, one batch
        with ledger.write() as conn:  # two appends in one transaction: still one batch
            usage.ingest(conn, NS, [event(2)], received_at=NOW)
            usage.ingest(conn, NS, [event(3, at=T0 + timedelta(minutes=1))], received_at=NOW)
        with pytest.raises(RuntimeError), ledger.write() as conn:
            usage.ingest(conn, NS, [event(5)], received_at=NOW)
            raise RuntimeError("rolled back: its NOTIFY must never arrive")
        messages = [n.payload for n in listener.notifies(timeout=1.0, stop_after=10)]
    assert messages == [NS, NS]


def test_polling_sees_every_change_once_in_order(ledger: Ledger) -> None:
    record_tokens(ledger)
    with ledger.read() as conn:
        position = feed.feed_head(conn)
    seen: list[int] = []
    for number in range(5):
        ingest(ledger, event(number, at=T0 + timedelta(minutes=number)))
        with ledger.read() as conn:
            batch = feed.read_feed(conn, NS, after=position, limit=2)
        seen.extend(entry.position for entry in batch)
        position = batch[-1].position
    assert seen == sorted(set(seen)) and len(seen) == 5
    with ledger.read() as conn:
        assert feed.read_feed(conn, NS, after=position) == []
        assert feed.read_feed(conn, "team-b", after=0) == []


def test_usage_entries_carry_absolute_bucket_states_in_the_contract(ledger: Ledger) -> None:
    record_tokens(ledger)
    ingest(ledger, event(1, tokens=2))
    last = ingest(ledger, event(2, tokens=3)).feed_position
    with ledger.read() as conn:
        (entry,) = feed.read_feed(conn, NS, after=last - 1)
    assert entry.contract_version == feed.CONTRACT_VERSION
    assert entry.kind == usage.USAGE_CHANGE
    (state,) = [usage.BucketState.from_payload(b) for b in entry.payload["buckets"]]
    assert (state.meter_slug, state.minute, state.event_count, state.value_sum) == (
        "tokens",
        T0,
        2,
        Decimal(5),
    )


def test_rotating_the_epoch_tells_readers_to_reload(ledger: Ledger) -> None:
    with ledger.read() as conn:
        before = feed.ledger_epoch(conn)
    with ledger.write() as conn:
        rotated = feed.rotate_epoch(conn)
    with ledger.read() as conn:
        assert feed.ledger_epoch(conn) == rotated != before


SIDECAR_PROCESS = """
import sys
from datetime import UTC, datetime, timedelta
from allotment.ledger.storage import usage
from allotment.ledger.storage.engine import open_ledger

ledger = open_ledger(sys.argv[1])
t0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
for batch in range(20):
    events = [
        usage.IncomingEvent(f"s{batch}-{i}", "sidecar", "prompt", "customer-1",
                            t0 + timedelta(minutes=batch), {"tokens": 1})
        for i in range(10)
    ]
    with ledger.write() as conn:
        usage.ingest(conn, "team-a", events, received_at=t0 + timedelta(hours=1))
ledger.dispose()
"""


def test_an_operator_and_a_sidecar_process_share_one_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate.upgrade(url)
    ledger = open_ledger(url)
    try:
        record_tokens(ledger)
        sidecar = subprocess.Popen(
            [sys.executable, "-c", SIDECAR_PROCESS, url], stderr=subprocess.PIPE, text=True
        )
        operator_events = 0
        while sidecar.poll() is None and operator_events < 200:
            operator_events += 1
            ingest(ledger, event(10_000 + operator_events))
        _, errors = sidecar.communicate(timeout=120)
        assert sidecar.returncode == 0, errors
        with ledger.read() as conn:
            buckets = usage.read_buckets(
                conn, NS, "tokens", subjects=["customer-1"], start=T0, end=NOW
            )
            positions = [e.position for e in feed.read_feed(conn, NS, after=0, limit=10_000)]
        assert sum(b.amount for b in buckets) == 200 + operator_events
        assert positions == list(range(1, len(positions) + 1))
    finally:
        ledger.dispose()


def test_a_batch_in_flight_while_a_meter_is_recorded_is_counted(
    pg_ledgers: tuple[Ledger, Ledger],
) -> None:
    first, second = pg_ledgers
    with first.writer.connect() as holding:
        transaction = holding.begin()
        outcome = usage.ingest(holding, NS, [event(1, tokens=3)], received_at=NOW)
        assert [u.reason for u in outcome.uncounted] == ["no meter has event type 'prompt'"]
        thread, results = in_thread(lambda: record_tokens(second))
        wait_until_blocked(first, "pg_advisory_xact_lock(")
        transaction.commit()
    thread.join(timeout=30)
    assert results == [None]
    with first.read() as conn:
        buckets = usage.read_buckets(conn, NS, "tokens", subjects=["customer-1"], start=T0, end=NOW)
    assert [b.amount for b in buckets] == [Decimal(3)]
