"""Bulk seeding of a ledger for the sidecar benchmark: 10^6 entitlements in minutes.

Role: write one namespace the sidecar then loads the normal way (``StorageSource.load``): one
SUM meter and one feature through storage's own functions (``usage.record_meter``,
``catalogue.record_versions``), then ``n`` customers, each with one metered entitlement (a
monthly usage period) and one grant, and ``buckets`` usage buckets each (hourly from ``T0``),
written directly as rows of the same tables the operator and ingestion fill (``resources``,
``catalogue_versions`` with the codec's documents, ``entitlement_pairs``, ``usage_buckets``).
``apply_resource`` takes milliseconds per record and would need hours for 10^6; the rows written
here are the ones it would write for these records (identities, first versions, the
customer/feature pair), without the reconciliation log and without feed entries: a sidecar
starts from a bulk load at the feed head, so it never reads them.

Speed: each kind's codec document is rendered once from a template record and only its ids,
keys and subject vary (``check_templates`` compares the rendering with ``encode_record`` of
the records ``customer_records(i)`` builds, before any row is written); the ids are ``derived_ulid``'s,
computed without the per-character loop. Rows go through the DBAPI directly: SQLite
``executemany`` on its own connection with ``synchronous=OFF`` and no rollback journal while
seeding (a crash leaves a useless bench file, nothing else), PostgreSQL ``COPY`` (psycopg 3).

It must not be used on a ledger that serves anything: it writes below the reconciliation.

Usage: ``python -m bench.seed --db URL --entitlements 1000000 [--buckets 4]`` (prints JSON);
``seeded_count(URL)`` tells how many entitlements a ledger already holds (``--reuse``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from psycopg.copy import QueuedLibpqWriter
from sqlalchemy import func, inspect, select
from sqlalchemy.engine import make_url

from allotment.ledger.core.model import (
    Aggregation,
    CalendarDuration,
    Customer,
    Entitlement,
    EntitlementType,
    Feature,
    Grant,
    Meter,
    Versioned,
)
from allotment.ledger.core.periods import new_usage_period
from allotment.ledger.core.ulid import derived_ulid
from allotment.ledger.storage import catalogue, migrate, records, usage
from allotment.ledger.storage.codec import CustomerRecord, FeatureRecord, encode_record
from allotment.ledger.storage.engine import Ledger, create_ledger, open_ledger
from allotment.ledger.storage.schema import EntitlementPairRow
from allotment.ledger.storage.types import format_amount, format_instant

__all__ = [
    "FEATURE",
    "GRANT_AMOUNT",
    "NS",
    "T0",
    "Seeded",
    "check_templates",
    "customer_records",
    "expected_balance",
    "seed",
    "seeded_count",
]

NS = "bench"
T0 = datetime(2026, 11, 1, tzinfo=UTC)
FEATURE = "tokens"
GRANT_AMOUNT = Decimal(1_000_000)
CHUNK = 20_000
_SENTINEL = 987_654_321  # the template record's index: its ids and keys are replaced per row
_ID_PREFIX = derived_ulid(T0, "")[:10]  # 10 characters: the 48-bit millisecond time
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]  # 10 bits -> 2 characters


@dataclass(frozen=True)
class Seeded:
    """What ``seed`` wrote: the subject keys to ask for, and how long it took."""

    entitlements: int
    buckets_each: int
    seconds: float

    @staticmethod
    def subject(i: int) -> str:
        """Return the subject key of customer ``i`` (each customer has one besides its key)."""
        return f"sub-{i}"


def expected_balance(buckets: int) -> Decimal:
    """Return a freshly seeded entitlement's balance in its first period (T0's month)."""
    return GRANT_AMOUNT - sum((Decimal(b + 1) for b in range(buckets)), Decimal(0))


def _id(seed: str) -> str:
    """Return ``derived_ulid(T0, seed)`` (the same text) without its per-character loop."""
    value = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:10], "big")
    pairs = _PAIRS
    return _ID_PREFIX + "".join(
        (
            pairs[value >> 70],
            pairs[(value >> 60) & 1023],
            pairs[(value >> 50) & 1023],
            pairs[(value >> 40) & 1023],
            pairs[(value >> 30) & 1023],
            pairs[(value >> 20) & 1023],
            pairs[(value >> 10) & 1023],
            pairs[value & 1023],
        )
    )


def customer_records(i: int) -> tuple[CustomerRecord, Entitlement, Grant]:
    """Return customer ``i``'s records as the ledger holds them (what the rows encode)."""
    key = f"customer-{i}"
    period = new_usage_period(CalendarDuration.parse("MONTH"), T0, T0)
    customer = CustomerRecord(_id(f"customer/{i}"), Customer(key, key, (Seeded.subject(i),)), T0)
    entitlement = Entitlement(
        id=_id(f"entitlement/{i}"),
        namespace=NS,
        name=f"{key}-tokens",
        customer_key=key,
        feature_key=FEATURE,
        type=EntitlementType.METERED,
        created_at=T0,
        usage_period=period,
        measure_usage_from=T0,
        is_soft_limit=(Versioned(T0, False),),
        preserve_overage_at_reset=(Versioned(T0, False),),
    )
    grant = Grant(
        id=_id(f"grant/{i}"),
        namespace=NS,
        name=f"{key}-tokens-grant",
        entitlement_id=entitlement.id,
        amount=GRANT_AMOUNT,
        effective_at=T0,
        created_at=T0,
    )
    return customer, entitlement, grant


def _document_text(record: CustomerRecord | Entitlement | Grant) -> str:
    """Return the document text ``catalogue.record_versions`` stores for ``record``."""
    return json.dumps(encode_record(record), separators=(",", ":"), sort_keys=True)


def _templates() -> tuple[str, str, str]:
    """Return the three documents of the sentinel customer as %-templates of the varying parts."""
    sentinel = customer_records(_SENTINEL)
    customer, entitlement, grant = sentinel
    replaced = (
        (customer.id, "%(cid)s"),
        (entitlement.id, "%(eid)s"),
        (grant.id, "%(gid)s"),
        (Seeded.subject(_SENTINEL), "%(sub)s"),
        (customer.customer.key, "%(key)s"),
    )
    texts = []
    for record in sentinel:
        text = _document_text(record).replace("%", "%%")
        for value, placeholder in replaced:
            text = text.replace(value, placeholder)
        texts.append(text)
    return texts[0], texts[1], texts[2]


_CUSTOMER_DOC, _ENTITLEMENT_DOC, _GRANT_DOC = _templates()


def _parts(i: int) -> dict[str, str]:
    return {
        "cid": _id(f"customer/{i}"),
        "eid": _id(f"entitlement/{i}"),
        "gid": _id(f"grant/{i}"),
        "sub": Seeded.subject(i),
        "key": f"customer-{i}",
    }


def _documents(parts: dict[str, str]) -> tuple[str, str, str]:
    return _CUSTOMER_DOC % parts, _ENTITLEMENT_DOC % parts, _GRANT_DOC % parts


def check_templates(indexes: Sequence[int]) -> None:
    """Raise unless the templates render exactly what the codec writes for these customers."""
    for i in indexes:
        wanted = tuple(_document_text(r) for r in customer_records(i))
        if _documents(_parts(i)) != wanted:
            raise AssertionError(f"the seed's documents for customer {i} differ from the codec's")
        if customer_records(i)[0].id != derived_ulid(T0, f"customer/{i}"):
            raise AssertionError("the seed's ids differ from derived_ulid's")


def _catalogue(ledger: Ledger) -> str:
    """Record the meter and the feature the way the operator does; return the meter's id."""
    meter = Meter(FEATURE, "prompt", Aggregation.SUM, "$.tokens")
    with ledger.write() as conn:
        recorded = usage.record_meter(
            conn,
            NS,
            FEATURE,
            meter,
            uid=str(uuid.uuid4()),
            generation=1,
            acted_at=T0,
            now=T0,
        )
        feature_id = records.create_identity(conn, NS, "Feature", FEATURE, created_at=T0).id
        feature = FeatureRecord(feature_id, Feature(FEATURE, "Tokens", meter_slug=FEATURE), T0)
        catalogue.record_versions(conn, NS, [feature], recorded_at=T0)
    meter_id: str = recorded.id
    return meter_id


@dataclass(frozen=True)
class _Chunk:
    """The rows of customers ``start``..``stop``, per table, as column tuples."""

    resources: list[tuple[Any, ...]]
    versions: list[tuple[Any, ...]]
    pairs: list[tuple[Any, ...]]
    buckets: list[tuple[Any, ...]]


_COLUMNS = {
    "resources": ("id", "namespace", "kind", "name", "created_at"),
    "catalogue_versions": (
        "resource_id",
        "version",
        "namespace",
        "kind",
        "document",
        "recorded_at",
    ),
    "entitlement_pairs": ("namespace", "customer_key", "feature_key", "entitlement_id"),
    "usage_buckets": (
        "namespace",
        "meter_id",
        "subject",
        "group_key",
        "minute",
        "event_count",
        "value_sum",
        "latest_time",
        "latest_value",
    ),
}


def _chunk(
    start: int, stop: int, meter_id: str, buckets: int, instant: Callable[[datetime], Any]
) -> _Chunk:
    """Build the rows of customers ``start``..``stop`` (instants rendered by ``instant``)."""
    t0 = instant(T0)
    minutes = [instant(T0 + timedelta(hours=b)) for b in range(buckets)]
    sums = [format_amount(Decimal(b + 1)) for b in range(buckets)]
    chunk = _Chunk([], [], [], [])
    for i in range(start, stop):
        parts = _parts(i)
        key, subject = parts["key"], parts["sub"]
        customer, entitlement, grant = _documents(parts)
        chunk.resources.append((parts["cid"], NS, "customer", key, t0))
        chunk.resources.append((parts["eid"], NS, "entitlement", f"{key}-tokens", t0))
        chunk.resources.append((parts["gid"], NS, "grant", f"{key}-tokens-grant", t0))
        chunk.versions.append((parts["cid"], 1, NS, "customer", customer, t0))
        chunk.versions.append((parts["eid"], 1, NS, "entitlement", entitlement, t0))
        chunk.versions.append((parts["gid"], 1, NS, "grant", grant, t0))
        chunk.pairs.append((NS, key, FEATURE, parts["eid"]))
        for b in range(buckets):
            chunk.buckets.append((NS, meter_id, subject, "{}", minutes[b], 1, sums[b], None, None))
    return chunk


def _chunks(
    n: int, meter_id: str, buckets: int, instant: Callable[[datetime], Any]
) -> Iterator[_Chunk]:
    for start in range(0, n, CHUNK):
        yield _chunk(start, min(start + CHUNK, n), meter_id, buckets, instant)


def _insert_sql(table: str) -> str:
    columns = _COLUMNS[table]
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


def _seed_sqlite(path: str, n: int, meter_id: str, buckets: int) -> None:
    """Write the rows with the sqlite3 module: no journal, no fsync, one transaction per chunk."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=OFF")
        connection.execute("PRAGMA synchronous=OFF")
        connection.execute("PRAGMA cache_size=-524288")  # 512 MiB: the indexes stay in memory
        for chunk in _chunks(n, meter_id, buckets, format_instant):
            connection.execute("BEGIN")
            for table, rows in (
                ("resources", chunk.resources),
                ("catalogue_versions", chunk.versions),
                ("entitlement_pairs", chunk.pairs),
                ("usage_buckets", chunk.buckets),
            ):
                connection.executemany(_insert_sql(table), rows)
            connection.execute("COMMIT")
        connection.execute("PRAGMA journal_mode=WAL")  # what the ledger's engine expects
        connection.execute("ANALYZE")
    finally:
        connection.close()


def _seed_postgresql(ledger: Ledger, n: int, meter_id: str, buckets: int) -> None:
    """Write the rows with psycopg 3's COPY, one transaction for the whole namespace."""
    with ledger.write() as conn:
        raw: Any = conn.connection.driver_connection
        with raw.cursor() as cursor:
            cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            row = cursor.fetchone()
            if row is not None and row[0]:
                # No per-row foreign-key triggers while seeding: every reference is built
                # consistent here (the rows are the same; the test reads them back).
                cursor.execute("SET LOCAL session_replication_role = replica")
            for chunk in _chunks(n, meter_id, buckets, lambda instant: instant):
                for table, rows in (
                    ("resources", chunk.resources),
                    ("catalogue_versions", chunk.versions),
                    ("entitlement_pairs", chunk.pairs),
                    ("usage_buckets", chunk.buckets),
                ):
                    copy_sql = f"COPY {table} ({', '.join(_COLUMNS[table])}) FROM STDIN"
                    with cursor.copy(copy_sql, writer=QueuedLibpqWriter(cursor)) as copy:
                        for row in rows:
                            copy.write_row(row)
    with ledger.write() as conn:
        conn.exec_driver_sql("ANALYZE")


def seeded_count(url: str) -> int:
    """Return how many entitlements the benchmark's namespace holds (0 when none or no schema)."""
    ledger = create_ledger(url, reader_pool_size=1)
    try:
        with ledger.reader.connect() as conn:
            if not inspect(conn).has_table("entitlement_pairs"):
                return 0
            pairs = EntitlementPairRow.__table__
            found = conn.execute(
                select(func.count()).select_from(pairs).where(pairs.c.namespace == NS)
            ).scalar_one()
    finally:
        ledger.dispose()
    return int(found)


def seed(url: str, entitlements: int, buckets: int) -> Seeded:
    """Migrate the ledger at ``url`` and write the benchmark's namespace into it."""
    if entitlements >= _SENTINEL:
        raise ValueError(f"at most {_SENTINEL - 1} entitlements")
    started = time.perf_counter()
    check_templates([0, 1, entitlements - 1])
    migrate.upgrade(url)
    ledger = open_ledger(url, reader_pool_size=1)
    try:
        meter_id = _catalogue(ledger)
        if ledger.dialect == "sqlite":
            ledger.dispose()
            database = make_url(ledger.url).database
            if not database:
                raise ValueError("the SQLite seed needs a file, not an in-memory database")
            _seed_sqlite(database, entitlements, meter_id, buckets)
        else:
            _seed_postgresql(ledger, entitlements, meter_id, buckets)
    finally:
        ledger.dispose()
    return Seeded(entitlements, buckets, time.perf_counter() - started)


def main() -> None:
    """Seed a ledger and print what was written as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="the ledger URL (empty or migrated)")
    parser.add_argument("--entitlements", type=int, default=10_000)
    parser.add_argument("--buckets", type=int, default=4, help="usage buckets per entitlement")
    args = parser.parse_args()
    seeded = seed(args.db, args.entitlements, args.buckets)
    print(
        json.dumps(
            {
                "entitlements": seeded.entitlements,
                "buckets_each": seeded.buckets_each,
                "seed_seconds": round(seeded.seconds, 1),
                "database": args.db.split(":", 1)[0],
            }
        )
    )


if __name__ == "__main__":
    main()
