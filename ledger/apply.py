"""Apply one resource to the ledger: load what it holds, reconcile, write the actions.

Role: the one glue function the operator and ``allotment dev`` both drive,
``apply_resource(connection, resource, now) -> Outcome``. It reads the namespace's recorded
state from storage, calls the core's pure ``reconcile`` and writes its actions in the caller's
transaction: identities, catalogue versions (which reach the sidecars through the feed), meters
(whose buckets storage builds from raw events), unique keys, and the reconciliation log (what
was applied for which generation, when a generation was first seen, which objects are gone).
The outcome says what happened in the words a status condition and an Event need.
A Plan's generations live in the log only; a Subscription's entitlements are catalogue
entitlements marked with it. Applying a Plan also rolls it out to its recorded subscribers, a
chunk (``ROLLOUT_CHUNK``) per call and so per transaction, with the progress in the log: until
the last chunk the Plan's outcome waits (``RollingOut``, due at once) and applying it again
takes the next chunk, so a Plan edit reaches every subscriber without anyone re-applying them
and without one transaction as long as the rollout.

It must not commit, read the clock, or decide anything the core decides.
"""

from __future__ import annotations

import base64
import json
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, and_, bindparam, false, func, insert, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from allotment.ledger import lookup
from allotment.ledger.core import reconcile as rc
from allotment.ledger.core.grants import expires_at, next_recurrence_after
from allotment.ledger.core.model import Customer, Entitlement, Feature, Grant, Meter
from allotment.ledger.core.periods import last_reset
from allotment.ledger.core.plans import find_plan, subscription_entitlements
from allotment.ledger.core.resources import (
    Kind,
    PlanSpec,
    Ref,
    Resource,
    Spec,
    SubscriptionSpec,
    default_key,
)
from allotment.ledger.core.timeutil import format_rfc3339
from allotment.ledger.storage import catalogue, usage
from allotment.ledger.storage.codec import (
    CustomerRecord,
    FeatureRecord,
    MeterRecord,
    Record,
    Removed,
)
from allotment.ledger.storage.ids import new_id
from allotment.ledger.storage.schema import CatalogueKeyRow, ReconcileLogRow, ResourceRow

__all__ = [
    "IMPLIED_CUSTOMER_KIND",
    "PLAN_GRANT_KIND",
    "ROLLOUT_CHUNK",
    "SUBSCRIPTION_ENTITLEMENT_KIND",
    "Outcome",
    "RolloutProgress",
    "apply_resource",
    "continue_rollout",
    "recorded_spec",
    "rollout_progress",
]

#: The identity kind of a customer that exists because a subject named it (D5).
IMPLIED_CUSTOMER_KIND = "ImpliedCustomer"
#: The identity kinds of the records a Subscription's rollout creates (no resource of their own).
SUBSCRIPTION_ENTITLEMENT_KIND = "SubscriptionEntitlement"
PLAN_GRANT_KIND = "PlanGrant"

_RESOURCES: Table = ResourceRow.__table__  # type: ignore[assignment]
_LOG: Table = ReconcileLogRow.__table__  # type: ignore[assignment]
_KEYS: Table = CatalogueKeyRow.__table__  # type: ignore[assignment]

# The statements every apply runs, built once: building a SQLAlchemy statement costs several
# times executing a cached one (about 0.7 ms against 0.1 ms on SQLite), and an apply runs ~20.
_IDENTITY = select(
    func.coalesce(
        select(_KEYS.c.resource_id)
        .where(
            _KEYS.c.namespace == bindparam("namespace"),
            _KEYS.c.space == bindparam("space"),
            _KEYS.c.key == bindparam("name"),
        )
        .scalar_subquery(),
        select(_RESOURCES.c.id)
        .where(
            _RESOURCES.c.namespace == bindparam("namespace"),
            _RESOURCES.c.kind == bindparam("kind"),
            _RESOURCES.c.name == bindparam("name"),
        )
        .scalar_subquery(),
    )
)
_LOG_ROWS = (
    select(_LOG, _RESOURCES.c.created_at)
    .join(_RESOURCES, _RESOURCES.c.id == _LOG.c.resource_id)
    .where(_LOG.c.resource_id == bindparam("record_id"))
    .order_by(_LOG.c.id)
)
_LOG_INSERT = insert(_LOG)
_CREATED_AT = select(_RESOURCES.c.created_at).where(_RESOURCES.c.id == bindparam("record_id"))
_NEW_IDENTITY = {
    "postgresql": pg_insert(_RESOURCES).on_conflict_do_nothing(index_elements=["id"]),
    "sqlite": sqlite_insert(_RESOURCES).on_conflict_do_nothing(index_elements=["id"]),
}
_STATUS_KEYS = select(_KEYS.c.space, _KEYS.c.resource_id).where(
    _KEYS.c.namespace == bindparam("namespace"),
    or_(
        and_(_KEYS.c.space == "feature", _KEYS.c.key == bindparam("feature_key")),
        and_(_KEYS.c.space == "subject", _KEYS.c.key == bindparam("customer_key")),
    ),
)

_APPLIED, _SEEN, _DELETED = "applied", "seen", "deleted"


@dataclass(frozen=True)
class Outcome:
    """What reconciling one resource did, or why it could not (a Ready condition's words).

    ``action`` is the reconciliation's verb (``Record``, ``Amend``, ``Reset``, ``End``,
    ``Void``, ``Adopt``, ``Orphan``, ``Unchanged``, ``Noop``, ``Wait``, ``Conflict`` or
    ``Refuse``); ``status`` holds the status fields the CRD declares (ledger ids, effective
    defaults); ``retry_at`` is when a scheduled action is due.
    """

    action: str
    reason: str
    message: str
    status: Mapping[str, Any] = field(default_factory=dict)
    retry_at: datetime | None = None
    actions: tuple[rc.Action, ...] = ()
    #: A Plan's: each Subscription its rollout reached in this transaction, with its outcome.
    rolled: tuple[tuple[Ref, Outcome], ...] = ()

    @property
    def ready(self) -> bool:
        """Tell whether the ledger holds the resource as written."""
        return self.action not in ("Wait", "Conflict", "Refuse")


# --- the spec as written, kept in the log ------------------------------------------------------


def _dump_spec(spec: Spec) -> str:
    return base64.b64encode(pickle.dumps(spec, protocol=5)).decode("ascii")


def recorded_spec(text: str) -> Spec:
    """Return a spec as written from its encoding in the reconciliation log."""
    spec: Spec = pickle.loads(base64.b64decode(text))
    return spec


# --- what the ledger holds -------------------------------------------------------------------


@dataclass(frozen=True)
class _Namespace:
    """The namespace's recorded state, as the reconciliation reads it."""

    names: Mapping[str, str]  # record id -> the name of the resource that declares it
    recorded: rc.Recorded


def _load_namespace(connection: Connection, namespace: str) -> _Namespace:
    names = catalogue.resource_names(connection, namespace)
    meters = tuple(
        rc.RecordedMeter(m.id, names.get(m.id, ""), m.created_at, m.meter)
        for m in usage.load_meters(connection, namespace)
    )
    features: list[rc.RecordedFeature] = []
    customers: list[rc.RecordedCustomer] = []
    entitlements: list[Entitlement] = []
    grants: list[Grant] = []
    for record in catalogue.current_records(connection, namespace):
        if isinstance(record, FeatureRecord):
            name = names.get(record.id, "")
            features.append(rc.RecordedFeature(record.id, name, record.created_at, record.feature))
        elif isinstance(record, CustomerRecord):
            # An implied customer has no resource name until a Customer declares it (D5).
            customers.append(
                rc.RecordedCustomer(
                    record.id, names.get(record.id), record.created_at, record.customer
                )
            )
        elif isinstance(record, Entitlement):
            entitlements.append(record)
        elif isinstance(record, Grant):
            grants.append(record)
    return _Namespace(
        names,
        rc.Recorded(
            meters=meters,
            features=tuple(features),
            customers=tuple(customers),
            entitlements=tuple(entitlements),
            grants=tuple(grants),
        ),
    )


def _find_identity(connection: Connection, ref: Ref) -> str | None:
    """Return the record id that holds ``ref`` (a declared Customer may hold an implied id).

    The owner of the ``ref:Kind`` key first, else the identity row of (namespace, kind, name).
    """
    found: str | None = connection.execute(
        _IDENTITY,
        {
            "namespace": ref.namespace,
            "space": _ref_space(ref.kind),
            "kind": ref.kind.value,
            "name": ref.name,
        },
    ).scalar_one_or_none()
    return found


def _ref_space(kind: Kind) -> str:
    return f"ref:{kind.value}"


def _own(
    connection: Connection, resource: Resource, record_id: str, now: datetime
) -> rc.Own | None:
    """Derive ``Own`` from the log; persist the instant a new generation is first seen (D2)."""
    rows = connection.execute(_LOG_ROWS, {"record_id": record_id}).all()
    applied = [row for row in rows if row.action == _APPLIED]
    if not applied:
        return None
    last = applied[-1]
    created_at = last.created_at
    deleted = any(row.action == _DELETED and row.uid == last.uid for row in rows)
    seen_rows = [
        row
        for row in rows
        if row.action == _SEEN and row.uid == resource.uid and row.generation == resource.generation
    ]
    seen: tuple[int, datetime] | None = None
    if seen_rows:
        seen = (resource.generation, seen_rows[0].at)
    elif resource.deleted_at is None and (
        resource.generation != last.generation or resource.uid != last.uid
    ):
        _log(connection, record_id, _SEEN, resource.uid, resource.generation, now)
        seen = (resource.generation, now)
    return rc.Own(
        id=record_id,
        uid=last.uid,
        generation=last.generation,
        recorded_at=last.at,
        created_at=created_at,
        spec=recorded_spec(last.spec),
        deleted=deleted,
        seen=seen,
    )


def _log(
    connection: Connection,
    record_id: str,
    action: str,
    uid: str | None,
    generation: int,
    at: datetime,
    spec: Spec | None = None,
) -> None:
    connection.execute(
        _LOG_INSERT,
        {
            "resource_id": record_id,
            "action": action,
            "uid": uid,
            "generation": generation,
            "at": at,
            "spec": None if spec is None else _dump_spec(spec),
        },
    )


# --- the entry point -------------------------------------------------------------------------


def apply_resource(
    connection: Connection, resource: Resource, now: datetime, *, force_orphan: bool = False
) -> Outcome:
    """Reconcile ``resource`` against the ledger at ``now`` and write the actions.

    ``force_orphan`` orphans a deleted object whatever its deletionPolicy (its namespace or
    CRD is being deleted, D3). The caller commits.
    """
    return _apply(connection, resource, now, force_orphan=force_orphan)


def _apply(
    connection: Connection,
    resource: Resource,
    now: datetime,
    *,
    force_orphan: bool = False,
    with_status: bool = True,
    plans: tuple[rc.RecordedPlan, ...] | None = None,
    features: tuple[rc.RecordedFeature, ...] | None = None,
    own: rc.Own | None = None,
) -> Outcome:
    """``apply_resource``; a Plan's rollout passes the plans and features it loaded once per
    chunk and each subscriber's ``own`` as its log says, and asks its subscribers only for what
    it changes in their status."""
    if own is None:
        record_id = _find_identity(connection, resource.ref)
        own = None if record_id is None else _own(connection, resource, record_id, now)
    else:
        record_id = own.id
    planned = resource.ref.kind in _PLAN_KINDS
    seen = lookup.recorded_for(connection, resource, record_id)
    if seen is None and planned:
        seen = _plan_view(connection, resource, features)
    if seen is None:
        seen = _load_namespace(connection, resource.ref.namespace).recorded
    recorded = replace(
        seen,
        own=own,
        plans=(_load_plans(connection, resource.ref.namespace) if plans is None else plans)
        if planned
        else (),
    )
    actions = rc.reconcile(resource, recorded, now, new_id(), force_orphan=force_orphan)
    for action in actions:
        _write(connection, resource, action, now)
    if planned:
        return _plan_outcome(
            connection, resource, actions, own, now, recorded.plans, with_status=with_status
        )
    return _outcome(connection, resource, actions, own)


# --- writing actions -------------------------------------------------------------------------


def _create_identity(
    connection: Connection, record_id: str, namespace: str, kind: str, name: str, at: datetime
) -> None:
    """Insert the identity row of ``record_id`` unless it exists (one statement)."""
    row = {"id": record_id, "namespace": namespace, "kind": kind, "name": name, "created_at": at}
    upsert = _NEW_IDENTITY.get(connection.dialect.name)
    if upsert is not None:
        connection.execute(upsert, row)
    elif connection.execute(_CREATED_AT, {"record_id": record_id}).first() is None:
        connection.execute(insert(_RESOURCES), row)


def _catalogue_record(record: rc.LedgerRecord, record_id: str, created_at: datetime) -> Record:
    if isinstance(record, Customer):
        return CustomerRecord(record_id, record, created_at)
    if isinstance(record, Feature):
        return FeatureRecord(record_id, record, created_at)
    if isinstance(record, Meter):
        return MeterRecord(record_id, record, created_at)
    return record


def _claim_keys(connection: Connection, namespace: str, record: Record) -> None:
    if isinstance(record, FeatureRecord):
        catalogue.claim_key(connection, namespace, "feature", record.feature.key, record.id)
    elif isinstance(record, CustomerRecord):
        for key in record.customer.all_subject_keys:
            catalogue.claim_key(connection, namespace, "subject", key, record.id)
    elif isinstance(record, Entitlement):
        catalogue.index_entitlement(
            connection, namespace, record.customer_key, record.feature_key, record.id
        )


def _record_meter(
    connection: Connection,
    resource: Resource,
    meter: Meter,
    uid: str | None,
    generation: int,
    at: datetime,
    now: datetime,
) -> str:
    recorded = usage.record_meter(
        connection,
        resource.ref.namespace,
        resource.ref.name,
        meter,
        uid=uid or "",
        generation=generation,
        acted_at=at,
        now=now,
    )
    return recorded.id


def _put(connection: Connection, namespace: str, record: Record, recorded_at: datetime) -> None:
    _claim_keys(connection, namespace, record)
    catalogue.record_versions(connection, namespace, [record], recorded_at=recorded_at)


def _write(connection: Connection, resource: Resource, action: rc.Action, now: datetime) -> None:
    ns = resource.ref.namespace
    if isinstance(action, rc.Record):
        _write_record(connection, resource, action, now)
    elif isinstance(action, rc.ImplyCustomer):
        _create_identity(
            connection, action.id, ns, IMPLIED_CUSTOMER_KIND, action.customer.key, action.at
        )
        _put(connection, ns, CustomerRecord(action.id, action.customer, action.at), now)
    elif isinstance(action, rc.Absorb):
        _write_absorb(connection, ns, action, now)
    elif isinstance(action, rc.Amend):
        _write_amend(connection, resource, action, now)
    elif isinstance(action, rc.Reset):
        _create_identity(
            connection, action.id, ns, action.ref.kind.value, action.ref.name, action.at
        )
        _log(connection, action.id, _APPLIED, action.uid, action.generation, action.at, action.spec)
        _put(connection, ns, action.entitlement, now)
    elif isinstance(action, rc.End):
        current = catalogue.find_record(connection, action.id)
        if isinstance(current, Entitlement):
            _put(connection, ns, _replace_active_to(current, action.at), now)
    elif isinstance(action, rc.Void):
        current = catalogue.find_record(connection, action.id)
        if isinstance(current, Grant):
            _put(connection, ns, _replace_void_at(current, action.at), now)
    elif isinstance(action, rc.Adopt):
        spec = _current_spec(connection, action.id)
        _log(connection, action.id, _APPLIED, action.uid, action.generation, action.at, spec)
    elif isinstance(action, rc.Orphan):
        _log(connection, action.id, _DELETED, resource.uid, resource.generation, action.at)
    elif isinstance(action, rc.Declare):
        _create_identity(
            connection, action.id, ns, action.ref.kind.value, action.ref.name, action.at
        )
        catalogue.claim_key(connection, ns, _ref_space(action.ref.kind), action.ref.name, action.id)
        _log(connection, action.id, _APPLIED, action.uid, action.generation, action.at, action.spec)
    elif isinstance(action, rc.Entitle):
        entitlement = action.entitlement
        _create_identity(
            connection,
            entitlement.id,
            ns,
            SUBSCRIPTION_ENTITLEMENT_KIND,
            _identity_name(entitlement.name, entitlement.id),
            entitlement.created_at,
        )
        _put(connection, ns, entitlement, now)
    elif isinstance(action, rc.Fund):
        grant = action.grant
        # named after its entitlement's id, so a subscription's view finds it by prefix
        _create_identity(
            connection,
            grant.id,
            ns,
            PLAN_GRANT_KIND,
            _identity_name(f"{grant.entitlement_id}/{grant.id}", grant.id),
            grant.created_at,
        )
        _put(connection, ns, grant, now)


def _write_absorb(connection: Connection, ns: str, action: rc.Absorb, now: datetime) -> None:
    """Move the implicit customer's entitlements to the declaring customer, then retire it (D5).

    The entitlements keep their ids, grants and usage; only their customer key changes. The
    implicit customer's record leaves the current catalogue and frees its keys.
    """
    owned = catalogue.entitlements_of(connection, ns, action.implicit_key)
    for record in catalogue.records_by_id(connection, owned):
        if isinstance(record, Entitlement) and record.customer_key == action.implicit_key:
            catalogue.unindex_entitlement(connection, ns, action.implicit_key, record.id)
            _put(connection, ns, replace(record, customer_key=action.key), now)
    implicit = catalogue.find_record(connection, action.implicit_id)
    if isinstance(implicit, CustomerRecord):
        for key in implicit.customer.all_subject_keys:
            catalogue.release_key(connection, ns, "subject", key, action.implicit_id)
        removed = Removed(action.implicit_id, "customer", action.at)
        catalogue.record_versions(connection, ns, [removed], recorded_at=now)


def _write_record(
    connection: Connection, resource: Resource, action: rc.Record, now: datetime
) -> None:
    ns = resource.ref.namespace
    record = action.record
    if isinstance(record, Meter):
        record_id = _record_meter(
            connection, resource, record, action.uid, action.generation, action.at, now
        )
        created_at = action.at
    else:
        record_id = action.id
        _create_identity(
            connection, record_id, ns, action.ref.kind.value, action.ref.name, action.at
        )
        created_at = action.at
    if isinstance(record, Customer):
        created_at = _created_at(connection, record_id)  # an implied customer keeps its instant
    catalogue.claim_key(connection, ns, _ref_space(action.ref.kind), action.ref.name, record_id)
    _log(connection, record_id, _APPLIED, action.uid, action.generation, action.at, action.spec)
    _put(connection, ns, _catalogue_record(record, record_id, created_at), now)


def _created_at(connection: Connection, record_id: str) -> datetime:
    created: datetime = connection.execute(_CREATED_AT, {"record_id": record_id}).scalar_one()
    return created


def _write_amend(
    connection: Connection, resource: Resource, action: rc.Amend, now: datetime
) -> None:
    ns = resource.ref.namespace
    _log(connection, action.id, _APPLIED, resource.uid, action.generation, action.at, action.spec)
    record = action.record
    if record is None:
        return
    if isinstance(record, Meter):
        _record_meter(connection, resource, record, resource.uid, action.generation, action.at, now)
    created_at = _created_at(connection, action.id)
    _put(connection, ns, _catalogue_record(record, action.id, created_at), now)


def _current_spec(connection: Connection, record_id: str) -> Spec | None:
    row = connection.execute(
        select(_LOG.c.spec)
        .where(_LOG.c.resource_id == record_id, _LOG.c.action == _APPLIED)
        .order_by(_LOG.c.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    return None if row is None else recorded_spec(row)


def _replace_active_to(entitlement: Entitlement, at: datetime) -> Entitlement:
    return replace(entitlement, active_to=at)


def _replace_void_at(grant: Grant, at: datetime) -> Grant:
    return replace(grant, void_at=at)


# --- the outcome -----------------------------------------------------------------------------

_REASONS = {
    "Record": "Recorded",
    "Amend": "Amended",
    "Reset": "Applied",
    "End": "Ended",
    "Void": "Voided",
    "Adopt": "Adopted",
    "Orphan": "Orphaned",
}


def _outcome(
    connection: Connection,
    resource: Resource,
    actions: Sequence[rc.Action],
    own: rc.Own | None,
) -> Outcome:
    ref = resource.ref
    for action in actions:
        if isinstance(action, rc.Wait):
            return Outcome(
                "Wait", action.reason.value, action.message, {}, action.until, tuple(actions)
            )
        if isinstance(action, rc.Conflict):
            return Outcome(
                "Conflict", action.reason.value, action.message, {}, None, tuple(actions)
            )
        if isinstance(action, rc.Refuse):
            message = "; ".join(str(error) for error in action.errors)
            return Outcome("Refuse", "Invalid", message, {}, None, tuple(actions))
        if isinstance(action, rc.Noop):
            status = {"appliedAt": format_rfc3339(action.at)}
            return Outcome("Noop", action.reason, action.message, status, None, tuple(actions))
    writes = [a for a in actions if rc.is_write(a) and not isinstance(a, rc.ImplyCustomer)]
    verb = type(writes[-1]).__name__ if writes else "Unchanged"
    record_id = own.id if own is not None else _find_identity(connection, ref)
    status = {} if record_id is None else _status(connection, record_id, ref)
    if verb == "Unchanged":
        message = f"{ref.kind.value} {ref.namespace}/{ref.name} is recorded as written"
        return Outcome("Unchanged", "Recorded", message, status, None, tuple(actions))
    past = {"Reset": "Applied the reset of"}.get(verb, _REASONS.get(verb, verb))
    message = f"{past} {ref.kind.value} {ref.namespace}/{ref.name}"
    if record_id is not None:
        message += f" (ledger id {record_id})"
    return Outcome(verb, _REASONS.get(verb, verb), message, status, None, tuple(actions))


def _instant(value: datetime | None) -> str | None:
    return None if value is None else format_rfc3339(value)


def _status(connection: Connection, record_id: str, ref: Ref) -> dict[str, Any]:
    """Return the status fields the CRD declares for the record: ids and effective values."""
    if ref.kind is Kind.ENTITLEMENT_RESET:
        return _reset_status(connection, record_id, ref)
    record = catalogue.find_record(connection, record_id)
    if isinstance(record, MeterRecord):
        return {"id": record_id, "slug": record.meter.slug}
    if isinstance(record, FeatureRecord):
        return {"id": record_id, "key": record.feature.key}
    if isinstance(record, CustomerRecord):
        return {
            "id": record_id,
            "key": record.customer.key,
            "subjectKeys": list(record.customer.all_subject_keys),
        }
    if isinstance(record, Entitlement):
        return _entitlement_status(connection, record)
    if isinstance(record, Grant):
        return _grant_status(connection, record)
    return {"id": record_id}


def _reset_status(connection: Connection, record_id: str, ref: Ref) -> dict[str, Any]:
    row = connection.execute(
        select(_LOG.c.at, _LOG.c.spec)
        .where(_LOG.c.resource_id == record_id, _LOG.c.action == _APPLIED)
        .order_by(_LOG.c.id)
        .limit(1)
    ).one_or_none()
    if row is None:
        return {}
    status: dict[str, Any] = {"appliedAt": format_rfc3339(row.at)}
    spec = recorded_spec(row.spec)
    target = getattr(spec, "target", None)
    name = getattr(target, "entitlement", None)
    if name is not None:
        status["entitlement"] = name
        entitlement_id = catalogue.key_owner(
            connection, ref.namespace, _ref_space(Kind.ENTITLEMENT), name
        )
        if entitlement_id is not None:
            status["entitlementId"] = entitlement_id
    return status


def _entitlement_status(connection: Connection, e: Entitlement) -> dict[str, Any]:
    status: dict[str, Any] = {
        "id": e.id,
        "customerKey": e.customer_key,
        "activeFrom": _instant(e.start),
        "activeTo": _instant(e.active_to),
    }
    owners = dict(
        connection.execute(
            _STATUS_KEYS,
            {
                "namespace": e.namespace,
                "feature_key": e.feature_key,
                "customer_key": e.customer_key,
            },
        ).all()
    )
    feature_id, customer_id = owners.get("feature"), owners.get("subject")
    if feature_id is not None:
        status["featureId"] = feature_id
    if customer_id is not None:
        status["customerId"] = customer_id
    if e.usage_period:
        first = e.usage_period[0].recurrence
        status["usagePeriod"] = {
            "interval": first.interval.enum_name() or first.interval.iso(),
            "anchor": format_rfc3339(first.anchor),
        }
    if e.measure_usage_from is not None:
        status["measureUsageFrom"] = format_rfc3339(e.measure_usage_from)
        status["lastReset"] = format_rfc3339(last_reset(e))
    return {k: v for k, v in status.items() if v is not None}


def _grant_status(connection: Connection, g: Grant) -> dict[str, Any]:
    names = connection.execute(
        select(_RESOURCES.c.name).where(_RESOURCES.c.id == g.entitlement_id)
    ).scalar_one_or_none()
    status: dict[str, Any] = {
        "id": g.id,
        "entitlementId": g.entitlement_id,
        "entitlement": names,
        "effectiveAt": format_rfc3339(g.effective_at),
        "expiresAt": _instant(expires_at(g)),
        "priority": g.priority,
        "minRolloverAmount": float(g.min_rollover_amount),
        "maxRolloverAmount": float(g.rollover_cap),
        "voidedAt": _instant(g.void_at),
        "nextRecurrence": _instant(next_recurrence_after(g, g.effective_at))
        if g.recurrence is not None
        else None,
    }
    return {k: v for k, v in status.items() if v is not None}


# --- plans and subscriptions -----------------------------------------------------------------

_PLAN_KINDS = (Kind.PLAN, Kind.SUBSCRIPTION)
_NAME_MAX = 253


def _identity_name(name: str, record_id: str) -> str:
    """Return a record's identity name: its name, shortened with its id when too long."""
    if len(name) <= _NAME_MAX:
        return name
    return f"{name[: _NAME_MAX - len(record_id) - 1]}~{record_id}"


@dataclass(frozen=True)
class _Logged:
    """A Plan or Subscription as its log holds it: the last applied generation, if any."""

    id: str
    name: str
    created_at: datetime
    uid: str | None
    generation: int
    at: datetime
    spec: Spec
    deleted: bool


@dataclass(frozen=True)
class _Page:
    """Recorded objects of one kind read by name: ``last`` is the last name read, ``complete``
    whether none is named after it."""

    found: list[_Logged]
    last: str | None
    complete: bool


def _logged(
    connection: Connection,
    namespace: str,
    kind: Kind,
    *,
    after: str | None = None,
    limit: int | None = None,
) -> _Page:
    """Return the recorded objects of ``kind`` in ``namespace`` with their last applied row, by
    name: those named after ``after``, at most ``limit`` identities read. Two queries (a few
    more past 500 identities), whatever the count."""
    query = (
        select(_RESOURCES.c.id, _RESOURCES.c.name, _RESOURCES.c.created_at)
        .where(_RESOURCES.c.namespace == namespace, _RESOURCES.c.kind == kind.value)
        .order_by(_RESOURCES.c.name)
    )
    if after is not None:
        query = query.where(_RESOURCES.c.name > after)
    if limit is not None:
        query = query.limit(limit)
    identities = connection.execute(query).all()
    rows_of: dict[str, list[Any]] = {identity.id: [] for identity in identities}
    for start in range(0, len(identities), _IN_BATCH):
        ids = [identity.id for identity in identities[start : start + _IN_BATCH]]
        for row in connection.execute(
            select(_LOG)
            .where(_LOG.c.resource_id.in_(ids), _LOG.c.action.in_((_APPLIED, _DELETED)))
            .order_by(_LOG.c.id)
        ):
            rows_of[row.resource_id].append(row)
    found: list[_Logged] = []
    for identity in identities:
        rows = rows_of[identity.id]
        applied = [row for row in rows if row.action == _APPLIED]
        if not applied:
            continue
        last = applied[-1]
        deleted = any(row.action == _DELETED and row.uid == last.uid for row in rows)
        found.append(
            _Logged(
                identity.id,
                identity.name,
                identity.created_at,
                last.uid,
                last.generation,
                last.at,
                recorded_spec(last.spec),
                deleted,
            )
        )
    last = identities[-1].name if identities else after
    return _Page(found, last, limit is None or len(identities) < limit)


def _plan_view(
    connection: Connection,
    resource: Resource,
    features: tuple[rc.RecordedFeature, ...] | None = None,
) -> rc.Recorded:
    """Return what reconciling a Plan or Subscription needs, without scanning the namespace.

    A Plan needs only the plans (added by the caller). A Subscription needs the features, its
    holder's customer record, every entitlement of that customer (its own, and the ones it may
    collide with) and the grants its rollouts issued to them.
    """
    spec = resource.spec
    if not isinstance(spec, SubscriptionSpec):
        return rc.Recorded()
    ns = resource.ref.namespace
    customers, entitlements = _holdings(connection, ns, spec)
    raised = connection.execute(
        select(_RESOURCES.c.id).where(
            _RESOURCES.c.namespace == ns,
            _RESOURCES.c.kind == PLAN_GRANT_KIND,
            or_(*(_RESOURCES.c.name.startswith(f"{e.id}/") for e in entitlements), false()),
        )
    ).all()
    grants = [
        r
        for r in catalogue.records_by_id(connection, [row.id for row in raised])
        if isinstance(r, Grant)
    ]
    names = catalogue.names_of(connection, [c.id for c in customers])
    return rc.Recorded(
        features=_load_features(connection, ns) if features is None else features,
        customers=tuple(
            rc.RecordedCustomer(c.id, names.get(c.id), c.created_at, c.customer) for c in customers
        ),
        entitlements=tuple(entitlements),
        grants=tuple(grants),
    )


def _load_features(connection: Connection, ns: str) -> tuple[rc.RecordedFeature, ...]:
    records = [
        r
        for r in catalogue.current_records(connection, ns, kinds=["feature"])
        if isinstance(r, FeatureRecord)
    ]
    names = catalogue.names_of(connection, [r.id for r in records])
    return tuple(
        rc.RecordedFeature(r.id, names.get(r.id, ""), r.created_at, r.feature) for r in records
    )


def _holdings(
    connection: Connection, ns: str, spec: SubscriptionSpec
) -> tuple[list[CustomerRecord], list[Entitlement]]:
    """Return the customer a Subscription names (by key or subject) and its entitlements."""
    named = spec.customer if spec.customer is not None else spec.subject or ""
    owner = catalogue.key_owner(connection, ns, "subject", named)
    customers = [
        r
        for r in catalogue.records_by_id(connection, [owner] if owner else [])
        if isinstance(r, CustomerRecord)
    ]
    keys = {named, *(c.customer.key for c in customers)}
    ids = [i for key in sorted(keys) for i in catalogue.entitlements_of(connection, ns, key)]
    entitlements = [
        r for r in catalogue.records_by_id(connection, ids) if isinstance(r, Entitlement)
    ]
    return customers, entitlements


def _load_plans(connection: Connection, namespace: str) -> tuple[rc.RecordedPlan, ...]:
    plans: list[rc.RecordedPlan] = []
    for logged in _logged(connection, namespace, Kind.PLAN).found:
        spec = logged.spec
        if not isinstance(spec, PlanSpec):
            continue
        key = spec.key if spec.key is not None else default_key(logged.name)
        plans.append(
            rc.RecordedPlan(
                logged.id,
                logged.name,
                key,
                logged.generation,
                logged.at,
                logged.created_at,
                spec,
                logged.deleted,
            )
        )
    return tuple(plans)


def _subscribes(logged: _Logged, plan_key: str) -> bool:
    spec = logged.spec
    return not logged.deleted and isinstance(spec, SubscriptionSpec) and spec.plan_key == plan_key


def _subscribers(
    connection: Connection,
    namespace: str,
    plan_key: str,
    *,
    after: str | None = None,
    limit: int | None = None,
) -> _Page:
    """Return the recorded, undeleted Subscriptions whose last applied spec names ``plan_key``,
    among at most ``limit`` named after ``after``."""
    page = _logged(connection, namespace, Kind.SUBSCRIPTION, after=after, limit=limit)
    return replace(page, found=[logged for logged in page.found if _subscribes(logged, plan_key)])


@dataclass(frozen=True)
class _Shared:
    """What every subscriber of a rollout chunk reads alike, loaded once per chunk (a rollout
    writes neither plans nor features)."""

    plans: tuple[rc.RecordedPlan, ...]
    features: tuple[rc.RecordedFeature, ...]


def _apply_subscriber(
    connection: Connection, namespace: str, logged: _Logged, shared: _Shared, now: datetime
) -> tuple[Ref, Outcome]:
    ref = Ref(namespace, Kind.SUBSCRIPTION, logged.name)
    resource = Resource(ref, logged.spec, logged.uid, logged.generation, logged.created_at)
    # As ``_own`` derives it: the subscriber is applied at its last applied generation.
    own = rc.Own(
        id=logged.id,
        uid=logged.uid,
        generation=logged.generation,
        recorded_at=logged.at,
        created_at=logged.created_at,
        spec=logged.spec,
        deleted=logged.deleted,
    )
    outcome = _apply(
        connection,
        resource,
        now,
        with_status=False,
        plans=shared.plans,
        features=shared.features,
        own=own,
    )
    return ref, outcome


# --- a Plan's rollout, in chunks ---------------------------------------------------------------

#: Subscribers a Plan's rollout reconciles per transaction: about 2 s on SQLite at 9 ms each,
#: well inside the operator's ledger timeout even on a loaded machine, and short enough for the
#: other writers (reconciles, usage) waiting on the ledger.
ROLLOUT_CHUNK = 200
#: The reconciliation log's action for a rollout's progress (one row per committed chunk).
_ROLLOUT = "rollout"
_IN_BATCH = 500
#: Identities read per query when counting subscribers.
_SCAN = 5000


@dataclass(frozen=True)
class RolloutProgress:
    """How far a Plan generation's rollout has come, as its last committed chunk left it.

    ``after`` is the last Subscription name reached (subscribers are taken by name);
    ``total`` is the count of subscribers when the rollout started (exact once finished);
    ``started_at``/``finished_at`` are the operator's instants, not the edit's: every
    subscriber acts at the instant the generation was applied (D2), whatever the chunk.
    """

    generation: int
    total: int
    done: int
    changed: int
    after: str | None
    started_at: datetime
    finished_at: datetime | None = None

    @property
    def finished(self) -> bool:
        """Tell whether every subscriber has been reached."""
        return self.finished_at is not None

    def status(self) -> dict[str, Any]:
        """Return the Plan's ``status.rollout``."""
        fields: dict[str, Any] = {
            "observedGeneration": self.generation,
            "total": self.total,
            "done": self.done,
            "changed": self.changed,
            "startedAt": format_rfc3339(self.started_at),
            # null while running: a merge patch must clear the previous rollout's instant
            "finishedAt": None if self.finished_at is None else format_rfc3339(self.finished_at),
        }
        return fields

    def dump(self) -> str:
        """Encode for the reconciliation log."""
        return json.dumps(
            {
                "generation": self.generation,
                "total": self.total,
                "done": self.done,
                "changed": self.changed,
                "after": self.after,
                "startedAt": self.started_at.isoformat(),
                "finishedAt": None if self.finished_at is None else self.finished_at.isoformat(),
            },
            sort_keys=True,
        )

    @classmethod
    def load(cls, text: str) -> RolloutProgress:
        """Decode from the reconciliation log."""
        data = json.loads(text)
        finished = data.get("finishedAt")
        return cls(
            generation=int(data["generation"]),
            total=int(data["total"]),
            done=int(data["done"]),
            changed=int(data["changed"]),
            after=data.get("after"),
            started_at=datetime.fromisoformat(data["startedAt"]),
            finished_at=None if finished is None else datetime.fromisoformat(finished),
        )


def rollout_progress(connection: Connection, plan_id: str) -> RolloutProgress | None:
    """Return the progress of the Plan's last rollout (None: it never rolled out in chunks)."""
    text = connection.execute(
        select(_LOG.c.spec)
        .where(_LOG.c.resource_id == plan_id, _LOG.c.action == _ROLLOUT)
        .order_by(_LOG.c.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    return None if text is None else RolloutProgress.load(text)


def _save_progress(
    connection: Connection, plan: rc.RecordedPlan, progress: RolloutProgress
) -> None:
    connection.execute(
        insert(_LOG).values(
            resource_id=plan.id,
            action=_ROLLOUT,
            uid=None,
            generation=progress.generation,
            at=plan.applied_at,
            spec=progress.dump(),
        )
    )


def _start_rollout(
    connection: Connection, namespace: str, plan: rc.RecordedPlan, now: datetime
) -> RolloutProgress:
    """Count the Plan's subscribers and persist the start of its generation's rollout.

    Every subscriber acts at the generation's instant (``plan.applied_at``, persisted when the
    generation was first seen, D2), so each chunk, retried or resumed, writes the same. A
    rollout still running for an older generation stops here: the subscribers it had not
    reached go straight to this generation, at this generation's instant.
    """
    total, after = 0, None
    while True:
        page = _subscribers(connection, namespace, plan.key, after=after, limit=_SCAN)
        total, after = total + len(page.found), page.last
        if page.complete:
            break
    progress = RolloutProgress(plan.generation, total, 0, 0, None, now)
    _save_progress(connection, plan, progress)
    return progress


def continue_rollout(
    connection: Connection,
    namespace: str,
    plan_key: str,
    now: datetime,
    *,
    chunk: int = ROLLOUT_CHUNK,
) -> tuple[RolloutProgress | None, list[tuple[Ref, Outcome]]]:
    """Roll the Plan's current generation out to its next ``chunk`` subscribers.

    The caller commits: one transaction per chunk, each with the progress it reached, so a
    crash loses at most the chunk in flight, and resuming redoes exactly that chunk (a
    subscriber's rollout is idempotent). Returns the progress (None: the plan is gone or never
    rolled out in chunks) and what each subscriber reached did.
    """
    plans = _load_plans(connection, namespace)
    plan = find_plan(plans, plan_key)
    if plan is None:
        return None, []
    progress = rollout_progress(connection, plan.id)
    if progress is None or progress.generation != plan.generation or progress.finished:
        return progress, []
    return _roll_chunk(connection, namespace, plan, plans, progress, now, chunk)


def _roll_chunk(
    connection: Connection,
    namespace: str,
    plan: rc.RecordedPlan,
    plans: tuple[rc.RecordedPlan, ...],
    progress: RolloutProgress,
    now: datetime,
    chunk: int,
) -> tuple[RolloutProgress, list[tuple[Ref, Outcome]]]:
    page = _subscribers(connection, namespace, plan.key, after=progress.after, limit=chunk)
    shared = _Shared(plans, _load_features(connection, namespace))
    rolled = [_apply_subscriber(connection, namespace, s, shared, now) for s in page.found]
    done = progress.done + len(rolled)
    progress = replace(
        progress,
        done=done,
        changed=progress.changed + sum(1 for _, o in rolled if o.action != "Unchanged"),
        after=page.last,
        total=done if page.complete else max(progress.total, done),
        finished_at=now if page.complete else None,
    )
    _save_progress(connection, plan, progress)
    return progress, rolled


def _roll_out_plan(
    connection: Connection, resource: Resource, actions: Sequence[rc.Action], now: datetime
) -> tuple[RolloutProgress | None, list[tuple[Ref, Outcome]], bool]:
    """Start the rollout of a newly applied generation, or continue one, by one chunk.

    The flag tells whether this call rolled a chunk (so a call that finishes a rollout can say
    so, and one at the same instant after it does not)."""
    ns = resource.ref.namespace
    plans = _load_plans(connection, ns)
    plan = find_plan(plans, resource.key or "")
    if plan is None or plan.name != resource.ref.name:
        return None, [], False
    if any(isinstance(a, rc.Declare | rc.Amend | rc.Adopt) for a in actions):
        progress: RolloutProgress | None = _start_rollout(connection, ns, plan, now)
    else:
        progress = rollout_progress(connection, plan.id)
    if progress is None or progress.generation != plan.generation or progress.finished:
        return progress, [], False
    return (*_roll_chunk(connection, ns, plan, plans, progress, now, ROLLOUT_CHUNK), True)


def _plan_outcome(
    connection: Connection,
    resource: Resource,
    actions: Sequence[rc.Action],
    own: rc.Own | None,
    now: datetime,
    plans: Sequence[rc.RecordedPlan],
    *,
    with_status: bool = True,
) -> Outcome:
    """Return a Plan's or Subscription's outcome; a Plan's advances its rollout by a chunk.

    A Plan whose rollout is not finished waits (``RollingOut``, due at once): applying it again
    rolls out the next chunk, in the next transaction.
    """
    ref = resource.ref
    failing = [a for a in actions if isinstance(a, rc.Wait | rc.Conflict | rc.Refuse)]
    if failing:
        outcome = _outcome(connection, resource, failing, own)
        return replace(outcome, actions=tuple(actions))
    progress: RolloutProgress | None = None
    rolled: list[tuple[Ref, Outcome]] = []
    advanced = False
    orphaned = any(isinstance(a, rc.Orphan) for a in actions)
    if isinstance(resource.spec, PlanSpec) and not orphaned:
        progress, rolled, advanced = _roll_out_plan(connection, resource, actions, now)
    if orphaned:
        verb = "Orphan"
    elif any(isinstance(a, rc.Adopt) for a in actions):
        verb = "Adopt"
    elif any(isinstance(a, rc.Declare) for a in actions):
        verb = "Record"
    elif any(isinstance(a, rc.Amend | rc.Entitle | rc.Fund | rc.End) for a in actions):
        verb = "Amend"
    else:
        verb = "Unchanged"
    record_id = own.id if own is not None else _find_identity(connection, ref)
    if record_id is None:
        status: dict[str, Any] = {}
    elif with_status:
        status = _plan_status(connection, record_id, resource, plans)
    else:
        status = _subscriber_status(connection, record_id, resource, plans, actions)
    if progress is not None:
        status["rollout"] = progress.status()
    what = f"{ref.kind.value} {ref.namespace}/{ref.name}"
    if progress is not None and not progress.finished:
        message = (
            f"Rolling out {what} generation {progress.generation}: {progress.done:,} of "
            f"{progress.total:,} subscriptions reached ({progress.changed:,} changed), "
            f"{ROLLOUT_CHUNK} per transaction"
        )
        return Outcome("Wait", "RollingOut", message, status, now, tuple(actions), tuple(rolled))
    reached = (
        ""
        if progress is None
        else f"rolled out to {progress.changed:,} of {progress.done:,} subscriptions"
    )
    if verb == "Unchanged" and advanced and progress is not None and progress.finished:
        message = f"Rolled out {what} generation {progress.generation}: {reached}"
        return Outcome("Amend", "RolledOut", message, status, None, tuple(actions), tuple(rolled))
    if verb == "Unchanged":
        message = f"{what} is recorded as written"
        return Outcome("Unchanged", "Recorded", message, status, None, tuple(actions))
    message = f"{_REASONS[verb]} {what}"
    if record_id is not None:
        message += f" (ledger id {record_id})"
    if rolled and progress is not None:
        message += f"; {reached}"
    if verb == "Orphan" and isinstance(resource.spec, PlanSpec):
        kept = _count_subscribers(connection, ref.namespace, resource.key or "")
        if kept:
            message += (
                f"; {kept} subscriptions keep their entitlements as last applied and wait "
                f"for a plan with key {resource.key} (PlanNotFound)"
            )
    return Outcome(verb, _REASONS[verb], message, status, None, tuple(actions), tuple(rolled))


def _count_subscribers(connection: Connection, namespace: str, plan_key: str) -> int:
    total, after = 0, None
    while True:
        page = _subscribers(connection, namespace, plan_key, after=after, limit=_SCAN)
        total, after = total + len(page.found), page.last
        if page.complete:
            return total


def _plan_applied(plans: Sequence[rc.RecordedPlan], key: str) -> dict[str, Any] | None:
    """Return a Subscription's ``status.plan``: the plan generation it follows."""
    plan = find_plan(plans, key)
    if plan is None:
        return None
    return {
        "key": plan.key,
        "generation": plan.generation,
        "appliedAt": format_rfc3339(plan.applied_at),
    }


def _subscriber_status(
    connection: Connection,
    record_id: str,
    resource: Resource,
    plans: Sequence[rc.RecordedPlan],
    actions: Sequence[rc.Action],
) -> dict[str, Any]:
    """Return what a rollout changes in a subscriber's status: the plan generation it follows,
    and its entitlements when one was added or ended (the whole status costs more reads)."""
    spec = resource.spec
    if not isinstance(spec, SubscriptionSpec):
        return {}
    if any(isinstance(a, rc.End) or (isinstance(a, rc.Entitle) and not a.changes) for a in actions):
        return _plan_status(connection, record_id, resource, plans)
    applied = _plan_applied(plans, spec.plan_key)
    return {} if applied is None else {"plan": applied}


def _plan_status(
    connection: Connection,
    record_id: str,
    resource: Resource,
    plans: Sequence[rc.RecordedPlan] = (),
) -> dict[str, Any]:
    """Return a Plan's (id, key, appliedAt, rollout) or a Subscription's status fields."""
    status: dict[str, Any] = {"id": record_id}
    applied = connection.execute(
        select(_LOG.c.at)
        .where(_LOG.c.resource_id == record_id, _LOG.c.action == _APPLIED)
        .order_by(_LOG.c.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    if isinstance(resource.spec, PlanSpec):
        status["key"] = resource.key
        if applied is not None:
            status["appliedAt"] = format_rfc3339(applied)
        progress = rollout_progress(connection, record_id)
        if progress is not None:
            status["rollout"] = progress.status()
        return status
    spec = resource.spec
    if not isinstance(spec, SubscriptionSpec):
        return status
    plan = _plan_applied(plans, spec.plan_key)
    if plan is not None:
        status["plan"] = plan
    _, entitlements = _holdings(connection, resource.ref.namespace, spec)
    held = subscription_entitlements(entitlements, record_id)
    if held:
        status["customerKey"] = held[-1].customer_key
        status["activeFrom"] = format_rfc3339(min(e.start for e in held))
    status["entitlements"] = [
        {
            k: v
            for k, v in (
                ("featureKey", e.feature_key),
                ("id", e.id),
                ("activeFrom", format_rfc3339(e.start)),
                ("activeTo", _instant(e.active_to)),
            )
            if v is not None
        }
        for e in held
    ]
    return status
