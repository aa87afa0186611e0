"""Reconciliation: one pure function from a desired resource and the recorded state to actions.

Role: ``reconcile(desired, recorded, now, new_id)`` decides what the ledger must do so that it
holds ``desired`` (DESIGN D1-D6): create a record (and the implicit customer a subject names),
amend it with D4 timeline entries, end an entitlement, void a grant, apply a manual reset,
re-adopt a re-created object, orphan a deleted one, let a Customer absorb the implicit customer
of its subjects, or do nothing yet and say why (wait for a reference or an instant, a conflict,
a refusal, a reset with nothing to reset). Plans and Subscriptions are routed to ``plans``, which
declares them and expands a Subscription into ledger entitlements (``Declare``, ``Entitle``,
``Fund``).
The operator and ``allotment dev`` both drive it; storage applies the actions in one
transaction. It is level-based and idempotent: reconciling the same desired resource against the
state after its actions were applied yields no writing action.

The instants (D2): a create acts at ``metadata.creationTimestamp``; a resource that waited for a
reference (or for a conflicting entitlement to end) acts at the later of its own instant and the
instant that reference allows; an edit acts when its generation was first seen (``Own.seen``,
else ``now``); a deletion at ``deletionTimestamp``. ``now`` is used for nothing else but telling
whether a scheduled reset is due. Defaults meaning "now" resolve to the acting instant.

Must not: read the clock or a random source (the caller passes ``now`` and the ULID for a new
record), log, or do I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal

from .grants import effective_void_at
from .model import (
    Customer,
    Entitlement,
    EntitlementReset,
    EntitlementType,
    Feature,
    Grant,
    IssueAfterReset,
    Meter,
    Recurrence,
    UsagePeriodEntry,
    Versioned,
)
from .periods import (
    ResetOutcome,
    apply_reset,
    current_period,
    edit_interval,
    edit_issue_after_reset,
    edit_preserve_overage,
    edit_soft_limit,
    new_usage_period,
    next_reset_after,
    prev_before,
)
from .resources import (
    CustomerSpec,
    DeletionPolicy,
    EntitlementResetSpec,
    EntitlementSpec,
    FeatureSpec,
    GrantSpec,
    Kind,
    MeterSpec,
    PlanSpec,
    Ref,
    Resource,
    Spec,
    Target,
    UsageStart,
)
from .timeutil import format_rfc3339, truncate_to_minute
from .ulid import derived_ulid
from .validation import (
    ValidationError,
    check_change,
    check_entitlement_feature,
    check_feature_meter,
    check_grant_effective_at,
    check_grant_entitlement,
    check_reset_entitlement,
    check_resource,
    identity_of,
    reset_before_period,
)

__all__ = [
    "Absorb",
    "Action",
    "Adopt",
    "Amend",
    "Change",
    "Conflict",
    "ConflictReason",
    "Declare",
    "End",
    "Entitle",
    "Fund",
    "ImplyCustomer",
    "LedgerRecord",
    "Noop",
    "Orphan",
    "Own",
    "Record",
    "Recorded",
    "RecordedCustomer",
    "RecordedFeature",
    "RecordedMeter",
    "RecordedPlan",
    "Refuse",
    "Reset",
    "Void",
    "Wait",
    "WaitReason",
    "is_write",
    "reconcile",
    "resolve_subject",
]

LedgerRecord = Meter | Feature | Customer | Entitlement | Grant

# The metadata key naming the Subscription that holds an entitlement (see ``plans``).
_SUBSCRIPTION_NAME = "subscription.name"

# The time part of an implicit customer's id: fixed, so the id depends only on (namespace, key).
T_IMPLIED = datetime(2026, 1, 1, tzinfo=UTC)


# --- what the ledger holds -------------------------------------------------------------------


@dataclass(frozen=True)
class Own:
    """The ledger's record for the desired resource's identity (namespace, kind, name).

    ``generation`` was recorded at ``recorded_at``; ``created_at`` is the instant the record was
    first created (kept on re-adoption); ``spec`` is the last applied spec, as written.
    ``deleted`` means the Kubernetes object was deleted and the record kept (orphaned, or ended
    or voided under deletionPolicy Apply). ``seen`` is a newer generation and the instant it was
    first seen, persisted by the caller before applying it, so every retry edits at that instant.
    """

    id: str
    uid: str | None
    generation: int
    recorded_at: datetime
    created_at: datetime
    spec: Spec
    deleted: bool = False
    seen: tuple[int, datetime] | None = None


@dataclass(frozen=True)
class RecordedMeter:
    """A recorded meter, its Kubernetes name and the instant it was recorded."""

    id: str
    name: str
    created_at: datetime
    meter: Meter


@dataclass(frozen=True)
class RecordedFeature:
    """A recorded feature, its Kubernetes name and the instant it was recorded."""

    id: str
    name: str
    created_at: datetime
    feature: Feature


@dataclass(frozen=True)
class RecordedCustomer:
    """A recorded customer; ``name`` is None for an implicit customer (D5)."""

    id: str
    name: str | None
    created_at: datetime
    customer: Customer


@dataclass(frozen=True)
class RecordedPlan:
    """A recorded Plan: its last applied generation, the instant that generation was applied
    at (which its rollout counts from, D2), and whether the Plan object was deleted."""

    id: str
    name: str
    key: str
    generation: int
    applied_at: datetime
    created_at: datetime
    spec: PlanSpec
    deleted: bool = False


@dataclass(frozen=True)
class Recorded:
    """What the ledger holds that matters for one desired resource, in its namespace.

    ``own`` is the record of the resource's identity. The others are the records it may refer
    to or clash with: meters (by slug), features (by key), customers (by key or subject key),
    entitlements (by name, or by customer and feature) and, for a Grant identity, its grant.
    Passing more records than needed is harmless.
    """

    own: Own | None = None
    meters: tuple[RecordedMeter, ...] = ()
    features: tuple[RecordedFeature, ...] = ()
    customers: tuple[RecordedCustomer, ...] = ()
    entitlements: tuple[Entitlement, ...] = ()
    grants: tuple[Grant, ...] = ()
    plans: tuple[RecordedPlan, ...] = ()


# --- actions ---------------------------------------------------------------------------------


class WaitReason(enum.Enum):
    """Why a resource cannot act yet (Ready=False; retried, and re-triggered by the reference)."""

    METER_NOT_FOUND = "MeterNotFound"
    FEATURE_NOT_FOUND = "FeatureNotFound"
    CUSTOMER_NOT_FOUND = "CustomerNotFound"
    ENTITLEMENT_NOT_FOUND = "EntitlementNotFound"
    PLAN_NOT_FOUND = "PlanNotFound"
    SCHEDULED = "Scheduled"


class ConflictReason(enum.Enum):
    """Why a resource clashes with what the ledger holds (Ready=False)."""

    IDENTITY = "IdentityConflict"
    ENTITLEMENT = "EntitlementConflict"
    KEY = "KeyConflict"


@dataclass(frozen=True)
class Change:
    """One D4 edit: ``field`` (the spec path) takes ``value`` from ``since``."""

    field: str
    since: datetime
    value: object


@dataclass(frozen=True)
class Record:
    """Create the record of ``ref`` at ``at`` with id ``id`` (or claim an implicit customer)."""

    ref: Ref
    id: str
    uid: str | None
    generation: int
    at: datetime
    spec: Spec
    record: LedgerRecord


@dataclass(frozen=True)
class ImplyCustomer:
    """Create the implicit customer ``{key: S, subjectKeys: [S]}`` a subject names (D5)."""

    namespace: str
    id: str
    at: datetime
    customer: Customer


@dataclass(frozen=True)
class Absorb:
    """Customer ``id`` (key ``key``) takes over implicit customer ``implicit_id`` from ``at``.

    Storage re-points the entitlements of ``implicit_key`` to ``key`` and drops the implicit
    customer, freeing its key and subject; the entitlements and their grants keep their ids (D5:
    a subject belongs to at most one customer per namespace). No amount changes. It comes before
    the Record or Amend of the customer, so per-namespace key constraints hold throughout.
    """

    ref: Ref
    id: str
    key: str
    implicit_id: str
    implicit_key: str
    at: datetime


@dataclass(frozen=True)
class Amend:
    """Record generation ``generation`` of ``ref`` first seen at ``at``: the new spec as written,
    its D4 ``changes`` and the resulting ``record`` (an entitlement with its new timelines;
    None when only the identity's generation and spec change)."""

    ref: Ref
    id: str
    generation: int
    at: datetime
    spec: Spec
    changes: tuple[Change, ...]
    record: LedgerRecord | None


@dataclass(frozen=True)
class Reset:
    """Record the EntitlementReset ``ref`` and apply it: ``entitlement`` has the new timeline."""

    ref: Ref
    id: str
    uid: str | None
    generation: int
    at: datetime
    spec: Spec
    reset: EntitlementReset
    entitlement: Entitlement


@dataclass(frozen=True)
class End:
    """End entitlement ``id`` at ``at`` (activeTo, or the deletion instant under Apply)."""

    ref: Ref
    id: str
    at: datetime
    requested: datetime


@dataclass(frozen=True)
class Void:
    """Void grant ``id`` from ``at`` (voidAt, or the deletion instant under Apply)."""

    ref: Ref
    id: str
    at: datetime
    requested: datetime


@dataclass(frozen=True)
class Adopt:
    """A re-created object with the same immutable spec takes over record ``id`` (D1)."""

    ref: Ref
    id: str
    uid: str | None
    generation: int
    at: datetime


@dataclass(frozen=True)
class Orphan:
    """The object is gone; its record ``id`` stays as it is (D3): no money moves."""

    ref: Ref
    id: str
    at: datetime
    policy: DeletionPolicy


@dataclass(frozen=True)
class Wait:
    """Nothing to do yet: a reference is missing, or ``until`` has not come (Ready=False)."""

    ref: Ref
    reason: WaitReason
    message: str
    until: datetime | None = None


@dataclass(frozen=True)
class Conflict:
    """The resource clashes with another record; nothing is written (Ready=False)."""

    ref: Ref
    reason: ConflictReason
    message: str
    conflicting_id: str | None = None


@dataclass(frozen=True)
class Refuse:
    """The resource breaks a rule; ``errors`` say which and how to fix it (Ready=False)."""

    ref: Ref
    errors: tuple[ValidationError, ...]

    @property
    def error(self) -> ValidationError:
        """Return the first rule broken."""
        return self.errors[0]


@dataclass(frozen=True)
class Noop:
    """Nothing to do, and nothing will be: a reset not after the last reset (Ready=True)."""

    ref: Ref
    reason: str
    message: str
    at: datetime


@dataclass(frozen=True)
class Declare:
    """Record the identity of Plan or Subscription ``ref`` as ``id`` at ``at``.

    Neither is a catalogue record: a Plan lives in the reconciliation log, a Subscription in
    the entitlements it holds (``Entitle``).
    """

    ref: Ref
    id: str
    uid: str | None
    generation: int
    at: datetime
    spec: Spec


@dataclass(frozen=True)
class Entitle:
    """Put ``entitlement``, held by Subscription ``ref``, in the catalogue: new, or with the
    timeline entries ``changes`` of a plan rollout appended. Nothing recorded is rewritten."""

    ref: Ref
    entitlement: Entitlement
    changes: tuple[Change, ...] = ()


@dataclass(frozen=True)
class Fund:
    """Put ``grant`` in the catalogue: the difference a raised issueAfterReset adds at once
    under rolloutPolicy Immediately, ending with the current usage period."""

    ref: Ref
    grant: Grant


Action = (
    Record
    | ImplyCustomer
    | Absorb
    | Amend
    | Reset
    | End
    | Void
    | Adopt
    | Orphan
    | Wait
    | Conflict
    | Refuse
    | Noop
    | Declare
    | Entitle
    | Fund
)

_WRITES = (
    Record, ImplyCustomer, Absorb, Amend, Reset, End, Void, Adopt, Orphan, Declare, Entitle, Fund
)  # fmt: skip


def is_write(action: Action) -> bool:
    """Tell whether storage must write something for ``action``."""
    return isinstance(action, _WRITES)


# --- the entry point -------------------------------------------------------------------------


def reconcile(
    desired: Resource,
    recorded: Recorded,
    now: datetime,
    new_id: str,
    *,
    force_orphan: bool = False,
) -> tuple[Action, ...]:
    """Return the actions that make the ledger hold ``desired`` (see the module docstring).

    ``new_id`` is the ULID a new record gets; ``force_orphan`` orphans on deletion whatever the
    deletionPolicy (the namespace or the CRD is being deleted, D3).
    """
    if desired.ref.kind in (Kind.PLAN, Kind.SUBSCRIPTION):
        from .plans import reconcile_plan_kind  # plans builds on this module: import it late

        return reconcile_plan_kind(desired, recorded, now, new_id, force_orphan=force_orphan)
    if desired.deleted_at is not None:
        return _delete(desired, recorded, desired.deleted_at, force_orphan)
    errors = check_resource(desired)
    if errors:
        return (Refuse(desired.ref, errors),)
    own = recorded.own
    if own is None:
        return _create(desired, recorded, now, new_id)
    if own.deleted or own.uid != desired.uid:
        return _readopt(desired, recorded, own, now)
    if own.spec == desired.spec and own.generation == desired.generation:
        return _absorb_late(desired, recorded, own)
    return _edit(desired, recorded, own, _edit_instant(desired, own, now))


def _absorb_late(desired: Resource, recorded: Recorded, own: Own) -> tuple[Action, ...]:
    """Absorb an implicit customer that appeared after the Customer was recorded (a race)."""
    spec = desired.spec
    if not isinstance(spec, CustomerSpec):
        return ()
    customer = _customer_of(desired, spec)
    absorbed = _check_customer_keys(desired.ref, customer, recorded, own.id)
    if isinstance(absorbed, Conflict):
        return ()
    return tuple(_absorb(desired.ref, own.id, customer, absorbed, own.recorded_at))


def _edit_instant(desired: Resource, own: Own, now: datetime) -> datetime:
    """Return when the edit to ``desired.generation`` happened: first seen, else now (D2)."""
    if own.seen is not None and own.seen[0] == desired.generation:
        return own.seen[1]
    return now


def _created_at(desired: Resource, now: datetime) -> datetime:
    return desired.created_at if desired.created_at is not None else now


# --- deletion (D3) ---------------------------------------------------------------------------


def _delete(
    desired: Resource, recorded: Recorded, at: datetime, force_orphan: bool
) -> tuple[Action, ...]:
    own = recorded.own
    if own is None or own.deleted:
        return ()
    policy = DeletionPolicy.ORPHAN if force_orphan else desired.deletion_policy
    actions: list[Action] = []
    if policy is DeletionPolicy.APPLY:
        actions.extend(_apply_deletion(desired.ref, recorded, own, at))
    actions.append(Orphan(desired.ref, own.id, at, policy))
    return tuple(actions)


def _apply_deletion(ref: Ref, recorded: Recorded, own: Own, at: datetime) -> list[Action]:
    """End an Entitlement or void a Grant at the deletion instant, unless already earlier."""
    instant = truncate_to_minute(at)
    if ref.kind is Kind.ENTITLEMENT:
        entitlement = _own_entitlement(recorded, own)
        if entitlement.active_to is None or entitlement.active_to > instant:
            return [End(ref, own.id, _end_instant(entitlement, at, at), at)]
    if ref.kind is Kind.GRANT:
        grant = _own_grant(recorded, own)
        if grant.void_at is None or grant.void_at > instant:
            timeline = _timeline_of(recorded, grant.entitlement_id)
            return [Void(ref, own.id, effective_void_at(timeline, at, at), at)]
    return []


# --- re-adoption (D1) ------------------------------------------------------------------------


def _readopt(desired: Resource, recorded: Recorded, own: Own, now: datetime) -> tuple[Action, ...]:
    """Re-adopt the record if the immutable spec is the same as written, else refuse (D1)."""
    differences = check_change(own.spec, desired.spec)
    if identity_of(own.spec) != identity_of(desired.spec) or differences:
        fields = ", ".join(e.field for e in differences) or "the immutable fields"
        return (
            Conflict(
                desired.ref,
                ConflictReason.IDENTITY,
                f"{desired.ref} was re-created with a different {fields} than its ledger record "
                f"{own.id}: restore the recorded spec, or use another name",
                own.id,
            ),
        )
    at = _created_at(desired, now)
    adopt = Adopt(desired.ref, own.id, desired.uid, desired.generation, at)
    if own.spec == desired.spec:
        return (adopt,)
    adopted = replace(own, uid=desired.uid, deleted=False)
    return (adopt, *_edit(desired, replace(recorded, own=adopted), adopted, at))


# --- creation --------------------------------------------------------------------------------


def _create(
    desired: Resource, recorded: Recorded, now: datetime, new_id: str
) -> tuple[Action, ...]:
    spec = desired.spec
    at = _created_at(desired, now)
    if isinstance(spec, MeterSpec):
        return _create_meter(desired, spec, recorded, at, new_id)
    if isinstance(spec, FeatureSpec):
        return _create_feature(desired, spec, recorded, at, new_id)
    if isinstance(spec, CustomerSpec):
        return _create_customer(desired, spec, recorded, at, new_id)
    if isinstance(spec, EntitlementSpec):
        return _create_entitlement(desired, spec, recorded, at, new_id)
    if isinstance(spec, GrantSpec):
        return _create_grant(desired, spec, recorded, at, new_id)
    if not isinstance(spec, EntitlementResetSpec):  # Plans and Subscriptions go to ``plans``
        raise TypeError(f"{desired.ref} is not reconciled here")
    return _create_reset(desired, spec, recorded, at, now, new_id)


def _record(desired: Resource, new_id: str, at: datetime, record: LedgerRecord) -> Record:
    return Record(desired.ref, new_id, desired.uid, desired.generation, at, desired.spec, record)


def _meter_of(desired: Resource, spec: MeterSpec) -> Meter:
    return Meter(
        slug=desired.key or "",
        event_type=spec.event_type,
        aggregation=spec.aggregation,
        value_property=spec.value_property,
        group_by=dict(spec.group_by or {}),
    )


def _feature_of(desired: Resource, spec: FeatureSpec) -> Feature:
    defaults = Feature(key="", name="")
    return Feature(
        key=desired.key or "",
        name=desired.display_name or "",
        meter_slug=spec.meter_slug,
        meter_group_by_filters=dict(spec.meter_group_by_filters or {}),
        metadata=dict(spec.metadata or {}),
        when_stale=spec.when_stale or defaults.when_stale,
        consistency=spec.consistency or defaults.consistency,
    )


def _customer_of(desired: Resource, spec: CustomerSpec) -> Customer:
    return Customer(
        key=desired.key or "",
        name=desired.display_name or "",
        subject_keys=tuple(spec.subject_keys or ()),
        metadata=dict(spec.metadata or {}),
    )


def _create_meter(
    desired: Resource, spec: MeterSpec, recorded: Recorded, at: datetime, new_id: str
) -> tuple[Action, ...]:
    meter = _meter_of(desired, spec)
    for other in recorded.meters:
        if other.meter.slug == meter.slug and other.name != desired.ref.name:
            return (_key_conflict(desired.ref, "slug", meter.slug, "Meter", other.name, other.id),)
    return (_record(desired, new_id, at, meter),)


def _create_feature(
    desired: Resource, spec: FeatureSpec, recorded: Recorded, at: datetime, new_id: str
) -> tuple[Action, ...]:
    feature = _feature_of(desired, spec)
    for other in recorded.features:
        if other.feature.key == feature.key and other.name != desired.ref.name:
            return (
                _key_conflict(desired.ref, "key", feature.key, "Feature", other.name, other.id),
            )
    if spec.meter_slug is not None:
        meter = _find_meter(recorded, spec.meter_slug)
        if meter is None:
            return (
                Wait(
                    desired.ref,
                    WaitReason.METER_NOT_FOUND,
                    f"meter not found: {spec.meter_slug}: create a Meter with that slug in "
                    f"namespace {desired.ref.namespace}, or fix spec.meterSlug",
                ),
            )
        errors = check_feature_meter(
            spec, meter.meter.slug, meter.meter.aggregation.value, meter.meter.group_by
        )
        if errors:
            return (Refuse(desired.ref, errors),)
        at = max(at, meter.created_at)
    return (_record(desired, new_id, at, feature),)


def _create_customer(
    desired: Resource, spec: CustomerSpec, recorded: Recorded, at: datetime, new_id: str
) -> tuple[Action, ...]:
    customer = _customer_of(desired, spec)
    absorbed = _check_customer_keys(desired.ref, customer, recorded, None)
    if isinstance(absorbed, Conflict):
        return (absorbed,)
    record = _record(desired, new_id, at, customer)
    return (*_absorb(desired.ref, new_id, customer, absorbed, at), record)


def _check_customer_keys(
    ref: Ref, customer: Customer, recorded: Recorded, own_id: str | None
) -> list[RecordedCustomer] | Conflict:
    """Return the implicit customers ``customer`` absorbs, or the conflict with a declared one.

    A declared Customer whose key or subject keys name an implicit customer's subject takes it
    over (D5), so the ledger ends the same whether the Customer or the Entitlement naming the
    subject was reconciled first.
    """
    absorbed: list[RecordedCustomer] = []
    for other in recorded.customers:
        if other.id == own_id or other.name == ref.name:
            continue
        if other.name is None and other.customer.key in customer.all_subject_keys:
            absorbed.append(other)
            continue
        conflict = _subject_conflict(ref, customer, other)
        if conflict is not None:
            return conflict
    return absorbed


def _absorb(
    ref: Ref, id: str, customer: Customer, implicit: Iterable[RecordedCustomer], at: datetime
) -> list[Action]:
    return [Absorb(ref, id, customer.key, other.id, other.customer.key, at) for other in implicit]


def _subject_conflict(ref: Ref, customer: Customer, other: RecordedCustomer) -> Conflict | None:
    """Return a KeyConflict when a key or subject key already belongs to another customer (D5)."""
    taken = set(customer.all_subject_keys) & set(other.customer.all_subject_keys)
    if not taken:
        return None
    holder = (
        f"Customer {ref.namespace}/{other.name}"
        if other.name is not None
        else f"the implicit customer {other.customer.key!r} (created for an Entitlement's subject)"
    )
    return Conflict(
        ref,
        ConflictReason.KEY,
        f"{', '.join(sorted(taken))} is already the key or a subject key of {holder}: a string "
        "may belong to at most one customer per namespace; remove it from one of them",
        other.id,
    )


def _key_conflict(
    ref: Ref, field: str, value: str, kind: str, holder: str, holder_id: str
) -> Conflict:
    return Conflict(
        ref,
        ConflictReason.KEY,
        f"{kind} {ref.namespace}/{holder} already has {field} {value}: {field}s are unique per "
        f"namespace; choose another {field}",
        holder_id,
    )


def _find_meter(recorded: Recorded, slug: str) -> RecordedMeter | None:
    return next((m for m in recorded.meters if m.meter.slug == slug), None)


def _find_feature(recorded: Recorded, key: str) -> RecordedFeature | None:
    return next((f for f in recorded.features if f.feature.key == key), None)


def resolve_subject(subject: str, customers: Iterable[RecordedCustomer]) -> RecordedCustomer | None:
    """Return the customer whose key or subject keys contain ``subject`` (D5), if any.

    A string belongs to at most one customer per namespace; if the ledger holds several anyway
    (an implicit customer not yet absorbed), a declared Customer wins, then the one whose key it
    is, then the earliest recorded.
    """
    matches = [c for c in customers if subject in c.customer.all_subject_keys]
    matches.sort(key=lambda c: (c.name is None, c.customer.key != subject, c.created_at, c.id))
    return matches[0] if matches else None


@dataclass(frozen=True)
class _Holder:
    """The customer an Entitlement belongs to; ``implied`` when it must be created (D5).

    ``created_at`` is when the Customer named by ``customer`` was recorded, which a waiting
    resource acts after. A ``subject`` always resolves (to a customer or an implicit one), so
    nothing naming a subject ever waits, and the order in which objects are reconciled cannot
    move its instant. ``customer`` names declared Customers only.
    """

    key: str
    created_at: datetime | None
    implied: Customer | None = None


def _resolve_holder(
    ref: Ref, customer: str | None, subject: str | None, recorded: Recorded
) -> _Holder | Wait:
    if subject is not None:
        found = resolve_subject(subject, recorded.customers)
        if found is None:
            implied = Customer(key=subject, name=subject, subject_keys=(subject,))
            return _Holder(subject, None, implied)
        return _Holder(found.customer.key, None)
    key = customer or ""
    for candidate in recorded.customers:
        if candidate.customer.key == key and candidate.name is not None:
            return _Holder(key, candidate.created_at)
    return Wait(
        ref,
        WaitReason.CUSTOMER_NOT_FOUND,
        f"customer not found: {key}: create a Customer with that key in namespace "
        f"{ref.namespace}, or fix spec.customer",
    )


def _create_entitlement(
    desired: Resource, spec: EntitlementSpec, recorded: Recorded, at: datetime, new_id: str
) -> tuple[Action, ...]:
    ref = desired.ref
    holder = _resolve_holder(ref, spec.customer, spec.subject, recorded)
    if isinstance(holder, Wait):
        return (holder,)
    feature = _find_feature(recorded, spec.feature_key)
    if feature is None:
        return (
            Wait(
                ref,
                WaitReason.FEATURE_NOT_FOUND,
                f"feature not found: {spec.feature_key}: create a Feature with that key in "
                f"namespace {ref.namespace}, or fix spec.featureKey",
            ),
        )
    errors = check_entitlement_feature(spec, feature.id, feature.feature.meter_slug)
    if errors:
        return (Refuse(ref, errors),)
    at = max([at, feature.created_at, *([holder.created_at] if holder.created_at else [])])
    start = _start_after_others(recorded.entitlements, holder.key, spec, at)
    if isinstance(start, Entitlement):
        return (_entitlement_conflict(ref, start, spec.feature_key, holder.key),)
    at = start
    entitlement = _new_entitlement(desired, spec, holder.key, at, new_id)
    actions: list[Action] = []
    if holder.implied is not None:
        implied_id = derived_ulid(T_IMPLIED, f"{ref.namespace}/customer/{holder.key}")
        actions.append(ImplyCustomer(ref.namespace, implied_id, at, holder.implied))
    actions.append(_record(desired, new_id, at, entitlement))
    return tuple(actions)


def _start_after_others(
    entitlements: Sequence[Entitlement], customer_key: str, spec: EntitlementSpec, at: datetime
) -> datetime | Entitlement:
    """Return when a new entitlement acts: ``at``, or after the entitlements it would overlap end.

    At most one entitlement per customer and feature is active at any instant (spec §4 rule 1).
    An overlapping one that has an end makes the new one wait for it (D2); one without an end,
    or an explicit activeFrom or activeTo that cannot fit after it, is returned as the conflict.
    """
    for _ in range(len(entitlements) + 1):
        blocking = _overlapping(entitlements, customer_key, spec, at)
        if blocking is None:
            return at
        end = blocking.active_to
        if end is None or spec.active_from is not None:
            return blocking
        if spec.active_to is not None and spec.active_to <= end:
            return blocking
        at = max(at, end)
    return at


def _overlapping(
    entitlements: Sequence[Entitlement], customer_key: str, spec: EntitlementSpec, at: datetime
) -> Entitlement | None:
    """Return the entitlement of the same customer and feature whose activity overlaps ours.

    Ours is ``[activeFrom or at, activeTo)``; another one that ends (activeTo set) does not
    block once we act after its end, which the caller arranges.
    """
    start = spec.active_from if spec.active_from is not None else at
    end = spec.active_to
    for other in entitlements:
        if other.customer_key != customer_key or other.feature_key != spec.feature_key:
            continue
        if other.active_to is not None and other.active_to <= other.start:
            continue  # never active
        starts_before_our_end = end is None or other.start < end
        ends_after_our_start = other.active_to is None or other.active_to > start
        if starts_before_our_end and ends_after_our_start:
            return other
    return None


def _entitlement_conflict(ref: Ref, other: Entitlement, feature: str, customer: str) -> Conflict:
    subscription = other.metadata.get(_SUBSCRIPTION_NAME)
    if subscription is not None:  # held by a Subscription (plans): no Entitlement to edit
        return Conflict(
            ref,
            ConflictReason.ENTITLEMENT,
            f"entitlement with id {other.id} already exists for feature {feature} and customer "
            f"{customer} (held by Subscription {other.namespace}/{subscription}): move that "
            "subscription to a plan without this feature, or delete it with deletionPolicy "
            "Apply, and this one starts when its entitlement ends",
            other.id,
        )
    return Conflict(
        ref,
        ConflictReason.ENTITLEMENT,
        f"entitlement with id {other.id} already exists for feature {feature} and customer "
        f"{customer} (Entitlement {other.namespace}/{other.name}): set activeTo on it, and this "
        "one starts when it ends",
        other.id,
    )


def _new_entitlement(
    desired: Resource, spec: EntitlementSpec, customer_key: str, at: datetime, new_id: str
) -> Entitlement:
    """Build the ledger entitlement, resolving the defaults that mean "now" (D2).

    They resolve to the acting instant ``at``, or to ``activeFrom`` when that is later: a
    scheduled entitlement never counts usage from before it gives access.
    """
    created_at = at
    if spec.active_from is not None:
        at = max(at, spec.active_from)
    timeline: tuple[UsagePeriodEntry, ...] = ()
    measure_from: datetime | None = None
    if spec.usage_period is not None:
        anchor = truncate_to_minute(spec.usage_period.anchor or at)
        interval = spec.usage_period.interval.duration
        if spec.type is EntitlementType.METERED:
            measure_from = _measure_from(
                spec, interval_recurrence=Recurrence(interval, anchor), at=at
            )
        timeline = new_usage_period(interval, anchor, measure_from or truncate_to_minute(at))
    since = measure_from or truncate_to_minute(at)
    issue = _issue_after_reset(spec)
    entitlement = Entitlement(
        id=new_id,
        namespace=desired.ref.namespace,
        name=desired.ref.name,
        customer_key=customer_key,
        feature_key=spec.feature_key,
        type=spec.type,
        created_at=created_at,
        usage_period=timeline,
        measure_usage_from=measure_from,
        issue_after_reset=(Versioned(since, issue),) if issue is not None else (),
        is_soft_limit=(Versioned(since, True),) if spec.is_soft_limit else (),
        preserve_overage_at_reset=(
            (Versioned(since, True),) if spec.preserve_overage_at_reset else ()
        ),
        config=spec.config,
        active_from=spec.active_from,
        metadata=dict(spec.metadata or {}),
    )
    if spec.active_to is not None:
        entitlement = replace(entitlement, active_to=_end_instant(entitlement, spec.active_to, at))
    return entitlement


def _measure_from(spec: EntitlementSpec, interval_recurrence: Recurrence, at: datetime) -> datetime:
    written = spec.measure_usage_from
    if isinstance(written, datetime):
        return truncate_to_minute(written)
    if written is UsageStart.CURRENT_PERIOD_START:
        return prev_before(interval_recurrence, truncate_to_minute(at), inclusive=True)
    return truncate_to_minute(at)  # omitted or NOW: the acting instant (D2)


def _issue_after_reset(spec: EntitlementSpec) -> IssueAfterReset | None:
    if spec.issue_after_reset is None or spec.issue_after_reset <= 0:
        return None
    return IssueAfterReset(spec.issue_after_reset, spec.issue_after_reset_priority or 1)


def _end_instant(entitlement: Entitlement, requested: datetime, set_at: datetime) -> datetime:
    """Return when an activeTo set at ``set_at`` applies: never before the current period (D4)
    nor before the entitlement's own start (ended in its creation minute: never active)."""
    return max(effective_void_at(entitlement.usage_period, requested, set_at), entitlement.start)


# --- grants and resets: the entitlement they apply to ----------------------------------------


def _resolve_entitlement(
    ref: Ref, target: Target, recorded: Recorded, at: datetime
) -> Entitlement | Wait:
    if target.entitlement is not None:
        for entitlement in recorded.entitlements:
            if entitlement.name == target.entitlement and entitlement.namespace == ref.namespace:
                return entitlement
        return Wait(
            ref,
            WaitReason.ENTITLEMENT_NOT_FOUND,
            f"entitlement not found {target.entitlement} in namespace {ref.namespace}: create "
            "that Entitlement, or fix spec.entitlement",
        )
    holder = _resolve_holder(ref, target.customer, target.subject, recorded)
    if isinstance(holder, Wait):
        return holder
    feature_key = target.feature_key or ""
    candidates = sorted(
        (
            e
            for e in recorded.entitlements
            if e.customer_key == holder.key and e.feature_key == feature_key
        ),
        key=lambda e: (e.start, e.id),
    )
    for entitlement in candidates:
        if entitlement.is_active_at(max(at, entitlement.start)):
            return entitlement
    return Wait(
        ref,
        WaitReason.ENTITLEMENT_NOT_FOUND,
        f"no entitlement of customer {holder.key} to feature {feature_key} is active at "
        f"{format_rfc3339(at)}: create one, or fix spec.customer, spec.subject or spec.featureKey",
    )


def _create_grant(
    desired: Resource, spec: GrantSpec, recorded: Recorded, at: datetime, new_id: str
) -> tuple[Action, ...]:
    entitlement = _resolve_entitlement(desired.ref, spec.target, recorded, at)
    if isinstance(entitlement, Wait):
        return (entitlement,)
    errors = check_grant_entitlement(spec, entitlement.type)
    if errors:
        return (Refuse(desired.ref, errors),)
    at = max(at, entitlement.created_at)
    effective_at = truncate_to_minute(spec.effective_at or at)
    period_start = current_period(entitlement.usage_period, at).start
    errors = check_grant_effective_at(effective_at, period_start)
    if errors:
        return (Refuse(desired.ref, errors),)
    recurrence = None
    if spec.recurrence is not None:
        anchor = truncate_to_minute(spec.recurrence.anchor or effective_at)
        recurrence = Recurrence(spec.recurrence.interval.duration, anchor)
    grant = Grant(
        id=new_id,
        namespace=desired.ref.namespace,
        name=desired.ref.name,
        entitlement_id=entitlement.id,
        amount=spec.amount,
        effective_at=effective_at,
        created_at=at,
        priority=spec.priority if spec.priority is not None else 0,
        expiration=spec.expiration,
        min_rollover_amount=(
            spec.min_rollover_amount if spec.min_rollover_amount is not None else Decimal(0)
        ),
        max_rollover_amount=spec.max_rollover_amount,
        recurrence=recurrence,
        void_at=(
            effective_void_at(entitlement.usage_period, spec.void_at, at)
            if spec.void_at is not None
            else None
        ),
        metadata=dict(spec.metadata or {}),
    )
    return (_record(desired, new_id, at, grant),)


def _create_reset(
    desired: Resource,
    spec: EntitlementResetSpec,
    recorded: Recorded,
    at: datetime,
    now: datetime,
    new_id: str,
) -> tuple[Action, ...]:
    ref = desired.ref
    entitlement = _resolve_entitlement(ref, spec.target, recorded, at)
    if isinstance(entitlement, Wait):
        return (entitlement,)
    errors = check_reset_entitlement(spec, entitlement.type)
    if errors:
        return (Refuse(ref, errors),)
    at = max(at, entitlement.created_at)
    reset_at = truncate_to_minute(spec.effective_at or at)
    if reset_at > now:
        return (
            Wait(
                ref,
                WaitReason.SCHEDULED,
                f"the reset applies at {format_rfc3339(reset_at)}",
                reset_at,
            ),
        )
    instant = max(at, reset_at)
    reset = EntitlementReset(reset_at, bool(spec.retain_anchor), spec.preserve_overage)
    plan = apply_reset(entitlement, reset, instant)
    if plan.outcome is ResetOutcome.NOTHING_TO_RESET:
        return (
            Noop(
                ref,
                "NothingToReset",
                f"the reset at {format_rfc3339(reset_at)} is not after the entitlement's last "
                "reset: nothing to reset",
                reset_at,
            ),
        )
    if plan.outcome is not ResetOutcome.APPLIED:
        start = current_period(entitlement.usage_period, instant).start
        return (Refuse(ref, (reset_before_period(reset_at, start),)),)
    return (
        Reset(
            ref, new_id, desired.uid, desired.generation, instant, desired.spec, reset,
            plan.entitlement,
        ),
    )  # fmt: skip


# --- edits (D4) ------------------------------------------------------------------------------


def _edit(desired: Resource, recorded: Recorded, own: Own, at: datetime) -> tuple[Action, ...]:
    """Apply a new generation of a recorded resource as D4 edits at ``at``."""
    errors = check_change(own.spec, desired.spec)
    if errors:
        return (Refuse(desired.ref, errors),)
    old, new = own.spec, desired.spec
    if isinstance(old, MeterSpec) and isinstance(new, MeterSpec):
        return _edit_meter(desired, old, new, own, at)
    if isinstance(old, FeatureSpec) and isinstance(new, FeatureSpec):
        names = ("name", "metadata", "when_stale", "consistency")
        changes = _plain_changes(old, new, names, at)
        return (_amend(desired, own, at, changes, _feature_of(desired, new)),)
    if isinstance(old, CustomerSpec) and isinstance(new, CustomerSpec):
        return _edit_customer(desired, old, new, recorded, own, at)
    if isinstance(old, EntitlementSpec) and isinstance(new, EntitlementSpec):
        return _edit_entitlement(desired, old, new, recorded, own, at)
    if isinstance(old, GrantSpec) and isinstance(new, GrantSpec):
        return _edit_grant(desired, old, new, recorded, own, at)
    return (_amend(desired, own, at, (), None),)  # an EntitlementReset: a new generation only


def _amend(
    desired: Resource,
    own: Own,
    at: datetime,
    changes: Iterable[Change],
    record: LedgerRecord | None,
) -> Amend:
    return Amend(desired.ref, own.id, desired.generation, at, desired.spec, tuple(changes), record)


_FIELD_NAMES = {
    "name": "name",
    "description": "description",
    "metadata": "metadata",
    "when_stale": "whenStale",
    "consistency": "consistency",
    "deletion_policy": "deletionPolicy",
    "config": "config",
    "subject_keys": "usageAttribution.subjectKeys",
    "issue_after_reset": "issueAfterReset",
    "issue_after_reset_priority": "issueAfterResetPriority",
    "is_soft_limit": "isSoftLimit",
    "preserve_overage_at_reset": "preserveOverageAtReset",
}


def _plain_changes(old: Spec, new: Spec, names: Iterable[str], at: datetime) -> list[Change]:
    """Return a Change from ``at`` for every listed field whose written value differs."""
    return [
        Change(f"spec.{_FIELD_NAMES[name]}", at, getattr(new, name))
        for name in names
        if getattr(old, name) != getattr(new, name)
    ]


def _edit_meter(
    desired: Resource, old: MeterSpec, spec: MeterSpec, own: Own, at: datetime
) -> tuple[Action, ...]:
    changes = _plain_changes(old, spec, ("name", "description"), at)
    before = old.group_by or {}
    changes.extend(
        Change(f"spec.groupBy.{key}", at, path)
        for key, path in (spec.group_by or {}).items()
        if key not in before
    )
    return (_amend(desired, own, at, changes, _meter_of(desired, spec)),)


def _edit_customer(
    desired: Resource,
    old: CustomerSpec,
    spec: CustomerSpec,
    recorded: Recorded,
    own: Own,
    at: datetime,
) -> tuple[Action, ...]:
    customer = _customer_of(desired, spec)
    absorbed = _check_customer_keys(desired.ref, customer, recorded, own.id)
    if isinstance(absorbed, Conflict):
        return (absorbed,)
    changes = _plain_changes(old, spec, ("name", "metadata", "subject_keys"), at)
    amend = _amend(desired, own, at, changes, customer)
    return (*_absorb(desired.ref, own.id, customer, absorbed, at), amend)


def _edit_entitlement(
    desired: Resource,
    old: EntitlementSpec,
    spec: EntitlementSpec,
    recorded: Recorded,
    own: Own,
    at: datetime,
) -> tuple[Action, ...]:
    entitlement = _own_entitlement(recorded, own)
    updated, changes = _edit_entitlement_timelines(entitlement, old, spec, at)
    changes.extend(_plain_changes(old, spec, ("metadata", "config", "deletion_policy"), at))
    updated = replace(updated, metadata=dict(spec.metadata or {}), config=spec.config)
    actions: list[Action] = [_amend(desired, own, at, changes, updated)]
    if spec.active_to is not None and old.active_to is None:
        end = _end_instant(entitlement, spec.active_to, at)
        if entitlement.active_to is None or end < entitlement.active_to:
            actions.append(End(desired.ref, own.id, end, spec.active_to))
    return tuple(actions)


def _edit_entitlement_timelines(
    entitlement: Entitlement, old: EntitlementSpec, new: EntitlementSpec, at: datetime
) -> tuple[Entitlement, list[Change]]:
    """Apply D4's timeline edits: interval and issueAfterReset from the next boundary,
    isSoftLimit from ``at``, preserveOverageAtReset for resets from ``at``."""
    changes: list[Change] = []
    metered = entitlement.type is EntitlementType.METERED and bool(entitlement.usage_period)
    if not metered and old.usage_period != new.usage_period:
        entitlement = _with_informational_period(entitlement, new, at)
        changes.append(Change("spec.usagePeriod", at, new.usage_period))
    if metered and new.usage_period is not None and old.usage_period != new.usage_period:
        interval = new.usage_period.interval.duration
        edited = edit_interval(entitlement, interval, at)
        if edited != entitlement:
            since = edited.usage_period[-1].start
            changes.append(Change("spec.usagePeriod.interval", since, interval))
        entitlement = edited
    issue = _issue_after_reset(new)
    if metered and issue != _issue_after_reset(old):
        entitlement = edit_issue_after_reset(entitlement, issue, at)
        since = next_reset_after(entitlement.usage_period, at)
        changes.append(Change("spec.issueAfterReset", since, issue))
    if bool(new.is_soft_limit) != bool(old.is_soft_limit):
        entitlement = edit_soft_limit(entitlement, bool(new.is_soft_limit), at)
        changes.append(Change("spec.isSoftLimit", at, bool(new.is_soft_limit)))
    if bool(new.preserve_overage_at_reset) != bool(old.preserve_overage_at_reset):
        value = bool(new.preserve_overage_at_reset)
        entitlement = edit_preserve_overage(entitlement, value, at)
        changes.append(Change("spec.preserveOverageAtReset", at, value))
    return entitlement, changes


def _with_informational_period(
    entitlement: Entitlement, spec: EntitlementSpec, at: datetime
) -> Entitlement:
    """Replace a static or boolean entitlement's usage period: it only informs (spec §4.1)."""
    if spec.usage_period is None:
        return replace(entitlement, usage_period=())
    old = entitlement.usage_period
    anchor = old[0].recurrence.anchor if old else (spec.usage_period.anchor or at)
    start = old[0].start if old else truncate_to_minute(at)
    timeline = new_usage_period(spec.usage_period.interval.duration, anchor, start)
    return replace(entitlement, usage_period=timeline)


def _edit_grant(
    desired: Resource,
    old: GrantSpec,
    spec: GrantSpec,
    recorded: Recorded,
    own: Own,
    at: datetime,
) -> tuple[Action, ...]:
    grant = _own_grant(recorded, own)
    changes = _plain_changes(old, spec, ("metadata", "deletion_policy"), at)
    updated = replace(grant, metadata=dict(spec.metadata or {}))
    actions: list[Action] = [_amend(desired, own, at, changes, updated)]
    if spec.void_at is not None and old.void_at is None:
        timeline = _timeline_of(recorded, grant.entitlement_id)
        void = effective_void_at(timeline, spec.void_at, at)
        if grant.void_at is None or void < grant.void_at:
            actions.append(Void(desired.ref, own.id, void, spec.void_at))
    return tuple(actions)


# --- looking up recorded records -------------------------------------------------------------


def _own_entitlement(recorded: Recorded, own: Own) -> Entitlement:
    for entitlement in recorded.entitlements:
        if entitlement.id == own.id:
            return entitlement
    raise ValueError(f"the recorded view lacks entitlement {own.id}: pass it in entitlements")


def _own_grant(recorded: Recorded, own: Own) -> Grant:
    for grant in recorded.grants:
        if grant.id == own.id:
            return grant
    raise ValueError(f"the recorded view lacks grant {own.id}: pass it in grants")


def _timeline_of(recorded: Recorded, entitlement_id: str) -> tuple[UsagePeriodEntry, ...]:
    for entitlement in recorded.entitlements:
        if entitlement.id == entitlement_id:
            return entitlement.usage_period
    return ()
