"""What the reconciliation of one resource needs to see, read without scanning the namespace.

Role: build the ``Recorded`` view for one desired Meter, Feature, Customer, Entitlement, Grant
or EntitlementReset from the catalogue's key index: the meters and features of the namespace
(few), the customers that share a key with the resource or that it names, the entitlements of
the (customer, feature) pair it concerns or names, and its own record. Reconciling one resource
then costs the same whether the namespace holds ten entitlements or a million (the operator and
``dev`` apply them one at a time).

It must not decide anything: passing the reconciliation more records than it needs is harmless,
passing fewer is a bug, so when in doubt it reads more.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection

from allotment.ledger.core import reconcile as rc
from allotment.ledger.core.model import Entitlement, Grant
from allotment.ledger.core.resources import (
    CustomerSpec,
    EntitlementResetSpec,
    EntitlementSpec,
    GrantSpec,
    Kind,
    Resource,
    Target,
)
from allotment.ledger.storage import catalogue, usage
from allotment.ledger.storage.codec import CustomerRecord, FeatureRecord, Record

__all__ = ["recorded_for"]

_TARGETED = frozenset(
    {
        Kind.METER,
        Kind.FEATURE,
        Kind.CUSTOMER,
        Kind.ENTITLEMENT,
        Kind.GRANT,
        Kind.ENTITLEMENT_RESET,
    }
)


def recorded_for(
    connection: Connection, resource: Resource, own_id: str | None
) -> rc.Recorded | None:
    """Return what reconciling ``resource`` needs (without ``own``); None for other kinds."""
    if resource.ref.kind not in _TARGETED:
        return None
    ns = resource.ref.namespace
    wanted: set[str] = set() if own_id is None else {own_id}
    spec = resource.spec
    if isinstance(spec, CustomerSpec):
        keys = [resource.key or resource.ref.name, *(spec.subject_keys or ())]
        wanted |= set(catalogue.key_owners(connection, ns, "subject", keys).values())
    elif isinstance(spec, EntitlementSpec):
        wanted |= _holder_and_pair(connection, ns, spec.customer, spec.subject, spec.feature_key)
    elif isinstance(spec, GrantSpec | EntitlementResetSpec):
        wanted |= _target(connection, ns, spec.target)
    records = catalogue.records_by_id(connection, wanted)
    grants = [r for r in records if isinstance(r, Grant)]
    funded = {g.entitlement_id for g in grants} - wanted
    records += catalogue.records_by_id(connection, funded)
    return _view(connection, ns, records)


def _holder_and_pair(
    connection: Connection,
    ns: str,
    customer: str | None,
    subject: str | None,
    feature_key: str | None,
) -> set[str]:
    """Return the ids of the customer named (by key or subject) and of its entitlements."""
    named = customer if customer is not None else subject
    if named is None:
        return set()
    owner = catalogue.key_owner(connection, ns, "subject", named)
    ids = set() if owner is None else {owner}
    holder_keys = {named}
    if owner is not None:
        found = catalogue.find_record(connection, owner)
        if isinstance(found, CustomerRecord):
            holder_keys.add(found.customer.key)
    for key in holder_keys:
        ids |= set(catalogue.entitlements_of(connection, ns, key, feature_key))
    return ids


def _target(connection: Connection, ns: str, target: Target) -> set[str]:
    if target.entitlement is not None:
        owner = catalogue.key_owner(
            connection, ns, f"ref:{Kind.ENTITLEMENT.value}", target.entitlement
        )
        return set() if owner is None else {owner}
    return _holder_and_pair(connection, ns, target.customer, target.subject, target.feature_key)


def _view(connection: Connection, ns: str, records: Iterable[Record]) -> rc.Recorded:
    items = list(records)
    features = [
        r
        for r in catalogue.current_records(connection, ns, kinds=["feature"])
        if isinstance(r, FeatureRecord)
    ]
    meters = usage.load_meters(connection, ns)
    customers = [r for r in items if isinstance(r, CustomerRecord)]
    names = catalogue.names_of(
        connection, [*(f.id for f in features), *(m.id for m in meters), *(c.id for c in customers)]
    )
    return rc.Recorded(
        meters=tuple(
            rc.RecordedMeter(m.id, names.get(m.id, ""), m.created_at, m.meter) for m in meters
        ),
        features=tuple(
            rc.RecordedFeature(f.id, names.get(f.id, ""), f.created_at, f.feature) for f in features
        ),
        customers=tuple(
            rc.RecordedCustomer(c.id, names.get(c.id), c.created_at, c.customer) for c in customers
        ),
        entitlements=tuple(r for r in items if isinstance(r, Entitlement)),
        grants=tuple(r for r in items if isinstance(r, Grant)),
    )
