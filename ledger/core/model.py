"""Domain types of the ledger: the vocabulary every other layer imports.

Role: frozen dataclasses and enums for meters, features, customers, entitlements, grants, manual
resets, usage, engine snapshots and computed values, mirroring DESIGN.md "Resources" in
snake_case. Effective defaults (DESIGN D8, OpenMeter v2) are applied where a field is read, via
the small properties below, so a record keeps what was written.

Conventions: every instant is an aware UTC ``datetime`` on a minute boundary where the spec says
it is truncated (effective, anchor, void, reset, measureUsageFrom); every amount is ``Decimal``.
Mapping fields are treated as read-only. Versioned settings are tuples of ``Versioned`` entries
sorted by ``since``.

Must not: read the clock, log, import storage or I/O libraries, or hold behaviour beyond trivial
accessors (the arithmetic lives in ``periods``, ``grants`` and ``engine``).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Generic, Protocol, TypeVar

__all__ = [
    "Aggregation",
    "BalanceSnapshot",
    "CalendarDuration",
    "Consistency",
    "Customer",
    "Entitlement",
    "EntitlementReset",
    "EntitlementType",
    "EntitlementValue",
    "Expiration",
    "ExpirationUnit",
    "Feature",
    "Grant",
    "IssueAfterReset",
    "Meter",
    "PeriodSource",
    "Recurrence",
    "UsageBucket",
    "UsagePeriodEntry",
    "UsageQuery",
    "Versioned",
    "WhenStale",
    "value_at",
]

T = TypeVar("T")
ZERO = Decimal(0)


# --- meters, features, customers -------------------------------------------------------------


class Aggregation(enum.Enum):
    """Meter aggregations a feature may use (spec §2.1)."""

    SUM = "SUM"
    COUNT = "COUNT"
    UNIQUE_COUNT = "UNIQUE_COUNT"
    LATEST = "LATEST"


@dataclass(frozen=True)
class Meter:
    """A meter: how events of one type become usage amounts."""

    slug: str
    event_type: str
    aggregation: Aggregation
    value_property: str | None = None  # JSONPath; None only for COUNT
    group_by: Mapping[str, str] = field(default_factory=dict)  # name -> JSONPath


class WhenStale(enum.Enum):
    """What a sidecar answers past its staleness budget."""

    LAST_KNOWN = "LastKnown"
    ALLOW = "Allow"
    DENY = "Deny"


class Consistency(enum.Enum):
    """Whether access checks may be answered from the sidecar's eventually consistent view."""

    EVENTUAL = "Eventual"
    STRICT = "Strict"


@dataclass(frozen=True)
class Feature:
    """A feature; metered entitlements need ``meter_slug``."""

    key: str
    name: str
    meter_slug: str | None = None
    meter_group_by_filters: Mapping[str, str] = field(default_factory=dict)  # key -> $eq value
    metadata: Mapping[str, str] = field(default_factory=dict)
    when_stale: WhenStale = WhenStale.LAST_KNOWN
    consistency: Consistency = Consistency.EVENTUAL


@dataclass(frozen=True)
class Customer:
    """A customer; ``key`` always counts as one of its subject keys."""

    key: str
    name: str
    subject_keys: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def all_subject_keys(self) -> tuple[str, ...]:
        """Return the key followed by the other subject keys, without duplicates."""
        return (self.key, *(k for k in self.subject_keys if k != self.key))


# --- time values -----------------------------------------------------------------------------


_ISO_DURATION = re.compile(
    r"^P(?:(?P<years>\d+)Y)?(?:(?P<months>\d+)M)?(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+)S)?)?$"
)
_INTERVAL_ALIASES = {"DAY": "P1D", "WEEK": "P1W", "MONTH": "P1M", "YEAR": "P1Y"}


@dataclass(frozen=True)
class CalendarDuration:
    """An ISO 8601 duration with integer components (a usage-period or recurrence interval).

    Applied in the order years, months, weeks, days, hours, minutes, seconds (spec §5.1).
    Fractional components, which OpenMeter's pattern tolerates, are not supported.
    """

    years: int = 0
    months: int = 0
    weeks: int = 0
    days: int = 0
    hours: int = 0
    minutes: int = 0
    seconds: int = 0

    @classmethod
    def parse(cls, text: str) -> CalendarDuration:
        """Parse ``DAY|WEEK|MONTH|YEAR`` (any case) or an ISO 8601 duration such as ``P1M``."""
        iso = _INTERVAL_ALIASES.get(text.strip().upper(), text.strip().upper())
        match = _ISO_DURATION.match(iso)
        if match is None or iso in ("P", "PT") or iso.endswith("T"):
            raise ValueError(f"{text!r} is not DAY, WEEK, MONTH, YEAR or an ISO 8601 duration")
        parts = {k: int(v) for k, v in match.groupdict().items() if v is not None}
        return cls(**parts)

    def iso(self) -> str:
        """Return the ISO 8601 text, e.g. ``P1M`` or ``PT6H``."""
        date = "".join(
            f"{v}{u}"
            for v, u in ((self.years, "Y"), (self.months, "M"), (self.weeks, "W"), (self.days, "D"))
            if v
        )
        time = "".join(
            f"{v}{u}" for v, u in ((self.hours, "H"), (self.minutes, "M"), (self.seconds, "S")) if v
        )
        return "P" + date + ("T" + time if time else "") if (date or time) else "PT0S"

    def enum_name(self) -> str | None:
        """Return DAY/WEEK/MONTH/YEAR when the duration is exactly one of those, else None."""
        for name, iso in _INTERVAL_ALIASES.items():
            if self.iso() == iso:
                return name
        return None


@dataclass(frozen=True)
class Recurrence:
    """Instants ``anchor + k·interval`` for every integer k, computed from the anchor (§5.1)."""

    interval: CalendarDuration
    anchor: datetime


class ExpirationUnit(enum.Enum):
    """Units of a grant's expiration (spec §7.1)."""

    HOUR = "HOUR"
    DAY = "DAY"
    WEEK = "WEEK"
    MONTH = "MONTH"
    YEAR = "YEAR"


@dataclass(frozen=True)
class Expiration:
    """A grant's lifetime: ``count`` units after ``effective_at``, with overflow arithmetic."""

    duration: ExpirationUnit
    count: int


@dataclass(frozen=True)
class Versioned(Generic[T]):
    """One version of a mutable setting, in force from ``since`` until the next version."""

    since: datetime
    value: T


def value_at(timeline: tuple[Versioned[T], ...], instant: datetime) -> T:
    """Return the version in force at ``instant``: the last with ``since <= instant``.

    Before the first version the first one applies (as OpenMeter does for usage periods).
    """
    if not timeline:
        raise ValueError("empty timeline")
    current = timeline[0].value
    for version in timeline:
        if version.since <= instant:
            current = version.value
        else:
            break
    return current


# --- entitlements ----------------------------------------------------------------------------


class EntitlementType(enum.Enum):
    """Kinds of entitlement."""

    METERED = "metered"
    STATIC = "static"
    BOOLEAN = "boolean"


class PeriodSource(enum.Enum):
    """Why a usage-period timeline entry exists."""

    CREATED = "created"  # the first entry, at measureUsageFrom
    RESET = "reset"  # a manual reset (EntitlementReset)
    EDIT = "edit"  # an interval edit, starting at the next period boundary (D4)


@dataclass(frozen=True)
class UsagePeriodEntry:
    """An entry of the usage-period timeline: from ``start`` periods follow ``recurrence``.

    Every entry after the first starts with a reset. ``preserve_overage`` is the flag a manual
    reset was applied with (spec §10.4: remembered per reset); for other entries it is None and
    the entitlement's ``preserve_overage_at_reset`` version at ``start`` applies.
    """

    start: datetime
    recurrence: Recurrence
    source: PeriodSource = PeriodSource.CREATED
    preserve_overage: bool | None = None


@dataclass(frozen=True)
class IssueAfterReset:
    """The default grant's amount and priority (spec §7.6)."""

    amount: Decimal
    priority: int = 1


@dataclass(frozen=True)
class Entitlement:
    """An entitlement of a customer to a feature.

    Metered entitlements have a non-empty ``usage_period`` timeline and ``measure_usage_from``;
    for static and boolean ones the period (if any) is informational. Mutable settings are
    timelines (DESIGN D4): ``is_soft_limit`` from the edit instant, ``preserve_overage_at_reset``
    for resets after the edit, ``issue_after_reset`` from the next period boundary (None = no
    default grant).
    """

    id: str
    namespace: str
    name: str
    customer_key: str
    feature_key: str
    type: EntitlementType
    created_at: datetime
    usage_period: tuple[UsagePeriodEntry, ...] = ()
    measure_usage_from: datetime | None = None
    issue_after_reset: tuple[Versioned[IssueAfterReset | None], ...] = ()
    is_soft_limit: tuple[Versioned[bool], ...] = ()
    preserve_overage_at_reset: tuple[Versioned[bool], ...] = ()
    config: str | None = None  # static: a JSON document as text
    active_from: datetime | None = None
    active_to: datetime | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def start(self) -> datetime:
        """Return when the entitlement becomes active (activeFrom, else createdAt)."""
        return self.active_from if self.active_from is not None else self.created_at

    def is_active_at(self, instant: datetime) -> bool:
        """Tell whether ``instant`` lies in ``[start, activeTo)`` (spec §1.7)."""
        return self.start <= instant and (self.active_to is None or instant < self.active_to)

    def soft_limit_at(self, instant: datetime) -> bool:
        """Return the isSoftLimit version in force at ``instant`` (False when never set)."""
        return value_at(self.is_soft_limit, instant) if self.is_soft_limit else False

    def preserve_overage_at(self, instant: datetime) -> bool:
        """Return the preserveOverageAtReset version for a reset at ``instant``."""
        if not self.preserve_overage_at_reset:
            return False
        return value_at(self.preserve_overage_at_reset, instant)


@dataclass(frozen=True)
class EntitlementReset:
    """A manual reset as a reviewed object (spec §10); None preserve = the entitlement's flag."""

    effective_at: datetime
    retain_anchor: bool = False
    preserve_overage: bool | None = None


# --- grants ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    """A grant funding a metered entitlement.

    Defaults follow D8 (OpenMeter v2): no ``expiration`` = never expires, ``max_rollover_amount``
    None = ``amount``, priority 0. ``void_at`` may lie in the future: the grant stays active until
    it arrives. Lower ``priority`` burns first.
    """

    id: str
    namespace: str
    name: str
    entitlement_id: str
    amount: Decimal
    effective_at: datetime
    created_at: datetime
    priority: int = 0
    expiration: Expiration | None = None
    min_rollover_amount: Decimal = ZERO
    max_rollover_amount: Decimal | None = None
    recurrence: Recurrence | None = None
    void_at: datetime | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def rollover_cap(self) -> Decimal:
        """Return the effective maxRolloverAmount (absent = amount, D8)."""
        return self.amount if self.max_rollover_amount is None else self.max_rollover_amount


# --- usage -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageBucket:
    """One minute of usage for one entitlement's filter.

    ``amount`` is the sum (SUM), the event count (COUNT) or the minute's latest value (LATEST);
    ``distinct`` holds the minute's distinct values (UNIQUE_COUNT).
    """

    minute: datetime
    amount: Decimal = ZERO
    distinct: frozenset[str] = frozenset()


class UsageQuery(Protocol):
    """The meter's aggregate over the half-open, minute-aligned window ``[start, end)``.

    SUM: the sum; COUNT: the number of events; LATEST: the latest event's value (0 if none);
    UNIQUE_COUNT: the distinct count. The engine applies spec §2.2 on top of it.
    """

    def __call__(self, start: datetime, end: datetime, /) -> Decimal: ...


# --- engine state and values -----------------------------------------------------------------


@dataclass(frozen=True)
class BalanceSnapshot:
    """Engine state at ``at`` after everything happening at ``at`` (resets, refills) applied.

    ``balances`` maps grant id to remaining balance; ``usage`` and ``total_grant_usage`` count
    from ``period_start``, the start of the usage period containing ``at``.
    """

    at: datetime
    period_start: datetime
    balances: Mapping[str, Decimal]
    overage: Decimal = ZERO
    usage: Decimal = ZERO
    total_grant_usage: Decimal = ZERO


@dataclass(frozen=True)
class EntitlementValue:
    """The value of an entitlement at an instant (spec §6), with ``valid_until``.

    For metered entitlements the numeric fields are set; for static ``config`` is; inactive
    entitlements have only ``has_access=False``. ``valid_until`` is the next minute at which the
    value changes without new usage (None = never); it holds for every query instant whose
    minute-rounded value lies in ``[at, valid_until)``.
    """

    at: datetime
    has_access: bool
    valid_until: datetime | None = None
    balance: Decimal | None = None
    usage: Decimal | None = None
    overage: Decimal | None = None
    total_available_grant_amount: Decimal | None = None
    grant_balances: Mapping[str, Decimal] | None = None
    config: str | None = None
