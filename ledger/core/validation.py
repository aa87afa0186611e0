"""Validation: every rule a resource must satisfy, shared by the operator, webhooks and ``validate``.

Role: pure checks returning ``ValidationError`` values (a field and a message that names the field
and the fix, in OpenMeter's words where it has some; spec §2.1, §3, §4, §7.1, §10.2, §11). Three
groups:

- *self-contained* rules over one resource (``check_resource``): what the CRD schema and CEL also
  enforce, checked again so that ``dev`` and ``validate`` need no apiserver;
- *transition* rules between the last applied spec and a new one (``check_change``): DESIGN D4's
  immutable and set-once fields, with the CEL messages; ``identity_of`` is the part D1 compares
  when a deleted object is re-created;
- *context* rules that need other records or the instant of the action (D2): a feature's meter,
  a metered entitlement's feature, a grant's entitlement and current usage period, a reset's
  entitlement. Whether a reset or void *waits*, is a no-op or is clamped is decided in
  ``reconcile`` (with ``periods``), not here.

Must not: read the clock, log, do I/O, or decide what the ledger does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from .model import Aggregation, CalendarDuration, EntitlementType
from .resources import (
    CustomerSpec,
    DeletionPolicy,
    EntitlementResetSpec,
    EntitlementSpec,
    FeatureSpec,
    GrantSpec,
    MeterSpec,
    Resource,
    Spec,
    Target,
)
from .timeutil import format_rfc3339
from .ulid import is_ulid

__all__ = [
    "FEATURE_AGGREGATIONS",
    "KEY_PATTERN",
    "ValidationError",
    "check_change",
    "check_entitlement_feature",
    "check_feature_meter",
    "check_grant_effective_at",
    "check_grant_entitlement",
    "check_reset_entitlement",
    "check_resource",
    "identity_of",
    "is_at_least_one_hour",
    "reset_before_period",
    "warn_on_removal",
]

KEY_PATTERN = re.compile(r"^[a-z0-9]+(?:_[a-z0-9]+)*$")
_GROUP_BY_KEY = re.compile(r"^[A-Za-z0-9_]+$")
FEATURE_AGGREGATIONS = ("SUM", "COUNT", "UNIQUE_COUNT", "LATEST")
_KEY_MAX = 64
_TEXT_MAX = 256
_SUBJECT_KEYS_MAX = 100
_PRIORITY_MAX = 255
_EXPIRATION_COUNT_MAX = 1000
_BOOLEAN_INPUTS = "invalid entitlement value for type boolean: Invalid inputs for type"


class ValidationError(Exception):
    """A rule a resource breaks: ``field`` is its JSON path, ``message`` says what to do.

    Two errors are equal when field and message are, so they can be compared and tabled.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ValidationError):
            return NotImplemented
        return (self.field, self.message) == (other.field, other.message)

    def __hash__(self) -> int:
        return hash((self.field, self.message))

    def __repr__(self) -> str:
        return f"ValidationError({self.field!r}, {self.message!r})"


Errors = list[ValidationError]


def is_at_least_one_hour(duration: CalendarDuration) -> bool:
    """Tell whether an interval is at least one hour (spec §4.3), counting calendar parts as long."""
    if duration.years or duration.months or duration.weeks or duration.days:
        return True
    return 3600 * duration.hours + 60 * duration.minutes + duration.seconds >= 3600


# --- self-contained rules --------------------------------------------------------------------


def check_resource(resource: Resource) -> tuple[ValidationError, ...]:
    """Return every self-contained rule ``resource`` breaks (empty when it is valid)."""
    spec = resource.spec
    errors: Errors = []
    if isinstance(spec, MeterSpec):
        _check_meter(resource, spec, errors)
    elif isinstance(spec, FeatureSpec):
        _check_feature(resource, spec, errors)
    elif isinstance(spec, CustomerSpec):
        _check_customer(resource, spec, errors)
    elif isinstance(spec, EntitlementSpec):
        _check_entitlement(spec, errors)
    elif isinstance(spec, GrantSpec):
        _check_grant(spec, errors)
    elif isinstance(spec, EntitlementResetSpec):
        _check_target(spec.target, errors)
    return tuple(errors)


def _check_key(value: str, field: str, what: str, derived: bool, errors: Errors) -> None:
    fix = (
        f"set {field} explicitly, since the default (metadata.name with '-' turned into '_') "
        "does not match"
        if derived
        else f"change {field}"
    )
    if not value or len(value) > _KEY_MAX or not KEY_PATTERN.match(value):
        errors.append(
            ValidationError(
                field,
                f"{what} {value!r} must be 1 to 64 lowercase letters and digits in groups joined "
                f"by single '_' (^[a-z0-9]+(?:_[a-z0-9]+)*$): {fix}",
            )
        )


def _check_meter(resource: Resource, spec: MeterSpec, errors: Errors) -> None:
    _check_key(resource.key or "", "spec.slug", "slug", spec.slug is None, errors)
    if not spec.event_type:
        errors.append(ValidationError("spec.eventType", "eventType must not be empty"))
    value_property = spec.value_property
    if spec.aggregation is Aggregation.COUNT:
        if value_property is not None:
            errors.append(
                ValidationError(
                    "spec.valueProperty",
                    "meter value property is not allowed when the aggregation is count: "
                    "remove valueProperty, or choose SUM, UNIQUE_COUNT or LATEST",
                )
            )
    elif value_property is None:
        errors.append(
            ValidationError(
                "spec.valueProperty",
                "meter value property is required when the aggregation is not count: set "
                "valueProperty to a JSONPath such as $.tokens",
            )
        )
    elif not value_property.startswith("$"):
        errors.append(
            ValidationError(
                "spec.valueProperty",
                f"meter value property must start with $: {value_property!r} is not a JSONPath "
                "such as $.tokens",
            )
        )
    for key, path in (spec.group_by or {}).items():
        _check_group_by(key, path, value_property, errors)


def _check_group_by(key: str, path: str, value_property: str | None, errors: Errors) -> None:
    field = f"spec.groupBy.{key}"
    if not _GROUP_BY_KEY.match(key):
        errors.append(
            ValidationError(
                field, f"meter group by key {key!r} must be letters, digits or '_': rename it"
            )
        )
    if not path.startswith("$"):
        errors.append(
            ValidationError(
                field, f"meter group by value {path!r} must start with $: use a JSONPath"
            )
        )
    elif path == value_property:
        errors.append(
            ValidationError(
                field,
                f"meter group by value {path!r} must not equal valueProperty: group by another "
                "property",
            )
        )


def _check_feature(resource: Resource, spec: FeatureSpec, errors: Errors) -> None:
    key = resource.key or ""
    _check_key(key, "spec.key", "key", spec.key is None, errors)
    if is_ulid(key):
        errors.append(
            ValidationError(
                "spec.key", "Feature key cannot be a valid ULID: choose a key that is not one"
            )
        )
    if spec.meter_slug is not None:
        _check_key(spec.meter_slug, "spec.meterSlug", "meterSlug", False, errors)
    if spec.meter_group_by_filters is not None and spec.meter_slug is None:
        errors.append(
            ValidationError(
                "spec.meterGroupByFilters",
                "meterGroupByFilters needs meterSlug: set meterSlug to the meter they filter, or "
                "remove meterGroupByFilters",
            )
        )


def _check_customer(resource: Resource, spec: CustomerSpec, errors: Errors) -> None:
    key = resource.key or ""
    if not key or len(key) > _TEXT_MAX:
        errors.append(ValidationError("spec.key", "key must be 1 to 256 characters"))
    subject_keys = spec.subject_keys or ()
    if len(subject_keys) > _SUBJECT_KEYS_MAX:
        errors.append(
            ValidationError(
                "spec.usageAttribution.subjectKeys", "at most 100 subject keys: remove some"
            )
        )
    seen: set[str] = set()
    for i, subject in enumerate(subject_keys):
        field = f"spec.usageAttribution.subjectKeys[{i}]"
        if not subject or len(subject) > _TEXT_MAX:
            errors.append(ValidationError(field, "a subject key must be 1 to 256 characters"))
        if subject in seen:
            errors.append(
                ValidationError(field, f"subject key {subject!r} is listed twice: keep one")
            )
        seen.add(subject)


_METERED_ONLY = (
    ("issueAfterReset", "issue_after_reset"),
    ("issueAfterResetPriority", "issue_after_reset_priority"),
    ("isSoftLimit", "is_soft_limit"),
    ("preserveOverageAtReset", "preserve_overage_at_reset"),
    ("measureUsageFrom", "measure_usage_from"),
)


def _check_holder(customer: str | None, subject: str | None, errors: Errors) -> None:
    for name, value in (("customer", customer), ("subject", subject)):
        if value is not None and not 1 <= len(value) <= _TEXT_MAX:
            errors.append(ValidationError(f"spec.{name}", f"{name} must be 1 to 256 characters"))


def _check_entitlement(spec: EntitlementSpec, errors: Errors) -> None:
    if (spec.customer is None) == (spec.subject is None):
        errors.append(ValidationError("spec.customer", "set exactly one of customer or subject"))
    _check_holder(spec.customer, spec.subject, errors)
    _check_key(spec.feature_key, "spec.featureKey", "featureKey", False, errors)
    if spec.type is EntitlementType.METERED:
        _check_metered(spec, errors)
    else:
        _check_unmetered(spec, errors)
    if spec.usage_period is not None and not is_at_least_one_hour(
        spec.usage_period.interval.duration
    ):
        errors.append(
            ValidationError(
                "spec.usagePeriod.interval",
                "UsagePeriod must be at least 1 hour: use DAY, WEEK, MONTH, YEAR or an ISO-8601 "
                "duration such as PT1H or P1M",
            )
        )
    if (
        spec.active_from is not None
        and spec.active_to is not None
        and spec.active_to < spec.active_from
    ):
        errors.append(ValidationError("spec.activeTo", "activeTo must not be before activeFrom"))


def _check_metered(spec: EntitlementSpec, errors: Errors) -> None:
    if spec.usage_period is None:
        errors.append(
            ValidationError(
                "spec.usagePeriod",
                "UsagePeriod is required for metered entitlements: set usagePeriod.interval "
                "(for example MONTH)",
            )
        )
    if spec.config is not None:
        errors.append(
            ValidationError(
                "spec.config",
                "invalid entitlement value for type metered: Config is not allowed for metered "
                "entitlements: remove config, or use type static",
            )
        )
    if spec.issue_after_reset_priority is not None and spec.issue_after_reset is None:
        errors.append(
            ValidationError(
                "spec.issueAfterResetPriority",
                "invalid entitlement value for type metered: IssueAfterResetPriority requires "
                "IssueAfterReset: set issueAfterReset, or remove issueAfterResetPriority",
            )
        )
    if spec.issue_after_reset is not None and spec.issue_after_reset < 0:
        errors.append(
            ValidationError("spec.issueAfterReset", "issueAfterReset must not be negative")
        )
    priority = spec.issue_after_reset_priority
    if priority is not None and not 1 <= priority <= _PRIORITY_MAX:
        errors.append(
            ValidationError(
                "spec.issueAfterResetPriority", "issueAfterResetPriority must be 1 to 255"
            )
        )


def _check_unmetered(spec: EntitlementSpec, errors: Errors) -> None:
    present = [name for name, attr in _METERED_ONLY if getattr(spec, attr) is not None]
    if spec.type is EntitlementType.BOOLEAN:
        if spec.config is not None:
            present.insert(0, "config")
        for name in present:
            errors.append(ValidationError(f"spec.{name}", f"{_BOOLEAN_INPUTS}: remove {name}"))
        return
    if spec.config is None:
        errors.append(
            ValidationError(
                "spec.config",
                "config is required for static entitlements: set config to a JSON object",
            )
        )
    for name in present:
        errors.append(
            ValidationError(
                f"spec.{name}",
                f"{name} is only allowed for metered entitlements: remove it, or use type metered",
            )
        )


def _check_target(target: Target, errors: Errors) -> None:
    _check_holder(target.customer, target.subject, errors)
    by_customer = target.customer is not None or target.subject is not None
    if (target.entitlement is not None) == by_customer:
        errors.append(
            ValidationError(
                "spec.entitlement",
                "set exactly one of entitlement, or customer (or subject) with featureKey",
            )
        )
    if target.customer is not None and target.subject is not None:
        errors.append(ValidationError("spec.subject", "set customer or subject, not both"))
    if (target.entitlement is not None) == (target.feature_key is not None):
        errors.append(
            ValidationError(
                "spec.featureKey",
                "featureKey goes with customer or subject: set it with them, or remove it when "
                "entitlement names the Entitlement",
            )
        )
    if target.feature_key is not None:
        _check_key(target.feature_key, "spec.featureKey", "featureKey", False, errors)


def _check_grant(spec: GrantSpec, errors: Errors) -> None:
    _check_target(spec.target, errors)
    if spec.amount <= 0:
        errors.append(
            ValidationError(
                "spec.amount", "amount must be positive: to take an amount back, set voidAt"
            )
        )
    if spec.priority is not None and not 0 <= spec.priority <= _PRIORITY_MAX:
        errors.append(ValidationError("spec.priority", "priority must be 0 to 255"))
    if spec.expiration is not None and not 1 <= spec.expiration.count <= _EXPIRATION_COUNT_MAX:
        errors.append(
            ValidationError("spec.expiration.count", "expiration count must be 1 to 1000")
        )
    for name, value in (
        ("minRolloverAmount", spec.min_rollover_amount),
        ("maxRolloverAmount", spec.max_rollover_amount),
    ):
        if value is not None and value < 0:
            errors.append(ValidationError(f"spec.{name}", f"{name} must not be negative"))
    cap = spec.max_rollover_amount if spec.max_rollover_amount is not None else spec.amount
    if spec.min_rollover_amount is not None and spec.min_rollover_amount > cap:
        errors.append(
            ValidationError(
                "spec.minRolloverAmount",
                "minRolloverAmount must not exceed maxRolloverAmount (which defaults to amount): "
                "lower minRolloverAmount or raise maxRolloverAmount",
            )
        )
    if spec.recurrence is not None and not is_at_least_one_hour(spec.recurrence.interval.duration):
        errors.append(
            ValidationError(
                "spec.recurrence.interval",
                "interval must be at least 1 hour: use DAY, WEEK, MONTH, YEAR or an ISO-8601 "
                "duration such as PT1H or P1M",
            )
        )


# --- transitions (D4) and identity (D1) ------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    """One immutable (or set-once) field: its path, how to read it, and what to do instead."""

    field: str
    read: Callable[[Spec], object]
    message: str
    set_once: bool = False


def _attr(name: str) -> Callable[[Spec], object]:
    return lambda spec: getattr(spec, name)


def _target_attr(name: str) -> Callable[[Spec], object]:
    return lambda spec: getattr(getattr(spec, "target"), name)  # noqa: B009


def _anchor(spec: Spec) -> object:
    period = getattr(spec, "usage_period", None)
    return None if period is None else period.anchor


def _group_by(spec: Spec) -> object:
    return getattr(spec, "group_by", None)


_VOID_GRANT = "void this Grant (set voidAt) and create a new one"
_END_ENTITLEMENT = "set activeTo to end this Entitlement and create a new one"

_RULES: dict[type, tuple[_Rule, ...]] = {
    MeterSpec: (
        _Rule("spec.slug", _attr("slug"),
              "slug is immutable: create a new Meter with the new slug and point Features at it"),
        _Rule("spec.eventType", _attr("event_type"),
              "eventType is immutable: create a new Meter for the new event type"),
        _Rule("spec.aggregation", _attr("aggregation"),
              "aggregation is immutable: create a new Meter with the new aggregation"),
        _Rule("spec.valueProperty", _attr("value_property"),
              "valueProperty is immutable: create a new Meter with the new valueProperty"),
    ),
    FeatureSpec: (
        _Rule("spec.key", _attr("key"), "key is immutable: create a new Feature with the new key"),
        _Rule("spec.meterSlug", _attr("meter_slug"),
              "meterSlug is immutable: create a new Feature with another key for the other meter"),
        _Rule("spec.meterGroupByFilters", _attr("meter_group_by_filters"),
              "meterGroupByFilters is immutable: create a new Feature with another key for the "
              "other filters"),
    ),
    CustomerSpec: (
        _Rule("spec.key", _attr("key"),
              "key is immutable: add the new string to usageAttribution.subjectKeys, or create a "
              "new Customer"),
    ),
    EntitlementSpec: (
        _Rule("spec.customer", _attr("customer"),
              "customer is immutable: set activeTo to end this Entitlement and create a new one "
              "for the other customer"),
        _Rule("spec.subject", _attr("subject"),
              "subject is immutable: set activeTo to end this Entitlement and create a new one "
              "for the other subject"),
        _Rule("spec.featureKey", _attr("feature_key"),
              "featureKey is immutable: set activeTo to end this Entitlement and create a new one "
              "for the other feature"),
        _Rule("spec.type", _attr("type"),
              "type is immutable: set activeTo to end this Entitlement and create a new one of "
              "the other type"),
        _Rule("spec.measureUsageFrom", _attr("measure_usage_from"),
              f"measureUsageFrom is immutable: {_END_ENTITLEMENT}"),
        _Rule("spec.usagePeriod.anchor", _anchor,
              "usagePeriod.anchor is immutable: apply an EntitlementReset to start a new period, "
              "or create a new Entitlement"),
        _Rule("spec.activeFrom", _attr("active_from"),
              "activeFrom can only be set at creation: create a new Entitlement with the new "
              "activeFrom"),
        _Rule("spec.activeTo", _attr("active_to"),
              "activeTo may be set once and then neither changed nor removed: create a new "
              "Entitlement to give access again", set_once=True),
    ),
    GrantSpec: (
        *(
            _Rule(f"spec.{name}", _target_attr(attr), f"{name} is immutable: {_VOID_GRANT}")
            for name, attr in (
                ("entitlement", "entitlement"),
                ("customer", "customer"),
                ("subject", "subject"),
                ("featureKey", "feature_key"),
            )
        ),
        *(
            _Rule(f"spec.{name}", _attr(attr), f"{name} is immutable: {_VOID_GRANT}")
            for name, attr in (
                ("amount", "amount"),
                ("priority", "priority"),
                ("effectiveAt", "effective_at"),
                ("expiration", "expiration"),
                ("minRolloverAmount", "min_rollover_amount"),
                ("maxRolloverAmount", "max_rollover_amount"),
                ("recurrence", "recurrence"),
            )
        ),
        _Rule("spec.voidAt", _attr("void_at"),
              "voidAt may be set once and then neither changed nor removed: create a new Grant "
              "to give the amount again", set_once=True),
    ),
    EntitlementResetSpec: (
        _Rule("spec", lambda spec: spec,
              "an EntitlementReset is immutable: create a new EntitlementReset for another reset"),
    ),
}  # fmt: skip


def check_change(old: Spec, new: Spec) -> tuple[ValidationError, ...]:
    """Return the D4 rules an edit from ``old`` to ``new`` breaks (the CRD's CEL transitions).

    Immutable fields compare as written, so adding or removing an explicit default is a change.
    A Meter's existing groupBy keys may not change; new keys may be added.
    """
    if type(old) is not type(new):
        return (ValidationError("kind", "the kind of an object cannot change"),)
    errors: Errors = []
    for rule in _RULES[type(old)]:
        before, after = rule.read(old), rule.read(new)
        if rule.set_once and before is None:
            continue
        if before != after:
            errors.append(ValidationError(rule.field, rule.message))
    if isinstance(old, MeterSpec):
        _check_group_by_kept(old, new, errors)
    return tuple(errors)


def _check_group_by_kept(old: MeterSpec, new: Spec, errors: Errors) -> None:
    before = old.group_by or {}
    after: Mapping[str, str] = _group_by(new) or {}  # type: ignore[assignment]
    for key, path in before.items():
        if after.get(key) != path:
            errors.append(
                ValidationError(
                    f"spec.groupBy.{key}",
                    "existing groupBy keys are immutable: keep them as they are and add new keys, "
                    "or create a new Meter",
                )
            )


def identity_of(spec: Spec) -> tuple[object, ...]:
    """Return what D1 compares when a deleted object is re-created: the immutable fields as written.

    Set-once fields (activeTo, voidAt) are not part of it: ``check_change`` refuses a re-created
    object that drops or moves one already recorded.
    """
    parts: list[object] = [type(spec).__name__]
    parts.extend(rule.read(spec) for rule in _RULES[type(spec)] if not rule.set_once)
    if isinstance(spec, MeterSpec):
        parts.append(tuple(sorted((spec.group_by or {}).items())))
    return tuple(parts)


# --- rules that need context -----------------------------------------------------------------


def check_feature_meter(
    feature: FeatureSpec, meter_slug: str, aggregation: str, group_by_keys: Iterable[str]
) -> tuple[ValidationError, ...]:
    """Check a feature against its meter: usable aggregation, filters on its group-by keys."""
    errors: Errors = []
    if aggregation not in FEATURE_AGGREGATIONS:
        errors.append(
            ValidationError(
                "spec.meterSlug",
                f"meter {meter_slug}'s aggregation is {aggregation} but features can only be "
                f"created for {', '.join(FEATURE_AGGREGATIONS)}: use another meter",
            )
        )
    columns = sorted(group_by_keys)
    filters = feature.meter_group_by_filters or {}
    unknown = sorted(k for k in filters if k not in columns)
    if unknown:
        errors.append(
            ValidationError(
                "spec.meterGroupByFilters",
                f"invalid filters for feature: {', '.join(unknown)}, available columns: "
                f"{', '.join(columns) or '(none)'}: filter on a groupBy key of meter {meter_slug}",
            )
        )
    return tuple(errors)


def check_entitlement_feature(
    entitlement: EntitlementSpec, feature_id: str, meter_slug: str | None
) -> tuple[ValidationError, ...]:
    """Check that a metered entitlement's feature has a meter (spec §3)."""
    if entitlement.type is EntitlementType.METERED and meter_slug is None:
        return (
            ValidationError(
                "spec.featureKey",
                f"invalid feature {feature_id}: Feature has no meter: use type static or "
                f"boolean, or a feature with a meterSlug",
            ),
        )
    return ()


def _target_field(target: Target) -> str:
    return "spec.entitlement" if target.entitlement is not None else "spec.featureKey"


def check_grant_entitlement(
    grant: GrantSpec, entitlement_type: EntitlementType
) -> tuple[ValidationError, ...]:
    """Check that a grant funds a metered entitlement."""
    if entitlement_type is not EntitlementType.METERED:
        return (
            ValidationError(
                _target_field(grant.target),
                f"grants are only supported for metered entitlements, not "
                f"{entitlement_type.value}: point the Grant at a metered Entitlement",
            ),
        )
    return ()


def check_grant_effective_at(
    effective_at: datetime, period_start: datetime
) -> tuple[ValidationError, ...]:
    """Check a grant's effectiveAt against the usage period current at its instant (§7.1)."""
    if effective_at < period_start:
        return (
            ValidationError(
                "spec.effectiveAt",
                f"grant effective date {format_rfc3339(effective_at)} is before the current "
                f"usage period {format_rfc3339(period_start)}: set effectiveAt at or after "
                "the period start, or omit it",
            ),
        )
    return ()


def check_reset_entitlement(
    reset: EntitlementResetSpec, entitlement_type: EntitlementType
) -> tuple[ValidationError, ...]:
    """Check that a reset applies to a metered entitlement."""
    if entitlement_type is not EntitlementType.METERED:
        return (
            ValidationError(
                _target_field(reset.target),
                f"only metered entitlements have usage to reset, not {entitlement_type.value}: "
                "point the EntitlementReset at a metered Entitlement",
            ),
        )
    return ()


def reset_before_period(at: datetime, period_start: datetime) -> ValidationError:
    """Return the refusal of a reset before the usage period current at its instant (§10.2)."""
    return ValidationError(
        "spec.effectiveAt",
        f"reset at {format_rfc3339(at)} is before current usage period start "
        f"{format_rfc3339(period_start)}: set effectiveAt within the current period, or omit it",
    )


def warn_on_removal(resource: Resource) -> str | None:
    """Return the D3 warning for removing ``resource`` from Git or the cluster, if it needs one.

    Deleting an Entitlement or Grant with deletionPolicy Orphan (the default) keeps it active in
    the ledger unless its spec already ends it (activeTo, voidAt); ``validate``, ``plan`` and the
    webhooks say so, since a reviewer reading the diff sees a removal.
    """
    spec = resource.spec
    if resource.deletion_policy is DeletionPolicy.APPLY:
        return None
    if isinstance(spec, EntitlementSpec) and spec.active_to is None:
        return (
            f"removing {resource.ref} keeps it active in the ledger (deletionPolicy Orphan): set "
            "spec.activeTo first, or spec.deletionPolicy: Apply to end it when deleted"
        )
    if isinstance(spec, GrantSpec) and spec.void_at is None:
        return (
            f"removing {resource.ref} keeps its amount in the ledger (deletionPolicy Orphan): set "
            "spec.voidAt first, or spec.deletionPolicy: Apply to void it when deleted"
        )
    return None
