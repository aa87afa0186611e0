"""Grant rules: expiration, activity windows, voids, burn-down order, default grants (spec §7).

Role: pure functions over ``Grant``: when a grant expires (Go ``AddDate`` overflow arithmetic,
unlike recurrences), when it is active (``[effectiveAt, min(expiresAt, voidAt))``, a future
``voidAt`` taking effect when it arrives), the deterministic burn-down order, the instant a void
applies (D4), and the issueAfterReset default grants an entitlement implies (§7.6).

Must not: read the clock, log, or do I/O; it never computes balances (see ``engine``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from .model import Entitlement, Expiration, ExpirationUnit, Grant, UsagePeriodEntry
from .periods import current_period, next_after
from .timeutil import add_months_overflow, require_utc, truncate_to_minute
from .ulid import derived_ulid

__all__ = [
    "DEFAULT_GRANT_ANNOTATION",
    "active_end",
    "burn_order",
    "burn_order_key",
    "default_grants",
    "effective_void_at",
    "expiration_instant",
    "expires_at",
    "grant_is_active_at",
    "next_recurrence_after",
    "with_default_grants",
]

DEFAULT_GRANT_ANNOTATION = "issueAfterReset"
_FAR_FUTURE = datetime.max.replace(tzinfo=UTC)
_ZERO = Decimal(0)


def expiration_instant(effective_at: datetime, expiration: Expiration) -> datetime:
    """Return ``effective_at + count·duration`` with overflow arithmetic (spec §7.2).

    Jan 31 + 1 MONTH = Mar 3 (Mar 2 in a leap year); Feb 29 + 1 YEAR = Mar 1.
    """
    count = expiration.count
    unit = expiration.duration
    if unit is ExpirationUnit.HOUR:
        return effective_at + timedelta(hours=count)
    if unit is ExpirationUnit.DAY:
        return effective_at + timedelta(days=count)
    if unit is ExpirationUnit.WEEK:
        return effective_at + timedelta(days=7 * count)
    if unit is ExpirationUnit.MONTH:
        return add_months_overflow(effective_at, count)
    return add_months_overflow(effective_at, 12 * count)


def expires_at(grant: Grant) -> datetime | None:
    """Return the grant's exclusive expiry, or None when it never expires (D8)."""
    if grant.expiration is None:
        return None
    return expiration_instant(grant.effective_at, grant.expiration)


def active_end(grant: Grant) -> datetime | None:
    """Return ``min(expiresAt, voidAt)``, never before effectiveAt; None = open-ended (§1.6)."""
    if grant.expiration is None and grant.void_at is None:
        return None
    ends = [e for e in (expires_at(grant), grant.void_at) if e is not None]
    if not ends:
        return None
    return max(min(truncate_to_minute(e) for e in ends), grant.effective_at)


def grant_is_active_at(grant: Grant, instant: datetime) -> bool:
    """Tell whether ``instant`` lies in ``[effectiveAt, active_end)``."""
    end = active_end(grant)
    return grant.effective_at <= instant and (end is None or instant < end)


def burn_order_key(grant: Grant) -> tuple[int, int, datetime, datetime, str, str, str]:
    """Return the sort key of the burn-down order (spec §7.3, made deterministic).

    Priority ascending; grants with an expiration before those without, earliest expiry first
    (whole seconds); creation instant; then namespace, name and id.
    """
    expiry = expires_at(grant)
    has_no_expiry = 0 if expiry is not None else 1
    expiry_key = expiry.replace(microsecond=0) if expiry is not None else _FAR_FUTURE
    return (
        grant.priority,
        has_no_expiry,
        expiry_key,
        grant.created_at,
        grant.namespace,
        grant.name,
        grant.id,
    )


def burn_order(grants: Iterable[Grant]) -> tuple[Grant, ...]:
    """Return ``grants`` sorted in burn-down order."""
    listed = tuple(grants)
    if len(listed) < 2:
        return listed
    return tuple(sorted(listed, key=burn_order_key))


def next_recurrence_after(grant: Grant, instant: datetime) -> datetime | None:
    """Return the grant's next refill strictly after ``instant`` while it is active, if any."""
    if grant.recurrence is None:
        return None
    start = max(instant, grant.effective_at - timedelta(microseconds=1))
    nxt = next_after(grant.recurrence, start, inclusive=False)
    return nxt if grant_is_active_at(grant, nxt) else None


def effective_void_at(
    usage_period: tuple[UsagePeriodEntry, ...], void_at: datetime, set_at: datetime
) -> datetime:
    """Return the instant a ``voidAt`` set at ``set_at`` applies (DESIGN D4).

    ``trunc(void_at)``, but never before the start of the usage period current at ``set_at``:
    past periods are never rewritten. A future ``voidAt`` is kept and applies when it arrives.
    """
    void = truncate_to_minute(void_at)
    if not usage_period:
        return void
    floor = current_period(usage_period, require_utc(set_at)).start
    return max(void, floor)


def default_grants(entitlement: Entitlement) -> tuple[Grant, ...]:
    """Return the issueAfterReset default grants an entitlement implies (spec §7.6, D4).

    Each version of ``issue_after_reset`` with an amount > 0 yields a grant: amount X, its
    priority, effective at the version's start (never before measureUsageFrom), no expiration,
    min = max rollover = X (so it refills to X at every reset), voided where the next version
    starts. Its id is a ULID derived from the entitlement id and its start, so it is the same on
    every computation; it is never stored as a separate grant.
    """
    if entitlement.measure_usage_from is None:
        return ()
    versions = entitlement.issue_after_reset
    result: list[Grant] = []
    for i, version in enumerate(versions):
        issue = version.value
        if issue is None or issue.amount <= 0:
            continue
        start = max(truncate_to_minute(version.since), entitlement.measure_usage_from)
        end = versions[i + 1].since if i + 1 < len(versions) else None
        if end is not None and end <= start:
            continue
        suffix = "" if not result else f"-{start.strftime('%Y%m%dT%H%MZ')}"
        result.append(
            Grant(
                id=derived_ulid(start, f"{entitlement.id}/issueAfterReset/{start.isoformat()}"),
                namespace=entitlement.namespace,
                name=f"{entitlement.name}-issue-after-reset{suffix}",
                entitlement_id=entitlement.id,
                amount=issue.amount,
                effective_at=start,
                created_at=start,
                priority=issue.priority,
                min_rollover_amount=issue.amount,
                max_rollover_amount=issue.amount,
                void_at=end,
                annotations={DEFAULT_GRANT_ANNOTATION: "true"},
            )
        )
    return tuple(result)


def with_default_grants(entitlement: Entitlement, grants: Iterable[Grant]) -> tuple[Grant, ...]:
    """Return the recorded grants plus the entitlement's default grants.

    Grants with a negative amount are dropped, as OpenMeter ignores them (§7.7).
    """
    recorded = [g for g in grants if g.amount >= _ZERO]
    if entitlement.measure_usage_from is None or not entitlement.issue_after_reset:
        return tuple(recorded)
    return (*recorded, *default_grants(entitlement))
