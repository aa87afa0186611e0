"""Benchmark: metered value reads against history, and ingestion next to a raw bulk load.

Prints JSON lines per database (a temporary SQLite file and a throwaway PostgreSQL, or ``--db``).

``value_read`` lines: for each history size (default 10^3, 10^4, 10^5, 10^6 events, spread over
30 days of one customer's usage of one SUM meter) three metered entitlements with daily resets
(about 30 resets behind the read) and 1, 10 and 100 grants read that usage. The history is
seeded through ``usage.ingest`` in batches of 10,000. Each measured read follows freshly
ingested usage at a new ``now`` (7 minutes later; the sizes take turns) and is the operator's
read, ``values.status_values`` in a new read transaction with nothing cached in the process
(the balance snapshots in the ledger are what makes it cheap); its time and its database queries
(counted with a SQLAlchemy ``before_cursor_execute`` listener, snapshot saves included) are
reported as the median of ``--reads`` reads. ``first_read`` is the read that found no snapshot
(a full replay, as after a grant or reset). A ``value_read_ratio`` line gives the median read
at the largest size over the smallest, per grant count: the target is at most 2.

``ingest`` line: ``usage.ingest`` in committed batches (dedup, meter evaluation, per-minute
buckets, feed entry, all in one transaction per batch) next to a raw load of the same event rows
into a scratch copy of ``usage_events`` with no evaluation (PostgreSQL ``COPY`` or SQLite
``executemany``), in as many transactions. ``ingest_over_raw`` is the number to track.

Usage::

    python -m bench.ledger                       # SQLite (temp file) and a throwaway PostgreSQL
    python -m bench.ledger --db sqlite:///x.db   # one given database (must be empty or migrated)
    python -m bench.ledger --sizes 1000,100000 --reads 10 --events 50000 --batch 500
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import event

from allotment.ledger.core.model import (
    Aggregation,
    CalendarDuration,
    Entitlement,
    EntitlementType,
    Expiration,
    ExpirationUnit,
    Feature,
    Grant,
    Meter,
    Recurrence,
    Versioned,
)
from allotment.ledger.core.periods import new_usage_period
from allotment.ledger.storage import catalogue, migrate, records, usage
from allotment.ledger.storage.codec import FeatureRecord
from allotment.ledger.storage.engine import Ledger, open_ledger
from allotment.ledger.values import status_values
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


# --- value reads against history --------------------------------------------------------------

SPAN = timedelta(days=30)
GRANT_COUNTS = (1, 10, 100)
SEED_BATCH = 10_000
USAGE = Meter("usage", "usage", Aggregation.SUM, "$.tokens")


def _record(ledger: Ledger, namespace: str, kind: str, name: str, build: Any) -> str:
    """Create an identity and record the catalogue document ``build(id)`` for it."""
    with ledger.write() as conn:
        identity = records.create_identity(conn, namespace, kind, name, created_at=T0)
        catalogue.record_versions(conn, namespace, [build(identity.id)], recorded_at=T0)
    return identity.id


def _grant(namespace: str, entitlement_id: str, number: int) -> Any:
    """Return a builder of one of an entitlement's grants: some expire, some recur daily."""
    effective = T0 + timedelta(minutes=number)

    def build(grant_id: str) -> Grant:
        return Grant(
            id=grant_id,
            namespace=namespace,
            name=f"{entitlement_id}-g{number}",
            entitlement_id=entitlement_id,
            amount=Decimal(1_000_000 + number),
            effective_at=effective,
            created_at=effective,
            priority=number % 3,
            expiration=Expiration(ExpirationUnit.DAY, 45) if number % 3 == 1 else None,
            recurrence=(
                Recurrence(CalendarDuration.parse("DAY"), effective) if number % 5 == 4 else None
            ),
        )

    return build


def seed_catalogue(ledger: Ledger, namespace: str) -> dict[int, str]:
    """Record a meter, and per grant count a feature and a daily entitlement with its grants."""
    with ledger.write() as conn:
        usage.record_meter(
            conn, namespace, "usage", USAGE, uid="m", generation=1, acted_at=T0, now=T0
        )
    names: dict[int, str] = {}
    for count in GRANT_COUNTS:
        key = f"usage_g{count}"
        _record(
            ledger,
            namespace,
            "Feature",
            key,
            lambda i, key=key: FeatureRecord(i, Feature(key, key, USAGE.slug), T0),
        )
        name = f"customer-1-{key}"

        def entitlement(i: str, name: str = name, key: str = key) -> Entitlement:
            return Entitlement(
                id=i,
                namespace=namespace,
                name=name,
                customer_key="customer-1",
                feature_key=key,
                type=EntitlementType.METERED,
                created_at=T0,
                usage_period=new_usage_period(CalendarDuration.parse("DAY"), T0, T0),
                measure_usage_from=T0,
                is_soft_limit=(Versioned(T0, False),),
                preserve_overage_at_reset=(Versioned(T0, False),),
            )

        entitlement_id = _record(ledger, namespace, "Entitlement", name, entitlement)
        for number in range(count):
            _record(
                ledger,
                namespace,
                "Grant",
                f"{name}-g{number}",
                _grant(namespace, entitlement_id, number),
            )
        names[count] = name
    return names


def seed_usage(ledger: Ledger, namespace: str, count: int) -> float:
    """Ingest ``count`` events spread evenly over ``SPAN``; return the seconds it took."""
    started = time.perf_counter()
    step = SPAN / count
    for first in range(0, count, SEED_BATCH):
        batch = [
            usage.IncomingEvent(
                f"h{i}", "seed", "usage", "customer-1", T0 + step * i, {"tokens": 1 + i % 7}
            )
            for i in range(first, min(count, first + SEED_BATCH))
        ]
        with ledger.write() as conn:
            usage.ingest(conn, namespace, batch, received_at=batch[-1].time + timedelta(minutes=1))
    return time.perf_counter() - started


class QueryCounter:
    """Count the statements a ledger's engines send while ``counting`` is on."""

    def __init__(self, ledger: Ledger) -> None:
        self.count = 0
        for engine in {id(e): e for e in (ledger.reader, ledger.writer)}.values():
            event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, *_: Any) -> None:
        self.count += 1


def timed_read(
    ledger: Ledger, counter: QueryCounter, namespace: str, name: str, now: datetime
) -> tuple[float, int]:
    """Read one entitlement's status.value as the operator does; return ms and queries."""
    before = counter.count
    started = time.perf_counter()
    with ledger.read() as conn:
        found = status_values(conn, [(namespace, name)], now)
    elapsed = (time.perf_counter() - started) * 1000
    if (namespace, name) not in found:
        raise RuntimeError(f"no value for {namespace}/{name}")
    return elapsed, counter.count - before


def fresh_usage(ledger: Ledger, namespace: str, number: int, now: datetime) -> None:
    """Ingest ten events of the last minute before ``now``, received at ``now``."""
    fresh = [
        usage.IncomingEvent(
            f"f{number}-{k}",
            "fresh",
            "usage",
            "customer-1",
            now - timedelta(seconds=5 * k + 1),
            {"tokens": 1},
        )
        for k in range(10)
    ]
    with ledger.write() as conn:
        usage.ingest(conn, namespace, fresh, received_at=now)


def measure_reads(url: str, sizes: list[int], reads: int) -> list[dict[str, Any]]:
    """Seed one namespace per history size, then time value reads behind each; return lines.

    Reads go round the sizes in turn (fresh usage, then the three entitlements' reads), so load
    from other processes on a shared machine falls on every size alike.
    """
    migrate.upgrade(url)
    ledger = open_ledger(url)
    counter = QueryCounter(ledger)
    try:
        namespaces: dict[int, str] = {}
        names: dict[int, dict[int, str]] = {}
        seeded: dict[int, float] = {}
        for size in sizes:
            namespaces[size] = f"reads-{size}-{uuid.uuid4().hex[:6]}"
            names[size] = seed_catalogue(ledger, namespaces[size])
            seeded[size] = seed_usage(ledger, namespaces[size], size)
        now = T0 + SPAN + timedelta(minutes=1, seconds=13)
        first = {
            (size, count): timed_read(ledger, counter, namespaces[size], name, now)
            for size in sizes
            for count, name in names[size].items()
        }
        samples: dict[tuple[int, int], list[tuple[float, int]]] = {key: [] for key in first}
        for number in range(reads):
            now += timedelta(minutes=7, seconds=3)
            for size in sizes:
                fresh_usage(ledger, namespaces[size], number, now)
                for count, name in names[size].items():
                    read = timed_read(ledger, counter, namespaces[size], name, now)
                    samples[(size, count)].append(read)
        lines: list[dict[str, Any]] = []
        medians: dict[tuple[int, int], float] = {}
        for (size, count), taken in samples.items():
            times = [ms for ms, _ in taken]
            queries = [q for _, q in taken]
            medians[(size, count)] = statistics.median(times)
            lines.append(
                {
                    "database": ledger.dialect,
                    "bench": "value_read",
                    "events": size,
                    "grants": count,
                    "resets_behind": SPAN.days,
                    "reads": reads,
                    "read_ms_median": round(statistics.median(times), 3),
                    "read_ms_max": round(max(times), 3),
                    "queries_per_read_median": statistics.median(queries),
                    "queries_per_read_max": max(queries),
                    "first_read_ms": round(first[(size, count)][0], 3),
                    "first_read_queries": first[(size, count)][1],
                    "seed_events_per_s": round(size / seeded[size]),
                }
            )
        smallest, largest = min(sizes), max(sizes)
        ratios = {
            str(c): round(medians[(largest, c)] / medians[(smallest, c)], 3) for c in GRANT_COUNTS
        }
        lines.append(
            {
                "database": ledger.dialect,
                "bench": "value_read_ratio",
                "events": [smallest, largest],
                "ratio_by_grants": ratios,
                "within_2x": all(r <= 2 for r in ratios.values()),
            }
        )
        return lines
    finally:
        ledger.dispose()


def run_all(url: str, args: argparse.Namespace) -> None:
    """Print the value-read lines and the ingestion line of one database."""
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if sizes:
        for line in measure_reads(url, sizes, args.reads):
            print(json.dumps(line), flush=True)
    if args.events:
        events = make_events(args.events, args.subjects, args.spacing_ms)
        print(json.dumps({"bench": "ingest", **measure(url, events, args.batch)}), flush=True)


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
    parser.add_argument(
        "--sizes",
        default="1000,10000,100000,1000000",
        help="history sizes (events) behind the value reads, comma-separated; empty: none",
    )
    parser.add_argument("--reads", type=int, default=25, help="measured reads per size")
    parser.add_argument("--events", type=int, default=20_000, help="ingestion bench events")
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
    if args.db:
        run_all(args.db, args)
        return
    with default_databases() as urls:
        for url in urls:
            run_all(url, args)


if __name__ == "__main__":
    main()
