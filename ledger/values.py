"""Entitlement values computed from a ledger connection: what the ledger says now.

Role: ``entitlement_values(connection, namespace, now)`` loads a namespace's current records
(entitlements, grants, features, customers, meters) and the usage buckets that count for each
metered entitlement (its customer's subject keys, its feature's group-by filters), and asks the
core's ``entitlement_value`` for each value at ``now``: the same numbers the sidecar answers,
decided in the same place. ``status_value`` turns one into the ``status.value`` shape of the
Entitlement CRD. ``allotment plan`` compares these before and after a change; the operator's
refresh of ``status.value`` is ``status_values``.

Reads do not grow with history (spec §8.6, DESIGN D9): a metered read resumes from the
entitlement's latest balance snapshot of the same basis (a digest of the entitlement, its
grants, its meter, subjects and filters) at or before the read and reads only the buckets after
it. The snapshot rule (``SnapshotRule``): snapshots lie on whole UTC hours at least ``settle``
behind the read, so usage arriving with ordinary lag never invalidates them; a read whose
latest snapshot (or measureUsageFrom) is before such an hour runs the engine to that hour,
collects the state there as a ``PendingSnapshot``, and resumes from it. ``values_of``,
``entitlement_values`` and ``status_values`` save what they collected after their reads, in a
transaction of their own that gives up after ``SAVE_LOCK_TIMEOUT_MS`` (``save_snapshots``): at
most one snapshot per entitlement and hour of history. LATEST meters never use snapshots (the engine
refuses them); UNIQUE_COUNT reads the buckets from the snapshot's period start.

It must not do balance arithmetic of its own, read the clock, or import the sidecar (the sidecar
computes from memory, this from the ledger's tables); it writes only snapshots (a cache), and
only in ``save_snapshots``.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import QueuePool

from allotment.ledger.core.engine import run
from allotment.ledger.core.grants import with_default_grants
from allotment.ledger.core.model import (
    Aggregation,
    BalanceSnapshot,
    Customer,
    Entitlement,
    EntitlementType,
    EntitlementValue,
    Feature,
    Grant,
    Meter,
)
from allotment.ledger.core.periods import current_period
from allotment.ledger.core.timeutil import ceil_to_minute, format_rfc3339, require_utc
from allotment.ledger.core.usage import MinuteSeries
from allotment.ledger.core.values import entitlement_value
from allotment.ledger.storage import catalogue, feed, snapshots, usage
from allotment.ledger.storage.codec import CustomerRecord, FeatureRecord, encode_record
from allotment.ledger.storage.engine import SQLITE_BUSY_TIMEOUT_MS

__all__ = [
    "DEFAULT_SNAPSHOT_RULE",
    "SAVE_LOCK_TIMEOUT_MS",
    "NamespaceRecords",
    "PendingSnapshot",
    "SnapshotRule",
    "entitlement_values",
    "load_records",
    "save_snapshots",
    "status_value",
    "status_values",
    "value_of",
    "values_of",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class NamespaceRecords:
    """A namespace's current records, indexed the way a value computation looks them up."""

    namespace: str
    entitlements: Mapping[str, Entitlement]  # by ledger id
    grants: Mapping[str, tuple[Grant, ...]]  # by entitlement id
    features: Mapping[str, Feature]  # by key
    customers: Mapping[str, Customer]  # by key
    meters: Mapping[str, Meter]  # by slug
    meter_ids: Mapping[str, str] = field(default_factory=dict)  # ledger id by slug


@dataclass(frozen=True)
class SnapshotRule:
    """When a read takes a balance snapshot: on whole hours, ``settle`` behind the read."""

    settle: timedelta = timedelta(minutes=15)
    step: timedelta = timedelta(hours=1)

    def candidate(self, at: datetime) -> datetime:
        """Return the latest snapshot instant a read at ``at`` may take."""
        behind = at - self.settle
        step = int(self.step.total_seconds())
        return datetime.fromtimestamp(int(behind.timestamp()) // step * step, tz=UTC)


DEFAULT_SNAPSHOT_RULE = SnapshotRule()


@dataclass(frozen=True)
class PendingSnapshot:
    """A snapshot a read computed, to save once the read is over (``save_snapshots``)."""

    namespace: str
    entitlement_id: str
    meter_id: str
    snapshot: BalanceSnapshot
    basis: str
    read_position: int


def load_records(connection: Connection, namespace: str) -> NamespaceRecords:
    """Load the current version of every record of ``namespace`` that a value depends on."""
    entitlements: dict[str, Entitlement] = {}
    grants: dict[str, list[Grant]] = defaultdict(list)
    features: dict[str, Feature] = {}
    customers: dict[str, Customer] = {}
    for record in catalogue.current_records(connection, namespace):
        if isinstance(record, Entitlement):
            entitlements[record.id] = record
        elif isinstance(record, Grant):
            grants[record.entitlement_id].append(record)
        elif isinstance(record, FeatureRecord):
            features[record.feature.key] = record.feature
        elif isinstance(record, CustomerRecord):
            customers[record.customer.key] = record.customer
    recorded = usage.load_meters(connection, namespace)
    return NamespaceRecords(
        namespace,
        entitlements,
        {key: tuple(sorted(items, key=lambda g: g.id)) for key, items in grants.items()},
        features,
        customers,
        {m.meter.slug: m.meter for m in recorded},
        {m.meter.slug: m.id for m in recorded},
    )


def _usage_start(entitlement: Entitlement) -> datetime:
    """Return the earliest minute the engine may read usage from for ``entitlement``."""
    measure_from = entitlement.measure_usage_from
    if measure_from is None:
        return _EPOCH
    if entitlement.usage_period:
        return min(measure_from, current_period(entitlement.usage_period, measure_from).start)
    return measure_from


@dataclass(frozen=True)
class _Usage:
    """What a metered entitlement reads its usage from."""

    meter: Meter
    meter_id: str | None
    subjects: tuple[str, ...]
    filters: Mapping[str, str]


def _usage_source(records: NamespaceRecords, entitlement: Entitlement) -> _Usage | None:
    """Return the meter, subjects and filters of a metered entitlement (None: not recorded)."""
    feature = records.features.get(entitlement.feature_key)
    if feature is None or feature.meter_slug is None:
        return None
    meter = records.meters.get(feature.meter_slug)
    if meter is None:
        return None
    customer = records.customers.get(entitlement.customer_key)
    subjects = customer.all_subject_keys if customer is not None else (entitlement.customer_key,)
    return _Usage(
        meter,
        records.meter_ids.get(meter.slug),
        tuple(sorted(set(subjects))),
        dict(feature.meter_group_by_filters),
    )


def _basis(entitlement: Entitlement, grants: Sequence[Grant], source: _Usage) -> str:
    """Return the digest of everything a snapshot of ``entitlement`` was computed from."""
    document = {
        "entitlement": encode_record(entitlement),
        "grants": [encode_record(g) for g in sorted(grants, key=lambda g: g.id)],
        "meter": [source.meter_id, source.meter.slug, source.meter.aggregation.value],
        "subjects": list(source.subjects),
        "filters": sorted(source.filters.items()),
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _series(
    connection: Connection,
    records: NamespaceRecords,
    source: _Usage,
    start: datetime,
    end: datetime,
) -> MinuteSeries:
    buckets = usage.read_buckets(
        connection,
        records.namespace,
        source.meter.slug,
        subjects=source.subjects,
        filters=source.filters,
        start=start,
        end=end,
    )
    return MinuteSeries(source.meter.aggregation, buckets)


def value_of(
    connection: Connection,
    records: NamespaceRecords,
    entitlement: Entitlement,
    now: datetime,
    *,
    pending: list[PendingSnapshot] | None = None,
    rule: SnapshotRule = DEFAULT_SNAPSHOT_RULE,
    read_position: int | None = None,
) -> EntitlementValue | None:
    """Return the value of one entitlement at ``now``, or None when it cannot be computed.

    A metered entitlement whose feature or meter is not recorded has no value (the sidecar
    answers 503 for it); every other entitlement has one, ``hasAccess=False`` outside its
    activity window. Metered reads resume from the latest snapshot of the same basis; with
    ``pending``, a read that crossed a snapshot instant of ``rule`` appends it there, as read
    at feed position ``read_position``: one read before anything the value depends on (read
    here when not given), so a change committed after it refuses the save.
    """
    if pending is not None and read_position is None:
        read_position = feed.feed_head(connection)
    now = require_utc(now)
    grants = records.grants.get(entitlement.id, ())
    if entitlement.type is not EntitlementType.METERED:
        return entitlement_value(entitlement, now, grants=grants)
    source = _usage_source(records, entitlement)
    if source is None:
        return None
    aggregation = source.meter.aggregation
    t = ceil_to_minute(now)
    measure_from = entitlement.measure_usage_from
    if (
        aggregation is Aggregation.LATEST
        or source.meter_id is None
        or measure_from is None
        or t < measure_from
        or not entitlement.is_active_at(t)
    ):
        series = _series(connection, records, source, _usage_start(entitlement), t)
        return entitlement_value(
            entitlement, now, grants=grants, aggregation=aggregation, usage=series
        )
    basis = _basis(entitlement, grants, source)
    start = snapshots.latest_snapshot(connection, entitlement.id, at_or_before=t, basis=basis)
    if start is None:
        read_from = _usage_start(entitlement)
    elif aggregation is Aggregation.UNIQUE_COUNT:
        read_from = start.period_start  # U(periodStart, to) - U(periodStart, from), spec §2.2
    else:
        read_from = start.at
    series = _series(connection, records, source, read_from, t)
    candidate = rule.candidate(now)
    base = measure_from if start is None else start.at
    if pending is not None and read_position is not None and base < candidate:
        all_grants = with_default_grants(entitlement, grants)
        start = run(entitlement, all_grants, aggregation, series, candidate, start=start).snapshot
        pending.append(
            PendingSnapshot(
                records.namespace,
                entitlement.id,
                source.meter_id,
                start,
                basis,
                read_position,
            )
        )
    return entitlement_value(
        entitlement, now, grants=grants, aggregation=aggregation, usage=series, start=start
    )


def values_of(
    connection: Connection,
    records: NamespaceRecords,
    entitlement_ids: Iterable[str],
    now: datetime,
    *,
    pending: list[PendingSnapshot] | None = None,
    save: bool = True,
) -> dict[str, EntitlementValue]:
    """Return the values at ``now`` of the given recorded entitlements (unknown ids skipped).

    Snapshots the reads crossed are appended to ``pending`` for the caller to save; without
    it they are saved here (unless ``save`` is False), through the engine of ``connection`` in
    a transaction of its own: call it in a read transaction.
    """
    collected: list[PendingSnapshot] | None = pending
    if collected is None and save:
        collected = []
    position = None if collected is None else feed.feed_head(connection)
    values: dict[str, EntitlementValue] = {}
    for entitlement_id in entitlement_ids:
        entitlement = records.entitlements.get(entitlement_id)
        if entitlement is None:
            continue
        value = value_of(
            connection, records, entitlement, now, pending=collected, read_position=position
        )
        if value is not None:
            values[entitlement_id] = value
    if pending is None and collected:
        save_snapshots(connection.engine, collected, now)
    return values


def entitlement_values(
    connection: Connection,
    namespace: str,
    now: datetime,
    *,
    pending: list[PendingSnapshot] | None = None,
    save: bool = True,
) -> dict[str, EntitlementValue]:
    """Return the value at ``now`` of every entitlement recorded in ``namespace``, by id.

    Snapshots are collected and saved as ``values_of`` does.
    """
    records = load_records(connection, namespace)
    return values_of(
        connection, records, sorted(records.entitlements), now, pending=pending, save=save
    )


#: How long saving snapshots waits for a lock before giving up (a cache can wait for later).
SAVE_LOCK_TIMEOUT_MS = 2_000


def save_snapshots(
    writer: Engine, pending: Sequence[PendingSnapshot], recorded_at: datetime
) -> int:
    """Save the snapshots reads collected, in one transaction of ``writer``; return how many.

    Each is refused when the ledger changed since its read in a way that may make it stale
    (``snapshots.save_snapshot``). A snapshot is a cache: when the ledger is busy (a lock held
    longer than ``SAVE_LOCK_TIMEOUT_MS``, even by the caller's own write transaction, or a
    serialization failure) or has no free connection (SQLite engines never overflow) nothing
    is saved and a later read tries again.
    """
    if not pending:
        return 0
    sqlite = writer.dialect.name == "sqlite"
    pool = writer.pool
    if sqlite and isinstance(pool, QueuePool) and pool.checkedout() >= pool.size():
        return 0  # e.g. the caller holds the one writer connection: it would wait for itself
    with writer.connect() as connection:
        raw: Any = connection.connection.dbapi_connection
        if sqlite:
            raw.execute(f"PRAGMA busy_timeout={SAVE_LOCK_TIMEOUT_MS}")
        try:
            with connection.begin():
                if not sqlite:
                    connection.exec_driver_sql(f"SET LOCAL lock_timeout = {SAVE_LOCK_TIMEOUT_MS}")
                return sum(
                    snapshots.save_snapshot(
                        connection,
                        one.namespace,
                        one.entitlement_id,
                        one.meter_id,
                        one.snapshot,
                        read_position=one.read_position,
                        recorded_at=recorded_at,
                        basis=one.basis,
                    )
                    for one in pending
                )
        except OperationalError:
            return 0
        finally:
            if sqlite:
                raw.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")


def _number(amount: Decimal) -> int | float:
    """Return an amount as a JSON number: an int when it is whole, else a float (D8 wire)."""
    return int(amount) if amount == amount.to_integral_value() else float(amount)


def status_value(value: EntitlementValue) -> dict[str, Any]:
    """Return ``status.value`` of the Entitlement CRD (OpenMeter's value shape, with asOf)."""
    document: dict[str, Any] = {"asOf": format_rfc3339(value.at), "hasAccess": value.has_access}
    for name, amount in (
        ("balance", value.balance),
        ("usage", value.usage),
        ("overage", value.overage),
        ("totalAvailableGrantAmount", value.total_available_grant_amount),
    ):
        if amount is not None:
            document[name] = _number(amount)
    return document


def status_values(
    connection: Connection,
    refs: Sequence[tuple[str, str]],
    now: datetime,
    *,
    writer: Engine | None = None,
) -> dict[tuple[str, str], dict[str, Any]]:
    """Return the status fields of the Entitlements named by (namespace, name) the ledger holds.

    The shape the operator's value loop writes (``LedgerGateway.values``): per (namespace,
    name), ``value`` (the CRD's ``status.value``) and, for an entitlement with a usage period,
    ``currentUsagePeriod``: the period containing the value's ``asOf``. One load per namespace;
    names the ledger does not hold, and metered entitlements without a recorded meter, are left
    out. Snapshots the reads crossed are then saved through ``writer`` (default: the engine of
    ``connection``, in a transaction of its own): call it in a read transaction, never inside
    a write transaction of the same SQLite file.
    """
    wanted: dict[str, set[str]] = defaultdict(set)
    for namespace, name in refs:
        wanted[namespace].add(name)
    found: dict[tuple[str, str], dict[str, Any]] = {}
    pending: list[PendingSnapshot] = []
    for namespace, names in sorted(wanted.items()):
        records = load_records(connection, namespace)
        held = {e.id: e for e in records.entitlements.values() if e.name in names}
        values = values_of(connection, records, sorted(held), now, pending=pending)
        for entitlement_id, value in values.items():
            entitlement = held[entitlement_id]
            fields: dict[str, Any] = {"value": status_value(value)}
            if entitlement.usage_period:
                period = current_period(entitlement.usage_period, value.at)
                fields["currentUsagePeriod"] = {
                    "from": format_rfc3339(period.start),
                    "to": format_rfc3339(period.end),
                }
            found[(namespace, entitlement.name)] = fields
    save_snapshots(writer if writer is not None else connection.engine, pending, now)
    return found
