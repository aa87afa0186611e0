"""Entitlement values computed from a ledger connection: what the ledger says now.

Role: ``entitlement_values(connection, namespace, now)`` loads a namespace's current records
(entitlements, grants, features, customers, meters) and the usage buckets that count for each
metered entitlement (its customer's subject keys, its feature's group-by filters), and asks the
core's ``entitlement_value`` for each value at ``now``: the same numbers the sidecar answers,
decided in the same place. ``status_value`` turns one into the ``status.value`` shape of the
Entitlement CRD. ``allotment plan`` compares these before and after a change; the operator's
refresh of ``status.value`` can be built on ``values_of``.

It must not write, commit, read the clock, or do balance arithmetic of its own; it must not
import the sidecar (the sidecar computes from memory, this from the ledger's tables).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection

from allotment.ledger.core.model import (
    Aggregation,
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
from allotment.ledger.storage import catalogue, usage
from allotment.ledger.storage.codec import CustomerRecord, FeatureRecord

__all__ = [
    "NamespaceRecords",
    "entitlement_values",
    "load_records",
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
    meters = {m.meter.slug: m.meter for m in usage.load_meters(connection, namespace)}
    return NamespaceRecords(
        namespace,
        entitlements,
        {key: tuple(sorted(items, key=lambda g: g.id)) for key, items in grants.items()},
        features,
        customers,
        meters,
    )


def _usage_start(entitlement: Entitlement) -> datetime:
    """Return the earliest minute the engine may read usage from for ``entitlement``."""
    measure_from = entitlement.measure_usage_from
    if measure_from is None:
        return _EPOCH
    if entitlement.usage_period:
        return min(measure_from, current_period(entitlement.usage_period, measure_from).start)
    return measure_from


def _usage_of(
    connection: Connection, records: NamespaceRecords, entitlement: Entitlement, at: datetime
) -> tuple[Aggregation, MinuteSeries] | None:
    """Return the aggregation and the usage series that count for a metered entitlement."""
    feature = records.features.get(entitlement.feature_key)
    if feature is None or feature.meter_slug is None:
        return None
    meter = records.meters.get(feature.meter_slug)
    if meter is None:
        return None
    customer = records.customers.get(entitlement.customer_key)
    subjects = customer.all_subject_keys if customer is not None else (entitlement.customer_key,)
    buckets = usage.read_buckets(
        connection,
        records.namespace,
        meter.slug,
        subjects=subjects,
        filters=feature.meter_group_by_filters,
        start=_usage_start(entitlement),
        end=ceil_to_minute(at),
    )
    return meter.aggregation, MinuteSeries(meter.aggregation, buckets)


def value_of(
    connection: Connection, records: NamespaceRecords, entitlement: Entitlement, now: datetime
) -> EntitlementValue | None:
    """Return the value of one entitlement at ``now``, or None when it cannot be computed.

    A metered entitlement whose feature or meter is not recorded has no value (the sidecar
    answers 503 for it); every other entitlement has one, ``hasAccess=False`` outside its
    activity window.
    """
    now = require_utc(now)
    grants = records.grants.get(entitlement.id, ())
    if entitlement.type is not EntitlementType.METERED:
        return entitlement_value(entitlement, now, grants=grants)
    found = _usage_of(connection, records, entitlement, now)
    if found is None:
        return None
    aggregation, series = found
    return entitlement_value(entitlement, now, grants=grants, aggregation=aggregation, usage=series)


def values_of(
    connection: Connection,
    records: NamespaceRecords,
    entitlement_ids: Iterable[str],
    now: datetime,
) -> dict[str, EntitlementValue]:
    """Return the values at ``now`` of the given recorded entitlements (unknown ids skipped)."""
    values: dict[str, EntitlementValue] = {}
    for entitlement_id in entitlement_ids:
        entitlement = records.entitlements.get(entitlement_id)
        if entitlement is None:
            continue
        value = value_of(connection, records, entitlement, now)
        if value is not None:
            values[entitlement_id] = value
    return values


def entitlement_values(
    connection: Connection, namespace: str, now: datetime
) -> dict[str, EntitlementValue]:
    """Return the value at ``now`` of every entitlement recorded in ``namespace``, by id."""
    records = load_records(connection, namespace)
    return values_of(connection, records, sorted(records.entitlements), now)


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
    connection: Connection, refs: Sequence[tuple[str, str]], now: datetime
) -> dict[tuple[str, str], dict[str, Any]]:
    """Return ``status.value`` of the Entitlements named by (namespace, name) the ledger holds.

    The shape the operator's refresh writes (``LedgerGateway.values``): one load per namespace;
    names the ledger does not hold, and metered entitlements without a recorded meter, are left
    out.
    """
    wanted: dict[str, set[str]] = defaultdict(set)
    for namespace, name in refs:
        wanted[namespace].add(name)
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for namespace, names in sorted(wanted.items()):
        records = load_records(connection, namespace)
        ids = {e.id: e.name for e in records.entitlements.values() if e.name in names}
        for entitlement_id, value in values_of(connection, records, sorted(ids), now).items():
            found[(namespace, ids[entitlement_id])] = status_value(value)
    return found
