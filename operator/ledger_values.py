"""Read Entitlements' current values from the ledger for ``status.value``, one read per namespace.

Role: compose the ledger's own functions (the catalogue's current records, the recorded meters,
per-minute buckets as a ``MinuteSeries``, the core's ``entitlement_value``) into
``entitlement_values(connection, refs, now)``, the reader ``gateway.SqlLedgerGateway.values``
uses when ``allotment.ledger.apply`` offers none. Decimals become JSON numbers here (status is
for display; the sidecar stays the exact answer).

Must not: do arithmetic on balances, write, or read the clock.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection

from allotment.ledger.core.model import Customer, Entitlement, EntitlementType, Grant
from allotment.ledger.core.usage import MinuteSeries
from allotment.ledger.core.values import entitlement_value
from allotment.ledger.storage import catalogue, usage
from allotment.ledger.storage.codec import CustomerRecord, FeatureRecord

Ref = tuple[str, str]


def _number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


def _instant(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def entitlement_values(
    connection: Connection, refs: Sequence[Ref], now: datetime
) -> Mapping[Ref, Mapping[str, Any]]:
    """Return ``status.value`` for each (namespace, Entitlement name) the ledger holds."""
    by_namespace: defaultdict[str, set[str]] = defaultdict(set)
    for namespace, name in refs:
        by_namespace[namespace].add(name)
    found: dict[Ref, Mapping[str, Any]] = {}
    for namespace, names in by_namespace.items():
        records = catalogue.current_records(connection, namespace)
        features = {r.feature.key: r.feature for r in records if isinstance(r, FeatureRecord)}
        customers: dict[str, Customer] = {}
        for record in records:
            if isinstance(record, CustomerRecord):
                for key in record.customer.all_subject_keys:
                    customers[key] = record.customer
        meters = {m.meter.slug: m.meter for m in usage.load_meters(connection, namespace)}
        grants: defaultdict[str, list[Grant]] = defaultdict(list)
        for record in records:
            if isinstance(record, Grant):
                grants[record.entitlement_id].append(record)
        for record in records:
            if isinstance(record, Entitlement) and record.name in names:
                value = _value(connection, record, grants[record.id], features, customers,
                               meters, now)  # fmt: skip
                if value is not None:
                    found[(namespace, record.name)] = value
    return found


def _value(
    connection: Connection,
    entitlement: Entitlement,
    grants: Sequence[Grant],
    features: Mapping[str, Any],
    customers: Mapping[str, Customer],
    meters: Mapping[str, Any],
    now: datetime,
) -> Mapping[str, Any] | None:
    if entitlement.type is not EntitlementType.METERED:
        value = entitlement_value(entitlement, now)
        return {"hasAccess": value.has_access, "asOf": _instant(value.at)}
    feature = features.get(entitlement.feature_key)
    if feature is None or feature.meter_slug is None or feature.meter_slug not in meters:
        return None
    customer = customers.get(entitlement.customer_key)
    subjects = customer.all_subject_keys if customer else (entitlement.customer_key,)
    start = entitlement.measure_usage_from or entitlement.start
    buckets = usage.read_buckets(
        connection,
        entitlement.namespace,
        feature.meter_slug,
        subjects=subjects,
        filters=feature.meter_group_by_filters,
        start=start,
        end=now + timedelta(minutes=2),
    )
    aggregation = meters[feature.meter_slug].aggregation
    value = entitlement_value(
        entitlement, now, grants=grants, aggregation=aggregation,
        usage=MinuteSeries(aggregation, buckets),
    )  # fmt: skip
    shown: dict[str, Any] = {"hasAccess": value.has_access, "asOf": _instant(value.at)}
    for key, number in (
        ("balance", value.balance),
        ("usage", value.usage),
        ("overage", value.overage),
        ("totalAvailableGrantAmount", value.total_available_grant_amount),
    ):
        if number is not None:
            shown[key] = _number(number)
    return shown
