"""Builders for core tests: terse entitlements, grants and usage with readable instants."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal

from allotment.ledger.core.model import (
    Aggregation,
    CalendarDuration,
    Entitlement,
    EntitlementType,
    EntitlementValue,
    Expiration,
    ExpirationUnit,
    Grant,
    IssueAfterReset,
    Recurrence,
    UsageBucket,
    Versioned,
)
from allotment.ledger.core.periods import new_usage_period
from allotment.ledger.core.timeutil import parse_rfc3339
from allotment.ledger.core.usage import MinuteSeries
from allotment.ledger.core.values import entitlement_value


def T(text: str) -> datetime:
    """Parse a short UTC instant: '2024-01-01T00:00' or a full RFC 3339 string."""
    if text.endswith("Z") or "+" in text[10:]:
        return parse_rfc3339(text)
    return parse_rfc3339(text + (":00Z" if text.count(":") == 1 else "Z"))


def D(value: str | int) -> Decimal:
    return Decimal(str(value))


def metered(
    start: str = "2024-01-01T00:00",
    *,
    interval: str = "MONTH",
    anchor: str | None = None,
    issue: int | None = None,
    issue_priority: int = 1,
    soft: bool = False,
    preserve: bool = False,
    entitlement_id: str = "ent-1",
) -> Entitlement:
    created = T(start)
    return Entitlement(
        id=entitlement_id,
        namespace="default",
        name="customer-1-tokens",
        customer_key="customer-1",
        feature_key="tokens",
        type=EntitlementType.METERED,
        created_at=created,
        usage_period=new_usage_period(
            CalendarDuration.parse(interval), T(anchor or start), created
        ),
        measure_usage_from=created,
        issue_after_reset=(
            (Versioned(created, IssueAfterReset(D(issue), issue_priority)),) if issue else ()
        ),
        is_soft_limit=(Versioned(created, soft),),
        preserve_overage_at_reset=(Versioned(created, preserve),),
    )


def grant(
    gid: str,
    amount: int | str,
    effective: str,
    *,
    priority: int = 0,
    expires: tuple[ExpirationUnit, int] | None = None,
    min_rollover: int | str = 0,
    max_rollover: int | str | None = None,
    recurrence: tuple[str, str] | None = None,
    void: str | None = None,
    created: str | None = None,
) -> Grant:
    return Grant(
        id=gid,
        namespace="default",
        name=gid,
        entitlement_id="ent-1",
        amount=D(amount),
        effective_at=T(effective),
        created_at=T(created or effective),
        priority=priority,
        expiration=Expiration(expires[0], expires[1]) if expires else None,
        min_rollover_amount=D(min_rollover),
        max_rollover_amount=None if max_rollover is None else D(max_rollover),
        recurrence=(
            Recurrence(CalendarDuration.parse(recurrence[0]), T(recurrence[1]))
            if recurrence
            else None
        ),
        void_at=T(void) if void else None,
    )


def series(
    events: Mapping[str, int | str] | Iterable[tuple[str, int | str]],
    aggregation: Aggregation = Aggregation.SUM,
) -> MinuteSeries:
    items = events.items() if isinstance(events, Mapping) else events
    buckets: dict[datetime, Decimal] = {}
    for minute, amount in items:
        at = T(minute)
        if aggregation is Aggregation.LATEST:
            buckets[at] = D(amount)
        else:
            buckets[at] = buckets.get(at, Decimal(0)) + D(amount)
    return MinuteSeries(aggregation, [UsageBucket(m, a) for m, a in buckets.items()])


def value(
    ent: Entitlement,
    at: str,
    grants: Iterable[Grant] = (),
    usage: Mapping[str, int | str] | MinuteSeries | None = None,
    aggregation: Aggregation = Aggregation.SUM,
) -> EntitlementValue:
    query = usage if isinstance(usage, MinuteSeries) else series(usage or {}, aggregation)
    return entitlement_value(ent, T(at), grants=tuple(grants), aggregation=aggregation, usage=query)
