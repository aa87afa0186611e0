"""Benchmark: usage ingestion into the ledger next to a raw bulk load of the same rows.

Prints one JSON object per database. For each: ``ingest`` is ``usage.ingest`` in committed
batches (dedup, meter evaluation, per-minute buckets, feed entry, all in one transaction per
batch); ``raw`` loads the same event rows into a scratch copy of ``usage_events`` with no
evaluation, PostgreSQL ``COPY`` or SQLite ``executemany``, in as many transactions. The ratio
``ingest / raw`` is the number to track; absolute rates depend on the machine.

Usage::

    python -m bench.ledger                       # SQLite (temp file) and a throwaway PostgreSQL
    python -m bench.ledger --db sqlite:///x.db   # one given database (must be empty or migrated)
    python -m bench.ledger --events 50000 --batch 500
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

from allotment.ledger.core.model import Aggregation, Meter
from allotment.ledger.storage import migrate, usage
from allotment.ledger.storage.engine import Ledger, open_ledger
from tests.harness.postgres import PostgresUnavailable, running_postgres

NS = "bench"
T0 = datetime(2026, 11, 1, tzinfo=UTC)
METERS = (
    Meter("tokens", "prompt", Aggregation.SUM, "$.tokens", {"model": "$.model"}),
    Meter("prompts", "prompt", Aggregation.COUNT),
)
COLUMNS = (
    "namespace",
    "source",
    "event_id",
    "event_type",
    "subject",
    "time",
    "data",
    "received_at",
    "counted",
)


def make_events(count: int, subjects: int, spacing_ms: int) -> list[usage.IncomingEvent]:
    """Return ``count`` distinct events ``spacing_ms`` apart, spread over ``subjects`` customers."""
    return [
        usage.IncomingEvent(
            id=f"e{i}",
            source="bench",
            type="prompt",
            subject=f"customer-{i % subjects}",
            time=T0 + timedelta(milliseconds=i * spacing_ms),
            data={"tokens": Decimal(i % 1000), "model": ("gpt-4", "gpt-3")[i % 2]},
        )
        for i in range(count)
    ]


def raw_rows(events: list[usage.IncomingEvent], received_at: datetime) -> list[tuple[Any, ...]]:
    """Return the ``usage_events`` rows of ``events`` as the raw load writes them."""
    return [
        (
            NS,
            e.source,
            e.id,
            e.type,
            e.subject,
            e.time,
            json.dumps({"tokens": int(e.data["tokens"]), "model": e.data["model"]}),
            received_at,
            True,
        )
        for e in events
    ]


def bench_ingest(ledger: Ledger, events: list[usage.IncomingEvent], batch: int) -> float:
    """Ingest ``events`` in batches; return events per second."""
    received = T0 + timedelta(days=1)
    with ledger.write() as conn:
        for number, meter in enumerate(METERS):
            usage.record_meter(
                conn,
                NS,
                meter.slug,
                meter,
                uid=str(number),
                generation=1,
                acted_at=T0,
                now=received,
            )
    started = time.perf_counter()
    for start in range(0, len(events), batch):
        with ledger.write() as conn:
            usage.ingest(conn, NS, events[start : start + batch], received_at=received)
    return len(events) / (time.perf_counter() - started)


def bench_raw(ledger: Ledger, events: list[usage.IncomingEvent], batch: int) -> float:
    """Bulk-load the same rows into a scratch table; return rows per second."""
    return load_raw(ledger, raw_rows(events, T0 + timedelta(days=1)), batch)


def load_raw(ledger: Ledger, rows: list[tuple[Any, ...]], batch: int) -> float:
    """Load ``usage_events`` rows into a scratch copy of the table in ``batch``-sized
    transactions (``COPY`` on PostgreSQL, ``executemany`` on SQLite); return rows per second."""
    table = f"raw_events_{uuid.uuid4().hex[:8]}"
    if ledger.dialect == "postgresql":
        url = ledger.url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(url) as conn:
            conn.execute(f"CREATE TABLE {table} (LIKE usage_events INCLUDING ALL)")
            conn.commit()
            started = time.perf_counter()
            for start in range(0, len(rows), batch):
                with conn.cursor().copy(f"COPY {table} ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                    for row in rows[start : start + batch]:
                        copy.write_row(row)
                conn.commit()
            elapsed = time.perf_counter() - started
            conn.execute(f"DROP TABLE {table}")
            conn.commit()
            return len(rows) / elapsed
    stamp = "%Y-%m-%dT%H:%M:%S.%fZ"
    sqlite_rows = [
        (*row[:5], row[5].strftime(stamp), row[6], row[7].strftime(stamp), 1) for row in rows
    ]
    raw = ledger.writer.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute(f"CREATE TABLE {table} AS SELECT * FROM usage_events WHERE 0")
        cursor.execute(
            f"CREATE UNIQUE INDEX {table}_dedup ON {table} (namespace, source, event_id)"
        )
        placeholders = ", ".join("?" for _ in COLUMNS)
        started = time.perf_counter()
        for start in range(0, len(sqlite_rows), batch):
            cursor.execute("BEGIN IMMEDIATE")
            cursor.executemany(
                f"INSERT INTO {table} ({', '.join(COLUMNS)}) VALUES ({placeholders})",
                sqlite_rows[start : start + batch],
            )
            cursor.execute("COMMIT")
        elapsed = time.perf_counter() - started
        cursor.execute(f"DROP TABLE {table}")
        return len(sqlite_rows) / elapsed
    finally:
        raw.close()


def measure(url: str, events: list[usage.IncomingEvent], batch: int) -> dict[str, Any]:
    """Migrate ``url``, run both loads, and return the numbers."""
    migrate.upgrade(url)
    ledger = open_ledger(url)
    try:
        ingest_rate = bench_ingest(ledger, events, batch)
        raw_rate = bench_raw(ledger, events, batch)
        return {
            "database": ledger.dialect,
            "events": len(events),
            "event_minutes": len({e.time.replace(second=0, microsecond=0) for e in events}),
            "batch": batch,
            "meters": len(METERS),
            "ingest_events_per_s": round(ingest_rate),
            "raw_rows_per_s": round(raw_rate),
            "raw_method": "COPY" if ledger.dialect == "postgresql" else "executemany",
            "ingest_over_raw": round(ingest_rate / raw_rate, 3),
        }
    finally:
        ledger.dispose()


@contextlib.contextmanager
def default_databases() -> Iterator[list[str]]:
    """Yield a temporary SQLite URL and, when it can be started, a throwaway PostgreSQL's."""
    with tempfile.TemporaryDirectory(prefix="allotment-bench-") as folder:
        urls = [f"sqlite:///{Path(folder) / 'ledger.db'}"]
        try:
            with running_postgres() as server:
                urls.append(server.url)
                yield urls
                return
        except PostgresUnavailable as error:
            print(json.dumps({"database": "postgresql", "skipped": str(error)}))
        yield urls


def main() -> None:
    """Run the benchmark and print JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="one ledger URL instead of SQLite + a throwaway PostgreSQL")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--subjects", type=int, default=100)
    parser.add_argument(
        "--spacing-ms",
        type=int,
        default=1,
        help="event time between consecutive events: 1 = 1,000 events/s of event time "
        "(many events per bucket); 60000 = every event in a bucket of its own (the worst case)",
    )
    args = parser.parse_args()
    events = make_events(args.events, args.subjects, args.spacing_ms)
    if args.db:
        print(json.dumps(measure(args.db, events, args.batch)))
        return
    with default_databases() as urls:
        for url in urls:
            print(json.dumps(measure(url, events, args.batch)))


if __name__ == "__main__":
    main()
