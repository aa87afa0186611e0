"""Plans and Subscriptions: a Subscription expanded into ledger entitlements, one per plan feature.

Role: the pure reconciliation of the two kinds ``reconcile`` routes here (issue 9, DESIGN D13).
A Plan is declared (its key unique per namespace) and its generations are kept with the instant
each was applied. A Subscription holds one ledger entitlement per feature of its plan, marked
with the subscription in its metadata (``subscription.id``, beside a copy of the
Subscription's own ``spec.metadata``, which an edit replaces from the rollout instant), anchored
at the subscription's start. Reconciling a Subscription compares, feature by feature, what its entitlements will hold
once every pending timeline entry is in force with what the plan says, and appends what differs:

- a kept feature keeps its entitlement (and so its usage and top-up Grants): interval and
  issueAfterReset change from the next period boundary (D4), isSoftLimit and
  preserveOverageAtReset from that boundary (NextPeriod) or the rollout instant (Immediately);
  under Immediately a raised issueAfterReset also adds a grant of the difference that ends
  with the current period (``Fund``);
- a dropped feature ends at the next boundary; a feature without a usage period changes (or
  ends) at the rollout instant under both policies; a changed type ends the entitlement and
  starts a new one there;
- an added feature starts at the rollout instant (Immediately, or without a usage period) or at
  its next period boundary (NextPeriod).

The rollout instant (D2) is the later of the Subscription's instant (creation; or the edit that
changed its planKey) and the instant the plan's current generation was applied. A deleted Plan
changes no subscriber: they keep what was applied and wait (``PlanNotFound``). An entitlement
that would overlap one already recorded for the same customer and feature (a hand-written
Entitlement or another subscription's) is not recorded (``EntitlementConflict``); nothing
recorded is ended for it. Recorded history is never rewritten: every change is a new timeline
entry, an end, or a new grant.

Must not: read the clock or a random source (ids are derived from the subscription, feature and
instant), log, or do I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal

from .model import (
    Entitlement,
    EntitlementType,
    Grant,
    IssueAfterReset,
    Recurrence,
)
from .periods import (
    current_period,
    edit_interval,
    edit_issue_after_reset,
    edit_preserve_overage,
    edit_soft_limit,
    next_after,
    next_reset_after,
)
from .reconcile import (
    _SUBSCRIPTION_NAME,
    T_IMPLIED,
    Action,
    Adopt,
    Amend,
    Change,
    Conflict,
    ConflictReason,
    Declare,
    End,
    Entitle,
    Fund,
    ImplyCustomer,
    Orphan,
    Own,
    Recorded,
    RecordedFeature,
    RecordedPlan,
    Refuse,
    Wait,
    WaitReason,
    _end_instant,
    _find_feature,
    _new_entitlement,
    _resolve_holder,
    _start_after_others,
    _with_informational_period,
)
from .resources import (
    DeletionPolicy,
    EntitlementSpec,
    Kind,
    PlanFeatureSpec,
    PlanSpec,
    Ref,
    Resource,
    RolloutPolicy,
    SubscriptionSpec,
    UsagePeriodSpec,
)
from .timeutil import truncate_to_minute
from .ulid import derived_ulid
from .validation import (
    KEY_PATTERN,
    ValidationError,
    check_entitlement_feature,
    check_resource,
)

__all__ = [
    "PLAN_KEY",
    "RAISE_ANNOTATION",
    "SUBSCRIPTION_ID",
    "SUBSCRIPTION_NAME",
    "check_plan",
    "check_subscription",
    "find_plan",
    "reconcile_plan_kind",
    "subscription_entitlements",
]

#: Entitlement metadata marking the subscription that holds it (its ledger id and name).
SUBSCRIPTION_ID = "subscription.id"
SUBSCRIPTION_NAME = _SUBSCRIPTION_NAME
#: Entitlement metadata naming the plan key last rolled out to it.
PLAN_KEY = "subscription.plan"
#: Grant annotation of the difference a raised issueAfterReset adds under Immediately.
RAISE_ANNOTATION = "subscription.issueAfterResetRaise"


def reconcile_plan_kind(
    desired: Resource, recorded: Recorded, now: datetime, new_id: str, *, force_orphan: bool
) -> tuple[Action, ...]:
    """Return the actions for a Plan or a Subscription (see the module docstring)."""
    if isinstance(desired.spec, PlanSpec):
        return _reconcile_plan(desired, desired.spec, recorded, now, new_id)
    if isinstance(desired.spec, SubscriptionSpec):
        return _reconcile_subscription(desired, desired.spec, recorded, now, new_id, force_orphan)
    raise TypeError(f"{desired.ref} is neither a Plan nor a Subscription")


# --- self-contained rules --------------------------------------------------------------------


def _template_spec(
    feature: PlanFeatureSpec, anchor: datetime | None = None, holder: str = "x"
) -> EntitlementSpec:
    """Return the Entitlement spec a plan feature stands for (``holder`` as its customer)."""
    period = None
    if feature.usage_period is not None:
        period = UsagePeriodSpec(feature.usage_period.interval, anchor)
    return EntitlementSpec(
        feature_key=feature.feature_key,
        type=feature.type,
        customer=holder,
        usage_period=period,
        issue_after_reset=feature.issue_after_reset,
        issue_after_reset_priority=feature.issue_after_reset_priority,
        is_soft_limit=feature.is_soft_limit,
        preserve_overage_at_reset=feature.preserve_overage_at_reset,
        config=feature.config,
    )


def check_plan(resource: Resource) -> tuple[ValidationError, ...]:
    """Return every self-contained rule a Plan breaks: its key, and each feature's template."""
    spec = resource.spec
    if not isinstance(spec, PlanSpec):
        return ()
    errors: list[ValidationError] = []
    key = resource.key or ""
    if not KEY_PATTERN.match(key) or len(key) > 64:
        fix = "set spec.key" if spec.key is None else "fix spec.key"
        errors.append(
            ValidationError(
                "spec.key",
                f"plan key {key!r} must match ^[a-z0-9]+(?:_[a-z0-9]+)*$ (at most 64 characters): "
                f"{fix}",
            )
        )
    seen: set[str] = set()
    for i, feature in enumerate(spec.features):
        path = f"spec.features[{i}]"
        if feature.feature_key in seen:
            errors.append(
                ValidationError(
                    f"{path}.featureKey",
                    f"feature {feature.feature_key} is listed twice: keep one template per feature",
                )
            )
        seen.add(feature.feature_key)
        probe = Resource(
            Ref(resource.ref.namespace, Kind.ENTITLEMENT, resource.ref.name),
            _template_spec(feature),
        )
        errors.extend(
            ValidationError(error.field.replace("spec.", f"{path}.", 1), error.message)
            for error in check_resource(probe)
        )
    return tuple(errors)


def check_subscription(resource: Resource) -> tuple[ValidationError, ...]:
    """Return every self-contained rule a Subscription breaks."""
    spec = resource.spec
    if not isinstance(spec, SubscriptionSpec):
        return ()
    errors: list[ValidationError] = []
    if (spec.customer is None) == (spec.subject is None):
        errors.append(ValidationError("spec.customer", "set exactly one of customer or subject"))
    for name, value in (("customer", spec.customer), ("subject", spec.subject)):
        if value is not None and not 1 <= len(value) <= 256:
            errors.append(ValidationError(f"spec.{name}", f"{name} must be 1 to 256 characters"))
    if not KEY_PATTERN.match(spec.plan_key) or len(spec.plan_key) > 64:
        errors.append(
            ValidationError(
                "spec.planKey",
                "planKey must match ^[a-z0-9]+(?:_[a-z0-9]+)*$: name the key of a Plan",
            )
        )
    return tuple(errors)


def _immutable_differences(old: SubscriptionSpec, new: SubscriptionSpec) -> list[str]:
    return [
        field
        for field, before, after in (
            ("spec.customer", old.customer, new.customer),
            ("spec.subject", old.subject, new.subject),
            ("spec.activeFrom", old.active_from, new.active_from),
        )
        if before != after
    ]


# --- plans -----------------------------------------------------------------------------------


def find_plan(plans: Sequence[RecordedPlan], key: str) -> RecordedPlan | None:
    """Return the Plan with ``key`` whose object exists (a deleted Plan is no plan)."""
    return next((p for p in plans if p.key == key and not p.deleted), None)


def _reconcile_plan(
    desired: Resource, spec: PlanSpec, recorded: Recorded, now: datetime, new_id: str
) -> tuple[Action, ...]:
    ref, own = desired.ref, recorded.own
    if desired.deleted_at is not None:
        if own is None or own.deleted:
            return ()
        return (Orphan(ref, own.id, desired.deleted_at, DeletionPolicy.ORPHAN),)
    errors = check_plan(desired)
    if errors:
        return (Refuse(ref, errors),)
    key = desired.key or ""
    for other in recorded.plans:
        if other.key == key and other.name != ref.name and not other.deleted:
            return (
                Conflict(
                    ref,
                    ConflictReason.KEY,
                    f"Plan {ref.namespace}/{other.name} already has key {key}: keys are unique "
                    "per namespace; choose another key",
                    other.id,
                ),
            )
    created = desired.created_at if desired.created_at is not None else now
    if own is None:
        return (Declare(ref, new_id, desired.uid, desired.generation, created, spec),)
    old = own.spec
    old_key = old.key if isinstance(old, PlanSpec) else None
    if old_key != spec.key:
        message = (
            "key is immutable: create a new Plan with the other key and move Subscriptions to it"
        )
        if own.deleted or own.uid != desired.uid:
            return (Conflict(ref, ConflictReason.IDENTITY, message, own.id),)
        return (Refuse(ref, (ValidationError("spec.key", message),)),)
    if own.deleted or own.uid != desired.uid:
        adopt = Adopt(ref, own.id, desired.uid, desired.generation, created)
        if own.spec == spec:
            return (adopt,)
        return (adopt, Amend(ref, own.id, desired.generation, created, spec, (), None))
    if own.spec == spec and own.generation == desired.generation:
        return ()
    at = own.seen[1] if own.seen is not None and own.seen[0] == desired.generation else now
    return (Amend(ref, own.id, desired.generation, at, spec, (), None),)


# --- subscriptions ---------------------------------------------------------------------------


def subscription_entitlements(
    entitlements: Sequence[Entitlement], subscription_id: str
) -> tuple[Entitlement, ...]:
    """Return the entitlements a subscription holds (ended ones included), oldest first."""
    return tuple(
        sorted(
            (e for e in entitlements if e.metadata.get(SUBSCRIPTION_ID) == subscription_id),
            key=lambda e: (e.start, e.id),
        )
    )


def _reconcile_subscription(
    desired: Resource,
    spec: SubscriptionSpec,
    recorded: Recorded,
    now: datetime,
    new_id: str,
    force_orphan: bool,
) -> tuple[Action, ...]:
    ref, own = desired.ref, recorded.own
    if desired.deleted_at is not None:
        return _delete_subscription(desired, recorded, desired.deleted_at, force_orphan)
    errors = check_subscription(desired)
    if errors:
        return (Refuse(ref, errors),)
    created = desired.created_at if desired.created_at is not None else now
    if own is None:
        return _subscribe(desired, spec, recorded, None, created, created, new_id)
    old = own.spec
    if isinstance(old, SubscriptionSpec):
        differences = _immutable_differences(old, spec)
        if differences:
            fields = ", ".join(differences)
            if own.deleted or own.uid != desired.uid:
                return (
                    Conflict(
                        ref,
                        ConflictReason.IDENTITY,
                        f"{ref} was re-created with a different {fields} than its ledger record "
                        f"{own.id}: restore the recorded spec, or use another name",
                        own.id,
                    ),
                )
            return (
                Refuse(
                    ref,
                    tuple(
                        ValidationError(f, f"{f[5:]} is immutable: create a new Subscription")
                        for f in differences
                    ),
                ),
            )
    if own.deleted or own.uid != desired.uid:
        adopt = Adopt(ref, own.id, desired.uid, desired.generation, created)
        adopted = replace(own, uid=desired.uid, deleted=False, generation=desired.generation)
        rest = _subscribe(desired, spec, recorded, adopted, created, created, new_id)
        if rest and isinstance(rest[0], Wait | Conflict | Refuse):
            return rest
        return (adopt, *rest)
    if own.spec == spec and own.generation == desired.generation:
        return _subscribe(desired, spec, recorded, own, own.recorded_at, created, new_id)
    at = own.seen[1] if own.seen is not None and own.seen[0] == desired.generation else now
    return _subscribe(desired, spec, recorded, own, at, created, new_id)


def _delete_subscription(
    desired: Resource, recorded: Recorded, at: datetime, force_orphan: bool
) -> tuple[Action, ...]:
    """Orphan (default) keeps the entitlements; Apply ends the open ones at ``at`` (D3)."""
    own = recorded.own
    if own is None or own.deleted:
        return ()
    policy = DeletionPolicy.ORPHAN if force_orphan else desired.deletion_policy
    actions: list[Action] = []
    if policy is DeletionPolicy.APPLY:
        instant = truncate_to_minute(at)
        for entitlement in subscription_entitlements(recorded.entitlements, own.id):
            if entitlement.active_to is None or entitlement.active_to > instant:
                end = _end_instant(entitlement, at, at)
                if entitlement.active_to is None or end < entitlement.active_to:
                    actions.append(End(desired.ref, entitlement.id, end, at))
    actions.append(Orphan(desired.ref, own.id, at, policy))
    return tuple(actions)


@dataclass(frozen=True)
class _Rollout:
    """What a subscription's rollout works with."""

    ref: Ref
    subscription_id: str
    customer_key: str
    plan: RecordedPlan
    anchor: datetime
    at: datetime
    policy: RolloutPolicy
    first: bool  # the subscription's creation: everything starts at ``at``
    metadata: Mapping[str, str] = field(default_factory=dict)  # the Subscription's spec.metadata

    def marks(self) -> dict[str, str]:
        """Return an entitlement's metadata: the Subscription's, then its marks (which win)."""
        return {
            **self.metadata,
            SUBSCRIPTION_ID: self.subscription_id,
            SUBSCRIPTION_NAME: self.ref.name,
            PLAN_KEY: self.plan.key,
        }


def _subscribe(
    desired: Resource,
    spec: SubscriptionSpec,
    recorded: Recorded,
    own: Own | None,
    instant: datetime,
    created: datetime,
    new_id: str,
) -> tuple[Action, ...]:
    """Declare the subscription (when new), record its plan's changes and its rollout."""
    ref = desired.ref
    holder = _resolve_holder(ref, spec.customer, spec.subject, recorded)
    if isinstance(holder, Wait):
        return (holder,)
    plan = find_plan(recorded.plans, spec.plan_key)
    if plan is None:
        gone = any(p.key == spec.plan_key for p in recorded.plans)
        keeps = (
            "; its entitlements stay as last applied" if own is not None else ""
        )  # D3: deleting a Plan changes no subscriber
        what = "was deleted" if gone else "was not found"
        return (
            Wait(
                ref,
                WaitReason.PLAN_NOT_FOUND,
                f"plan {spec.plan_key} {what} in namespace {ref.namespace}{keeps}: create a Plan "
                "with that key, or point spec.planKey at another plan",
            ),
        )
    features: dict[str, RecordedFeature] = {}
    for template in plan.spec.features:
        feature = _find_feature(recorded, template.feature_key)
        if feature is None:
            return (
                Wait(
                    ref,
                    WaitReason.FEATURE_NOT_FOUND,
                    f"feature not found: {template.feature_key} (in plan {plan.key}): create a "
                    f"Feature with that key in namespace {ref.namespace}",
                ),
            )
        errors = check_entitlement_feature(
            _template_spec(template), feature.id, feature.feature.meter_slug
        )
        if errors:
            return (Refuse(ref, errors),)
        features[template.feature_key] = feature
    actions: list[Action] = []
    if own is None:
        references = [created, plan.created_at, *(f.created_at for f in features.values())]
        if holder.created_at is not None:
            references.append(holder.created_at)
        at = max(references)
        subscription_id = new_id
        actions.append(Declare(ref, new_id, desired.uid, desired.generation, at, spec))
        anchor = truncate_to_minute(spec.active_from or at)
    else:
        at = max(instant, plan.applied_at)
        subscription_id = own.id
        if own.spec != spec or own.generation != desired.generation:
            actions.append(Amend(ref, own.id, desired.generation, instant, spec, (), None))
        anchor = truncate_to_minute(spec.active_from or own.created_at)
    if holder.implied is not None:
        implied_id = derived_ulid(T_IMPLIED, f"{ref.namespace}/customer/{holder.key}")
        actions.append(ImplyCustomer(ref.namespace, implied_id, at, holder.implied))
    rollout = _Rollout(
        ref,
        subscription_id,
        holder.key,
        plan,
        anchor,
        at,
        plan.spec.effective_rollout_policy,
        own is None,
        dict(spec.metadata or {}),
    )
    actions.extend(_roll_out(rollout, recorded))
    return tuple(actions)


def _boundary(entitlement: Entitlement, at: datetime) -> datetime:
    """Return when a change that waits for the next period takes effect for ``entitlement``:
    its next usage-period boundary, or ``at`` itself for one without a (metered) period."""
    if entitlement.type is EntitlementType.METERED and entitlement.usage_period:
        return next_reset_after(entitlement.usage_period, at)
    return truncate_to_minute(at)


def _roll_out(rollout: _Rollout, recorded: Recorded) -> list[Action]:
    """Return the actions that make the subscription's entitlements follow its plan."""
    held = subscription_entitlements(recorded.entitlements, rollout.subscription_id)
    open_by_feature = {e.feature_key: e for e in held if e.active_to is None}
    templates = {t.feature_key: t for t in rollout.plan.spec.features}
    entitlements = list(recorded.entitlements)
    actions: list[Action] = []
    conflicts: list[Conflict] = []

    def end(entitlement: Entitlement, at: datetime) -> None:
        at = max(at, entitlement.start)
        actions.append(End(rollout.ref, entitlement.id, at, at))
        ended = replace(entitlement, active_to=at)
        entitlements[:] = [ended if e.id == entitlement.id else e for e in entitlements]

    for key, entitlement in sorted(open_by_feature.items()):
        template = templates.get(key)
        if template is None or template.type is not entitlement.type:
            end(entitlement, _boundary(entitlement, rollout.at))
        else:
            actions.extend(_amend(rollout, entitlement, template, recorded.grants))
    for template in rollout.plan.spec.features:
        current = open_by_feature.get(template.feature_key)
        if current is not None and current.type is template.type:
            continue
        start = _start_of_new(rollout, template)
        if current is not None:  # a changed type: the new one starts where the old one ends
            start = max(start, _boundary(current, rollout.at))
        created = _create(rollout, template, entitlements, start)
        if isinstance(created, Conflict):
            conflicts.append(created)
            continue
        actions.append(Entitle(rollout.ref, created))
        entitlements.append(created)
    return [*actions, *conflicts[:1]]


def _start_of_new(rollout: _Rollout, template: PlanFeatureSpec) -> datetime:
    """Return when an added feature starts: at the rollout instant, or (NextPeriod, metered) at
    its next period boundary, periods being anchored at the subscription's start."""
    at = truncate_to_minute(rollout.at)
    if rollout.first or rollout.policy is RolloutPolicy.IMMEDIATELY:
        return at
    if template.type is not EntitlementType.METERED or template.usage_period is None:
        return at
    recurrence = Recurrence(template.usage_period.interval.duration, rollout.anchor)
    return next_after(recurrence, at, inclusive=True)


def _create(
    rollout: _Rollout,
    template: PlanFeatureSpec,
    entitlements: Sequence[Entitlement],
    start: datetime,
) -> Entitlement | Conflict:
    """Build the ledger entitlement of ``template`` starting at ``start`` (or after an ending
    entitlement it would overlap); a conflict when an open one holds the customer and feature."""
    spec = _template_spec(template, rollout.anchor, rollout.customer_key)
    spec = replace(spec, metadata=rollout.marks())
    after = _start_after_others(entitlements, rollout.customer_key, spec, start)
    if isinstance(after, Entitlement):
        return Conflict(
            rollout.ref,
            ConflictReason.ENTITLEMENT,
            f"entitlement with id {after.id} already exists for feature {template.feature_key} "
            f"and customer {rollout.customer_key} ({_holder_name(after)}): this subscription's "
            f"entitlement to {template.feature_key} is not recorded; set activeTo on the other "
            "one, and this one starts when it ends",
            after.id,
        )
    acting = truncate_to_minute(rollout.at)
    if after > acting or rollout.anchor > acting:
        spec = replace(spec, active_from=max(after, rollout.anchor))
    name = f"{rollout.ref.name}/{template.feature_key}"
    earlier = sum(
        1
        for e in entitlements
        if e.metadata.get(SUBSCRIPTION_ID) == rollout.subscription_id
        and e.feature_key == template.feature_key
    )
    if earlier:  # a feature dropped and added again: a new entitlement, a new name
        name = f"{name}-{earlier + 1}"
    entitlement_id = derived_ulid(
        max(after, acting), f"{rollout.subscription_id}/{template.feature_key}/{after.isoformat()}"
    )
    probe = Resource(Ref(rollout.ref.namespace, Kind.ENTITLEMENT, name), spec)
    return _new_entitlement(probe, spec, rollout.customer_key, acting, entitlement_id)


def _holder_name(entitlement: Entitlement) -> str:
    subscription = entitlement.metadata.get(SUBSCRIPTION_NAME)
    if subscription is not None:
        return f"Subscription {entitlement.namespace}/{subscription}"
    return f"Entitlement {entitlement.namespace}/{entitlement.name}"


def _issue(template: PlanFeatureSpec) -> IssueAfterReset | None:
    if template.issue_after_reset is None or template.issue_after_reset <= 0:
        return None
    return IssueAfterReset(template.issue_after_reset, template.issue_after_reset_priority or 1)


def _in_force(entitlement: Entitlement, at: datetime) -> Decimal:
    """Return the issueAfterReset amount in force at ``at`` (0 when none)."""
    amount = Decimal(0)
    for version in entitlement.issue_after_reset:
        if version.since <= at:
            amount = version.value.amount if version.value is not None else Decimal(0)
    return amount


def _amend(
    rollout: _Rollout,
    entitlement: Entitlement,
    template: PlanFeatureSpec,
    grants: Sequence[Grant],
) -> list[Action]:
    """Append to a kept feature's entitlement what its template changes (module docstring)."""
    at = rollout.at
    updated, changes = entitlement, []
    metered = entitlement.type is EntitlementType.METERED and bool(entitlement.usage_period)
    boundary = _boundary(entitlement, at)
    since = at if rollout.policy is RolloutPolicy.IMMEDIATELY or not metered else boundary
    actions: list[Action] = []
    if metered and template.usage_period is not None:
        interval = template.usage_period.interval.duration
        if updated.usage_period[-1].recurrence.interval != interval:
            updated = edit_interval(updated, interval, at)
            changes.append(Change("spec.usagePeriod.interval", boundary, interval))
    elif not metered:
        written = _template_spec(template, rollout.anchor, rollout.customer_key)
        shown = updated.usage_period[-1].recurrence.interval if updated.usage_period else None
        wanted = template.usage_period.interval.duration if template.usage_period else None
        if shown != wanted:
            updated = _with_informational_period(updated, written, at)
            changes.append(Change("spec.usagePeriod", at, template.usage_period))
        if updated.config != template.config:
            updated = replace(updated, config=template.config)
            changes.append(Change("spec.config", at, template.config))
    if metered:
        issue = _issue(template)
        tail_issue = updated.issue_after_reset[-1].value if updated.issue_after_reset else None
        if issue != tail_issue:
            if rollout.policy is RolloutPolicy.IMMEDIATELY and issue is not None:
                grant = _raise(rollout, updated, issue, grants)
                if grant is not None:
                    actions.append(Fund(rollout.ref, grant))
            updated = edit_issue_after_reset(updated, issue, at)
            changes.append(Change("spec.issueAfterReset", boundary, issue))
        soft = bool(template.is_soft_limit)
        if (updated.is_soft_limit[-1].value if updated.is_soft_limit else False) != soft:
            updated = edit_soft_limit(updated, soft, since)
            changes.append(Change("spec.isSoftLimit", since, soft))
        preserve = bool(template.preserve_overage_at_reset)
        preserving = (
            updated.preserve_overage_at_reset[-1].value
            if updated.preserve_overage_at_reset
            else False
        )
        if preserving != preserve:
            updated = edit_preserve_overage(updated, preserve, since)
            changes.append(Change("spec.preserveOverageAtReset", since, preserve))
    marks = rollout.marks()
    if marks != dict(updated.metadata):
        updated = replace(updated, metadata=marks)
        changes.append(Change("metadata", at, marks))
    if changes:
        actions.insert(0, Entitle(rollout.ref, updated, tuple(changes)))
    return actions


def _raise(
    rollout: _Rollout, entitlement: Entitlement, issue: IssueAfterReset, grants: Sequence[Grant]
) -> Grant | None:
    """Return the grant a raised issueAfterReset adds at once (Immediately): the new amount less
    what the current period already has (the amount in force and earlier raises), ending with
    the period. Never negative: a lowered amount waits for the boundary."""
    at = truncate_to_minute(rollout.at)
    if entitlement.measure_usage_from is None or at < entitlement.measure_usage_from:
        return None
    period = current_period(entitlement.usage_period, at)
    raised = sum(
        (
            g.amount
            for g in grants
            if g.entitlement_id == entitlement.id
            and g.annotations.get(RAISE_ANNOTATION)
            and period.start <= g.effective_at < period.end
        ),
        Decimal(0),
    )
    difference = issue.amount - _in_force(entitlement, at) - raised
    if difference <= 0:
        return None
    stamp = at.strftime("%Y%m%dT%H%MZ")
    return Grant(
        id=derived_ulid(at, f"{entitlement.id}/issueAfterResetRaise/{at.isoformat()}"),
        namespace=entitlement.namespace,
        name=f"{entitlement.name}/raise-{stamp}",
        entitlement_id=entitlement.id,
        amount=difference,
        effective_at=at,
        created_at=at,
        priority=issue.priority,
        min_rollover_amount=Decimal(0),
        max_rollover_amount=Decimal(0),
        void_at=period.end,
        metadata={SUBSCRIPTION_NAME: rollout.ref.name, PLAN_KEY: rollout.plan.key},
        annotations={RAISE_ANNOTATION: "true", SUBSCRIPTION_ID: rollout.subscription_id},
    )
