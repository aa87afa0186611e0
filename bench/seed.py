"""Bulk seeding of a ledger for the sidecar benchmark: 10^4 to 10^6 entitlements in minutes.

Role: write one namespace the sidecar then loads the normal way (``StorageSource.load``): one
SUM meter and one feature through storage's own functions (``usage.record_meter``,
``catalogue.record_versions``), then ``n`` customers, each with one metered entitlement (a
monthly usage period) and one grant, and ``buckets`` per-minute usage buckets each, written
directly as rows of the same tables the operator and ingestion fill (``resources``,
``catalogue_versions`` with the codec's documents, ``entitlement_pairs``, ``usage_buckets``) with
SQLAlchemy Core ``executemany`` in chunks. ``apply_resource`` takes milliseconds per record and
would need hours for 10^6; the rows written here are the ones it would write for these records
(identities, first versions, the customer/feature pair), without the reconciliation log and
without feed entries: a sidecar starts from a bulk load at the feed head, so it never reads
them.

It must not be used on a ledger that serves anything: it writes below the reconciliation.

Usage: ``python -m bench.seed --db URL --entitlements 100000 [--buckets 4]`` (prints JSON).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Table, insert

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
from allotment.ledger.storage.engine import Ledger, open_ledger
from allotment.ledger.storage.schema import (
    CatalogueVersionRow,
    EntitlementPairRow,
    ResourceRow,
    UsageBucketRow,
)

__all__ = ["NS", "T0", "Seeded", "seed"]

NS = "bench"
T0 = datetime(2026, 11, 1, tzinfo=UTC)
FEATURE = "tokens"
CHUNK = 5000

_RESOURCES: Table = ResourceRow.__table__  # type: ignore[assignment]
_VERSIONS: Table = CatalogueVersionRow.__table__  # type: ignore[assignment]
_PAIRS: Table = EntitlementPairRow.__table__  # type: ignore[assignment]
_BUCKETS: Table = UsageBucketRow.__table__  # type: ignore[assignment]


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


def _records(i: int) -> tuple[CustomerRecord, Entitlement, Grant]:
    key = f"customer-{i}"
    period = new_usage_period(CalendarDuration.parse("MONTH"), T0, T0)
    customer = CustomerRecord(
        derived_ulid(T0, f"customer/{i}"), Customer(key, key, (Seeded.subject(i),)), T0
    )
    entitlement = Entitlement(
        id=derived_ulid(T0, f"entitlement/{i}"),
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
        id=derived_ulid(T0, f"grant/{i}"),
        namespace=NS,
        name=f"{key}-tokens-grant",
        entitlement_id=entitlement.id,
        amount=Decimal(1_000_000),
        effective_at=T0,
        created_at=T0,
    )
    return customer, entitlement, grant


def _rows(start: int, stop: int, meter_id: str, buckets: int) -> Iterator[tuple[str, Any]]:
    """Yield (table, row) for customers ``start``..``stop``: what a chunk writes."""
    for i in range(start, stop):
        for record in _records(i):
            document = encode_record(record)
            kind = str(document["kind"])
            name = record.customer.key if isinstance(record, CustomerRecord) else record.name
            yield (
                "resources",
                {
                    "id": record.id,
                    "namespace": NS,
                    "kind": kind,
                    "name": name,
                    "created_at": T0,
                },
            )
            yield (
                "versions",
                {
                    "resource_id": record.id,
                    "version": 1,
                    "namespace": NS,
                    "kind": kind,
                    "document": json.dumps(document, separators=(",", ":"), sort_keys=True),
                    "recorded_at": T0,
                },
            )
            if isinstance(record, Entitlement):
                yield (
                    "pairs",
                    {
                        "namespace": NS,
                        "customer_key": record.customer_key,
                        "feature_key": FEATURE,
                        "entitlement_id": record.id,
                    },
                )
        for b in range(buckets):
            yield (
                "buckets",
                {
                    "namespace": NS,
                    "meter_id": meter_id,
                    "subject": Seeded.subject(i),
                    "group_key": "{}",
                    "minute": T0 + timedelta(hours=b),
                    "event_count": 1,
                    "value_sum": Decimal(b + 1),
                    "latest_time": None,
                    "latest_value": None,
                },
            )


def _write(ledger: Ledger, rows: Sequence[tuple[str, Any]]) -> None:
    tables = {"resources": _RESOURCES, "versions": _VERSIONS, "pairs": _PAIRS, "buckets": _BUCKETS}
    grouped: dict[str, list[Any]] = {name: [] for name in tables}
    for name, row in rows:
        grouped[name].append(row)
    with ledger.write() as conn:
        for name, table in tables.items():  # resources first: the others refer to them
            if grouped[name]:
                conn.execute(insert(table), grouped[name])


def seed(url: str, entitlements: int, buckets: int) -> Seeded:
    """Migrate the ledger at ``url`` and write the benchmark's namespace into it."""
    started = time.perf_counter()
    migrate.upgrade(url)
    ledger = open_ledger(url, reader_pool_size=1)
    try:
        meter_id = _catalogue(ledger)
        for start in range(0, entitlements, CHUNK):
            stop = min(start + CHUNK, entitlements)
            _write(ledger, list(_rows(start, stop, meter_id, buckets)))
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
            }
        )
    )


if __name__ == "__main__":
    main()
