"""Entitlement values per type (spec §6), each with the instant until which it holds.

Role: ``entitlement_value`` answers "may this customer use this feature, and how much is left?"
at an instant: boolean and static entitlements from their activity window, metered ones from the
engine (balance, usage, overage, totalAvailableGrantAmount, grantBalances, hasAccess with soft
limits). ``valid_until`` is the next minute at which the answer changes without new usage: a
period boundary, a grant activating, expiring, being voided or recurring, activeTo, or a
soft-limit edit, so a cache needs no write at period boundaries (DESIGN D13).

Must not: read the clock, log, or do I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

from .engine import run
from .grants import active_end, grant_is_active_at, next_recurrence_after, with_default_grants
from .model import (
    Aggregation,
    BalanceSnapshot,
    Entitlement,
    EntitlementType,
    EntitlementValue,
    Grant,
    UsageQuery,
)
from .periods import next_reset_after
from .timeutil import ceil_to_minute, require_utc

__all__ = ["entitlement_value", "metered_valid_until"]

ZERO = Decimal(0)


def _activity_valid_until(entitlement: Entitlement, at: datetime) -> datetime | None:
    if at < entitlement.start:
        return entitlement.start
    if entitlement.active_to is not None and at < entitlement.active_to:
        return entitlement.active_to
    return None


def _earliest(candidates: Iterable[datetime | None], after: datetime) -> datetime | None:
    later = [c for c in candidates if c is not None and c > after]
    return min(later) if later else None


def metered_valid_until(
    entitlement: Entitlement, grants: Iterable[Grant], at: datetime
) -> datetime | None:
    """Return the next minute after ``at`` at which a metered value changes without usage."""
    return _valid_until(entitlement, grants, at, next_reset_after(entitlement.usage_period, at))


def _valid_until(
    entitlement: Entitlement, grants: Iterable[Grant], at: datetime, next_reset: datetime
) -> datetime | None:
    """Return ``metered_valid_until`` given ``next_reset_after(at)``, computed by the caller."""
    candidates: list[datetime | None] = [next_reset, _activity_valid_until(entitlement, at)]
    for version in entitlement.is_soft_limit:
        candidates.append(ceil_to_minute(version.since))
    for grant in grants:
        candidates.append(grant.effective_at)
        candidates.append(active_end(grant))
        if grant.recurrence is not None:  # else next_recurrence_after is None
            candidates.append(next_recurrence_after(grant, at))
    return _earliest(candidates, at)


def _before_measurement(
    entitlement: Entitlement, grants: tuple[Grant, ...], t: datetime
) -> EntitlementValue:
    """Value before measureUsageFrom: nothing is measured, active grants hold their amount."""
    ordered = sorted(grants, key=lambda g: g.id)
    active = {g.id: g.amount for g in ordered if grant_is_active_at(g, t)}
    balance = sum(active.values(), ZERO)
    return EntitlementValue(
        at=t,
        has_access=entitlement.soft_limit_at(t) or balance > 0,
        valid_until=metered_valid_until(entitlement, grants, t),
        balance=balance,
        usage=ZERO,
        overage=ZERO,
        total_available_grant_amount=balance,
        grant_balances=active,
    )


def entitlement_value(
    entitlement: Entitlement,
    at: datetime,
    *,
    grants: Iterable[Grant] = (),
    aggregation: Aggregation | None = None,
    usage: UsageQuery | None = None,
    start: BalanceSnapshot | None = None,
    include_default_grants: bool = True,
) -> EntitlementValue:
    """Return the value of ``entitlement`` at ``at`` (spec §6).

    Metered reads are rounded up to the next minute (§1.3) and need ``aggregation`` and
    ``usage``; ``grants`` are the recorded grants (default grants are added unless
    ``include_default_grants`` is False); ``start`` optionally resumes from a snapshot.
    Outside its activity window an entitlement has only ``has_access=False``.
    """
    at = require_utc(at)
    if entitlement.type is not EntitlementType.METERED:
        if not entitlement.is_active_at(at):
            return EntitlementValue(at, False, _activity_valid_until(entitlement, at))
        config = entitlement.config if entitlement.type is EntitlementType.STATIC else None
        return EntitlementValue(at, True, _activity_valid_until(entitlement, at), config=config)

    t = ceil_to_minute(at)
    if not entitlement.is_active_at(t):
        return EntitlementValue(t, False, _activity_valid_until(entitlement, t))
    if aggregation is None or usage is None:
        raise ValueError("a metered value needs the meter's aggregation and a usage query")
    all_grants = (
        with_default_grants(entitlement, grants)
        if include_default_grants
        else tuple(g for g in grants if g.amount >= 0)
    )
    measure_from = entitlement.measure_usage_from or t
    if t < measure_from:
        return _before_measurement(entitlement, all_grants, t)
    result = run(entitlement, all_grants, aggregation, usage, t, start=start)
    snapshot = result.snapshot
    next_reset = result.next_reset or next_reset_after(entitlement.usage_period, t)
    # t >= measureUsageFrom here: the grants active at some instant of [t, t] are those active
    # at t; with the later ones they are what can change the value after t
    active: list[Grant] = []
    later: list[Grant] = []
    for grant in all_grants:
        if grant_is_active_at(grant, t):
            active.append(grant)
        elif grant.effective_at > t:  # (a grant active at t has started by t)
            later.append(grant)
    active_ids = {g.id for g in active}
    grant_balances = {gid: b for gid, b in sorted(snapshot.balances.items()) if gid in active_ids}
    balance = sum(grant_balances.values(), ZERO)
    soft = entitlement.soft_limit_at(t)
    return EntitlementValue(
        at=t,
        has_access=soft or balance > 0,
        valid_until=_valid_until(entitlement, active + later, t, next_reset),
        balance=balance,
        usage=snapshot.usage,
        overage=snapshot.overage,
        total_available_grant_amount=snapshot.total_grant_usage + balance,
        grant_balances=grant_balances,
    )
