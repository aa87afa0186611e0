"""Resources: Kubernetes objects of group ``allotment.dev`` parsed once into typed, frozen values.

Role: the one translator from an object as a plain dict (a Kopf body, a YAML document) to a
``Resource``: its identity ``Ref`` (namespace, kind, name; DESIGN D1), uid, generation, the
instants of its creation and deletion (D2), and a typed spec per kind. camelCase becomes
snake_case here and nowhere else. A spec keeps what was *written*: an omitted field is ``None``
(D1 compares immutable fields as written), and the effective defaults (``Meter.slug`` and
``Feature.key`` = name with ``-`` turned into ``_``, ``Customer.key`` = name, absent namespace
= ``default``, deletionPolicy ``Orphan``) are read through the small accessors below.

A spec that cannot be parsed raises ``ParseError`` naming the field. Rules that a well-typed spec
can still break (patterns, ranges, cross-field rules) are checked by ``validation``.

Must not: read the clock, log, do I/O, or resolve references to other objects.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import TypeAlias, TypeVar

from .model import (
    Aggregation,
    CalendarDuration,
    Consistency,
    EntitlementType,
    Expiration,
    ExpirationUnit,
    WhenStale,
)
from .timeutil import parse_rfc3339

__all__ = [
    "API_VERSION",
    "DEFAULT_NAMESPACE",
    "CustomerSpec",
    "DeletionPolicy",
    "EntitlementResetSpec",
    "EntitlementSpec",
    "FeatureSpec",
    "GrantSpec",
    "Interval",
    "Kind",
    "MeasureUsageFrom",
    "MeterSpec",
    "ParseError",
    "PlanFeatureSpec",
    "PlanSpec",
    "RecurrenceSpec",
    "Ref",
    "Resource",
    "RolloutPolicy",
    "Spec",
    "SubscriptionSpec",
    "Target",
    "UsagePeriodSpec",
    "UsageStart",
    "default_key",
    "parse_resource",
]

API_VERSION = "allotment.dev/v1alpha1"
DEFAULT_NAMESPACE = "default"

T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)


class ParseError(ValueError):
    """A Kubernetes object that cannot be read as a resource; ``field`` is its JSON path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Kind(enum.Enum):
    """The kinds of group ``allotment.dev``."""

    METER = "Meter"
    FEATURE = "Feature"
    CUSTOMER = "Customer"
    ENTITLEMENT = "Entitlement"
    GRANT = "Grant"
    ENTITLEMENT_RESET = "EntitlementReset"
    PLAN = "Plan"
    SUBSCRIPTION = "Subscription"


class DeletionPolicy(enum.Enum):
    """What deleting an Entitlement or Grant does to the ledger (DESIGN D3)."""

    ORPHAN = "Orphan"
    APPLY = "Apply"


class RolloutPolicy(enum.Enum):
    """When a Plan edit or a plan change reaches a subscriber (issue 9)."""

    NEXT_PERIOD = "NextPeriod"
    IMMEDIATELY = "Immediately"


class UsageStart(enum.Enum):
    """The presets of ``measureUsageFrom`` (spec §4.3)."""

    NOW = "NOW"
    CURRENT_PERIOD_START = "CURRENT_PERIOD_START"


MeasureUsageFrom: TypeAlias = UsageStart | datetime


@dataclass(frozen=True)
class Ref:
    """A resource's ledger identity: (namespace, kind, name) (DESIGN D1)."""

    namespace: str
    kind: Kind
    name: str

    def __str__(self) -> str:
        return f"{self.kind.value} {self.namespace}/{self.name}"


@dataclass(frozen=True)
class Interval:
    """A usage-period or recurrence interval: the text as written and its duration."""

    text: str
    duration: CalendarDuration


@dataclass(frozen=True)
class UsagePeriodSpec:
    """``usagePeriod``: interval and, if written, the anchor."""

    interval: Interval
    anchor: datetime | None = None


@dataclass(frozen=True)
class RecurrenceSpec:
    """A grant's ``recurrence``: interval and, if written, the anchor (default effectiveAt)."""

    interval: Interval
    anchor: datetime | None = None


@dataclass(frozen=True)
class Target:
    """The entitlement a Grant or EntitlementReset applies to, as written.

    Either ``entitlement`` (an Entitlement's name) or ``customer``/``subject`` with
    ``feature_key`` (the entitlement active for them at the object's instant).
    """

    entitlement: str | None = None
    customer: str | None = None
    subject: str | None = None
    feature_key: str | None = None


@dataclass(frozen=True)
class MeterSpec:
    """A Meter's spec as written."""

    event_type: str
    aggregation: Aggregation
    slug: str | None = None
    name: str | None = None
    description: str | None = None
    value_property: str | None = None
    group_by: Mapping[str, str] | None = None


@dataclass(frozen=True)
class FeatureSpec:
    """A Feature's spec as written."""

    key: str | None = None
    name: str | None = None
    meter_slug: str | None = None
    meter_group_by_filters: Mapping[str, str] | None = None
    metadata: Mapping[str, str] | None = None
    when_stale: WhenStale | None = None
    consistency: Consistency | None = None


@dataclass(frozen=True)
class CustomerSpec:
    """A Customer's spec as written."""

    key: str | None = None
    name: str | None = None
    subject_keys: tuple[str, ...] | None = None
    metadata: Mapping[str, str] | None = None


@dataclass(frozen=True)
class EntitlementSpec:
    """An Entitlement's spec as written; ``config`` is the static config as canonical JSON."""

    feature_key: str
    type: EntitlementType
    customer: str | None = None
    subject: str | None = None
    usage_period: UsagePeriodSpec | None = None
    issue_after_reset: Decimal | None = None
    issue_after_reset_priority: int | None = None
    is_soft_limit: bool | None = None
    preserve_overage_at_reset: bool | None = None
    measure_usage_from: MeasureUsageFrom | None = None
    config: str | None = None
    active_from: datetime | None = None
    active_to: datetime | None = None
    metadata: Mapping[str, str] | None = None
    deletion_policy: DeletionPolicy | None = None


@dataclass(frozen=True)
class GrantSpec:
    """A Grant's spec as written."""

    target: Target
    amount: Decimal
    priority: int | None = None
    effective_at: datetime | None = None
    expiration: Expiration | None = None
    min_rollover_amount: Decimal | None = None
    max_rollover_amount: Decimal | None = None
    recurrence: RecurrenceSpec | None = None
    void_at: datetime | None = None
    metadata: Mapping[str, str] | None = None
    deletion_policy: DeletionPolicy | None = None


@dataclass(frozen=True)
class EntitlementResetSpec:
    """An EntitlementReset's spec as written."""

    target: Target
    effective_at: datetime | None = None
    retain_anchor: bool | None = None
    preserve_overage: bool | None = None


@dataclass(frozen=True)
class PlanFeatureSpec:
    """One entitlement template of a Plan, as written (the usage period has no anchor: every
    subscriber's periods are anchored at its subscription's start)."""

    feature_key: str
    type: EntitlementType
    usage_period: UsagePeriodSpec | None = None
    issue_after_reset: Decimal | None = None
    issue_after_reset_priority: int | None = None
    is_soft_limit: bool | None = None
    preserve_overage_at_reset: bool | None = None
    config: str | None = None


@dataclass(frozen=True)
class PlanSpec:
    """A Plan's spec as written; ``features`` keep their written order."""

    features: tuple[PlanFeatureSpec, ...]
    key: str | None = None
    name: str | None = None
    rollout_policy: RolloutPolicy | None = None
    metadata: Mapping[str, str] | None = None

    @property
    def effective_rollout_policy(self) -> RolloutPolicy:
        """Return the rollout policy (default NextPeriod)."""
        return self.rollout_policy or RolloutPolicy.NEXT_PERIOD


@dataclass(frozen=True)
class SubscriptionSpec:
    """A Subscription's spec as written."""

    plan_key: str
    customer: str | None = None
    subject: str | None = None
    active_from: datetime | None = None
    metadata: Mapping[str, str] | None = None
    deletion_policy: DeletionPolicy | None = None


Spec: TypeAlias = (
    MeterSpec
    | FeatureSpec
    | CustomerSpec
    | EntitlementSpec
    | GrantSpec
    | EntitlementResetSpec
    | PlanSpec
    | SubscriptionSpec
)


def default_key(name: str) -> str:
    """Return the key a Meter or Feature named ``name`` gets by default: ``-`` becomes ``_``."""
    return name.replace("-", "_")


@dataclass(frozen=True)
class Resource:
    """A parsed object: identity, the instants of its life (D2) and its spec as written.

    ``created_at`` is None only for objects that never reached an apiserver (files given to
    ``validate``; ``dev`` fills it in). ``generation`` defaults to 1, as at creation.
    """

    ref: Ref
    spec: Spec
    uid: str | None = None
    generation: int = 1
    created_at: datetime | None = None
    deleted_at: datetime | None = None

    @property
    def deletion_policy(self) -> DeletionPolicy:
        """Return the effective deletionPolicy (Orphan unless an Entitlement, Grant or
        Subscription says Apply)."""
        spec = self.spec
        if (
            isinstance(spec, EntitlementSpec | GrantSpec | SubscriptionSpec)
            and spec.deletion_policy is not None
        ):
            return spec.deletion_policy
        return DeletionPolicy.ORPHAN

    @property
    def key(self) -> str | None:
        """Return the effective key of a Meter (slug), Feature, Customer or Plan; None for others."""
        spec = self.spec
        if isinstance(spec, MeterSpec):
            return spec.slug if spec.slug is not None else default_key(self.ref.name)
        if isinstance(spec, FeatureSpec):
            return spec.key if spec.key is not None else default_key(self.ref.name)
        if isinstance(spec, CustomerSpec):
            return spec.key if spec.key is not None else self.ref.name
        if isinstance(spec, PlanSpec):
            return spec.key if spec.key is not None else default_key(self.ref.name)
        return None

    @property
    def display_name(self) -> str | None:
        """Return the effective name of a Feature or Customer (default metadata.name)."""
        spec = self.spec
        if isinstance(spec, FeatureSpec | CustomerSpec | PlanSpec):
            return spec.name if spec.name is not None else self.ref.name
        if isinstance(spec, MeterSpec):
            return spec.name
        return None


# --- parsing ---------------------------------------------------------------------------------


def parse_resource(obj: Mapping[str, object]) -> Resource:
    """Parse a Kubernetes object of group allotment.dev into a ``Resource``.

    Raise ``ParseError`` naming the first field that cannot be read.
    """
    api_version = obj.get("apiVersion")
    if api_version != API_VERSION:
        raise ParseError("apiVersion", f"must be {API_VERSION}, not {api_version!r}")
    kind_text = obj.get("kind")
    kinds = {k.value: k for k in Kind}
    if not isinstance(kind_text, str) or kind_text not in kinds:
        raise ParseError("kind", f"must be one of {', '.join(kinds)}, not {kind_text!r}")
    kind = kinds[kind_text]
    metadata = _mapping(obj.get("metadata", {}), "metadata")
    name = _required(metadata, "name", "metadata", _name)
    namespace = _optional(metadata, "namespace", "metadata", _name) or DEFAULT_NAMESPACE
    spec_obj = _mapping(obj.get("spec", {}), "spec")
    return Resource(
        ref=Ref(namespace, kind, name),
        spec=_SPEC_PARSERS[kind](spec_obj),
        uid=_optional(metadata, "uid", "metadata", _text),
        generation=_optional(metadata, "generation", "metadata", _generation) or 1,
        created_at=_optional(metadata, "creationTimestamp", "metadata", _instant),
        deleted_at=_optional(metadata, "deletionTimestamp", "metadata", _instant),
    )


def _parse_meter(spec: Mapping[str, object]) -> MeterSpec:
    _reject_unknown(
        spec,
        {"slug", "name", "description", "eventType", "aggregation", "valueProperty", "groupBy"},
    )
    return MeterSpec(
        event_type=_required(spec, "eventType", "spec", _text),
        aggregation=_required(spec, "aggregation", "spec", _enum(Aggregation)),
        slug=_optional(spec, "slug", "spec", _text),
        name=_optional(spec, "name", "spec", _text),
        description=_optional(spec, "description", "spec", _text),
        value_property=_optional(spec, "valueProperty", "spec", _text),
        group_by=_optional(spec, "groupBy", "spec", _string_map),
    )


def _parse_feature(spec: Mapping[str, object]) -> FeatureSpec:
    _reject_unknown(
        spec,
        {
            "key",
            "name",
            "meterSlug",
            "meterGroupByFilters",
            "metadata",
            "whenStale",
            "consistency",
        },
    )
    return FeatureSpec(
        key=_optional(spec, "key", "spec", _text),
        name=_optional(spec, "name", "spec", _text),
        meter_slug=_optional(spec, "meterSlug", "spec", _text),
        meter_group_by_filters=_optional(spec, "meterGroupByFilters", "spec", _string_map),
        metadata=_optional(spec, "metadata", "spec", _string_map),
        when_stale=_optional(spec, "whenStale", "spec", _enum(WhenStale)),
        consistency=_optional(spec, "consistency", "spec", _enum(Consistency)),
    )


def _parse_customer(spec: Mapping[str, object]) -> CustomerSpec:
    _reject_unknown(spec, {"key", "name", "usageAttribution", "metadata"})
    subject_keys: tuple[str, ...] | None = None
    attribution = spec.get("usageAttribution")
    if attribution is not None:
        attribution_map = _mapping(attribution, "spec.usageAttribution")
        _reject_unknown(attribution_map, {"subjectKeys"}, "spec.usageAttribution")
        subject_keys = _optional(
            attribution_map, "subjectKeys", "spec.usageAttribution", _string_list
        )
    return CustomerSpec(
        key=_optional(spec, "key", "spec", _text),
        name=_optional(spec, "name", "spec", _text),
        subject_keys=subject_keys,
        metadata=_optional(spec, "metadata", "spec", _string_map),
    )


def _parse_entitlement(spec: Mapping[str, object]) -> EntitlementSpec:
    _reject_unknown(
        spec,
        {
            "customer",
            "subject",
            "featureKey",
            "type",
            "usagePeriod",
            "issueAfterReset",
            "issueAfterResetPriority",
            "isSoftLimit",
            "preserveOverageAtReset",
            "measureUsageFrom",
            "config",
            "activeFrom",
            "activeTo",
            "metadata",
            "deletionPolicy",
        },
    )
    return EntitlementSpec(
        feature_key=_required(spec, "featureKey", "spec", _text),
        type=_required(spec, "type", "spec", _enum(EntitlementType)),
        customer=_optional(spec, "customer", "spec", _text),
        subject=_optional(spec, "subject", "spec", _text),
        usage_period=_optional(spec, "usagePeriod", "spec", _usage_period),
        issue_after_reset=_optional(spec, "issueAfterReset", "spec", _decimal),
        issue_after_reset_priority=_optional(spec, "issueAfterResetPriority", "spec", _integer),
        is_soft_limit=_optional(spec, "isSoftLimit", "spec", _boolean),
        preserve_overage_at_reset=_optional(spec, "preserveOverageAtReset", "spec", _boolean),
        measure_usage_from=_optional(spec, "measureUsageFrom", "spec", _measure_usage_from),
        config=_optional(spec, "config", "spec", _json_object),
        active_from=_optional(spec, "activeFrom", "spec", _instant),
        active_to=_optional(spec, "activeTo", "spec", _instant),
        metadata=_optional(spec, "metadata", "spec", _string_map),
        deletion_policy=_optional(spec, "deletionPolicy", "spec", _enum(DeletionPolicy)),
    )


_TARGET_FIELDS = {"entitlement", "customer", "subject", "featureKey"}


def _parse_target(spec: Mapping[str, object]) -> Target:
    return Target(
        entitlement=_optional(spec, "entitlement", "spec", _text),
        customer=_optional(spec, "customer", "spec", _text),
        subject=_optional(spec, "subject", "spec", _text),
        feature_key=_optional(spec, "featureKey", "spec", _text),
    )


def _parse_grant(spec: Mapping[str, object]) -> GrantSpec:
    _reject_unknown(
        spec,
        _TARGET_FIELDS
        | {
            "amount",
            "priority",
            "effectiveAt",
            "expiration",
            "minRolloverAmount",
            "maxRolloverAmount",
            "recurrence",
            "voidAt",
            "metadata",
            "deletionPolicy",
        },
    )
    return GrantSpec(
        target=_parse_target(spec),
        amount=_required(spec, "amount", "spec", _decimal),
        priority=_optional(spec, "priority", "spec", _integer),
        effective_at=_optional(spec, "effectiveAt", "spec", _instant),
        expiration=_optional(spec, "expiration", "spec", _expiration),
        min_rollover_amount=_optional(spec, "minRolloverAmount", "spec", _decimal),
        max_rollover_amount=_optional(spec, "maxRolloverAmount", "spec", _decimal),
        recurrence=_optional(spec, "recurrence", "spec", _recurrence),
        void_at=_optional(spec, "voidAt", "spec", _instant),
        metadata=_optional(spec, "metadata", "spec", _string_map),
        deletion_policy=_optional(spec, "deletionPolicy", "spec", _enum(DeletionPolicy)),
    )


def _parse_entitlement_reset(spec: Mapping[str, object]) -> EntitlementResetSpec:
    _reject_unknown(spec, _TARGET_FIELDS | {"effectiveAt", "retainAnchor", "preserveOverage"})
    return EntitlementResetSpec(
        target=_parse_target(spec),
        effective_at=_optional(spec, "effectiveAt", "spec", _instant),
        retain_anchor=_optional(spec, "retainAnchor", "spec", _boolean),
        preserve_overage=_optional(spec, "preserveOverage", "spec", _boolean),
    )


def _parse_plan(spec: Mapping[str, object]) -> PlanSpec:
    _reject_unknown(spec, {"key", "name", "rolloutPolicy", "features", "metadata"})
    return PlanSpec(
        features=_required(spec, "features", "spec", _plan_features),
        key=_optional(spec, "key", "spec", _text),
        name=_optional(spec, "name", "spec", _text),
        rollout_policy=_optional(spec, "rolloutPolicy", "spec", _enum(RolloutPolicy)),
        metadata=_optional(spec, "metadata", "spec", _string_map),
    )


def _plan_features(value: object, path: str) -> tuple[PlanFeatureSpec, ...]:
    if not isinstance(value, list | tuple):
        raise ParseError(path, f"must be a list of features, not {type(value).__name__}")
    return tuple(_plan_feature(item, f"{path}[{i}]") for i, item in enumerate(value))


def _plan_feature(value: object, path: str) -> PlanFeatureSpec:
    obj = _mapping(value, path)
    _reject_unknown(
        obj,
        {
            "featureKey",
            "type",
            "usagePeriod",
            "issueAfterReset",
            "issueAfterResetPriority",
            "isSoftLimit",
            "preserveOverageAtReset",
            "config",
        },
        path,
    )
    usage_period = _optional(obj, "usagePeriod", path, _usage_period)
    if usage_period is not None and usage_period.anchor is not None:
        raise ParseError(
            f"{path}.usagePeriod.anchor",
            "is not a field of a plan feature: periods are anchored at each subscription's start",
        )
    return PlanFeatureSpec(
        feature_key=_required(obj, "featureKey", path, _text),
        type=_required(obj, "type", path, _enum(EntitlementType)),
        usage_period=usage_period,
        issue_after_reset=_optional(obj, "issueAfterReset", path, _decimal),
        issue_after_reset_priority=_optional(obj, "issueAfterResetPriority", path, _integer),
        is_soft_limit=_optional(obj, "isSoftLimit", path, _boolean),
        preserve_overage_at_reset=_optional(obj, "preserveOverageAtReset", path, _boolean),
        config=_optional(obj, "config", path, _json_object),
    )


def _parse_subscription(spec: Mapping[str, object]) -> SubscriptionSpec:
    _reject_unknown(
        spec, {"customer", "subject", "planKey", "activeFrom", "metadata", "deletionPolicy"}
    )
    return SubscriptionSpec(
        plan_key=_required(spec, "planKey", "spec", _text),
        customer=_optional(spec, "customer", "spec", _text),
        subject=_optional(spec, "subject", "spec", _text),
        active_from=_optional(spec, "activeFrom", "spec", _instant),
        metadata=_optional(spec, "metadata", "spec", _string_map),
        deletion_policy=_optional(spec, "deletionPolicy", "spec", _enum(DeletionPolicy)),
    )


_SPEC_PARSERS: dict[Kind, Callable[[Mapping[str, object]], Spec]] = {
    Kind.METER: _parse_meter,
    Kind.FEATURE: _parse_feature,
    Kind.CUSTOMER: _parse_customer,
    Kind.ENTITLEMENT: _parse_entitlement,
    Kind.GRANT: _parse_grant,
    Kind.ENTITLEMENT_RESET: _parse_entitlement_reset,
    Kind.PLAN: _parse_plan,
    Kind.SUBSCRIPTION: _parse_subscription,
}


# --- field readers: each takes the value and its path, returns a typed value or raises --------

Reader: TypeAlias = Callable[[object, str], T]


def _required(obj: Mapping[str, object], key: str, parent: str, read: Reader[T]) -> T:
    path = f"{parent}.{key}"
    if key not in obj or obj[key] is None:
        raise ParseError(path, "is required")
    return read(obj[key], path)


def _optional(obj: Mapping[str, object], key: str, parent: str, read: Reader[T]) -> T | None:
    value = obj.get(key)
    if value is None:
        return None
    return read(value, f"{parent}.{key}")


def _reject_unknown(obj: Mapping[str, object], known: set[str], parent: str = "spec") -> None:
    for key in obj:
        if key not in known:
            raise ParseError(f"{parent}.{key}", "is not a field of this kind: remove it")


def _mapping(value: object, path: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise ParseError(path, f"must be an object, not {type(value).__name__}")
    return value


def _text(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise ParseError(path, f"must be a string, not {type(value).__name__}")
    return value


def _name(value: object, path: str) -> str:
    text = _text(value, path)
    if not text:
        raise ParseError(path, "must not be empty")
    return text


def _boolean(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise ParseError(path, f"must be true or false, not {value!r}")
    return value


def _integer(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ParseError(path, f"must be an integer, not {value!r}")
    if isinstance(value, float | Decimal) and value != int(value):
        raise ParseError(path, f"must be an integer, not {value!r}")
    return int(value)


def _generation(value: object, path: str) -> int:
    number = _integer(value, path)
    if number < 1:
        raise ParseError(path, f"must be at least 1, not {number}")
    return number


def _decimal(value: object, path: str) -> Decimal:
    """Read a JSON number exactly: floats through their shortest repr, never binary noise."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ParseError(path, f"must be a number, not {value!r}")
    try:
        number = Decimal(value) if isinstance(value, int | Decimal) else Decimal(repr(value))
    except InvalidOperation as error:
        raise ParseError(path, f"must be a number, not {value!r}") from error
    if not number.is_finite():
        raise ParseError(path, f"must be a finite number, not {value!r}")
    return number


def _instant(value: object, path: str) -> datetime:
    text = _text(value, path)
    try:
        return parse_rfc3339(text)
    except ValueError as error:
        raise ParseError(
            path, f"must be an RFC 3339 time with a zone, such as 2026-01-01T00:00:00Z: {error}"
        ) from error


def _enum(cls: type[E]) -> Callable[[object, str], E]:
    values = {member.value: member for member in cls}

    def read(value: object, path: str) -> E:
        if not isinstance(value, str) or value not in values:
            allowed = ", ".join(str(v) for v in values)
            raise ParseError(path, f"must be one of {allowed}, not {value!r}")
        return values[value]

    return read


def _string_map(value: object, path: str) -> Mapping[str, str]:
    mapping = _mapping(value, path)
    result: dict[str, str] = {}
    for key, item in mapping.items():
        result[str(key)] = _text(item, f"{path}.{key}")
    return result


def _string_list(value: object, path: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise ParseError(path, f"must be a list of strings, not {type(value).__name__}")
    return tuple(_text(item, f"{path}[{i}]") for i, item in enumerate(value))


def _interval(value: object, path: str) -> Interval:
    text = _text(value, path)
    try:
        duration = CalendarDuration.parse(text)
    except ValueError as error:
        raise ParseError(
            path, "must be DAY, WEEK, MONTH, YEAR or an ISO 8601 duration such as PT6H or P1M"
        ) from error
    return Interval(text, duration)


def _usage_period(value: object, path: str) -> UsagePeriodSpec:
    obj = _mapping(value, path)
    _reject_unknown(obj, {"interval", "anchor"}, path)
    return UsagePeriodSpec(
        interval=_required(obj, "interval", path, _interval),
        anchor=_optional(obj, "anchor", path, _instant),
    )


def _recurrence(value: object, path: str) -> RecurrenceSpec:
    obj = _mapping(value, path)
    _reject_unknown(obj, {"interval", "anchor"}, path)
    return RecurrenceSpec(
        interval=_required(obj, "interval", path, _interval),
        anchor=_optional(obj, "anchor", path, _instant),
    )


def _expiration(value: object, path: str) -> Expiration:
    obj = _mapping(value, path)
    _reject_unknown(obj, {"duration", "count"}, path)
    return Expiration(
        duration=_required(obj, "duration", path, _enum(ExpirationUnit)),
        count=_required(obj, "count", path, _integer),
    )


def _measure_usage_from(value: object, path: str) -> MeasureUsageFrom:
    text = _text(value, path)
    for preset in UsageStart:
        if text == preset.value:
            return preset
    try:
        return parse_rfc3339(text)
    except ValueError as error:
        raise ParseError(
            path, "must be NOW, CURRENT_PERIOD_START or an RFC 3339 time with a zone"
        ) from error


def _json_object(value: object, path: str) -> str:
    """Return a static config object as canonical JSON text (sorted keys, as the apiserver)."""
    obj = _mapping(value, path)
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ParseError(path, f"must be a JSON object: {error}") from error
