"""Strict-mode leases: a sidecar reserves a slice of a hard-limit balance before approving it.

Role: ``take_lease`` is the conditional update of ``consistency: Strict`` (README "Usage").
Under a per-entitlement lock (a PostgreSQL advisory transaction lock; SQLite's single writer
already serialises it) it reads the entitlement's committed usage in the period from the usage
buckets and every live lease of the period, and grants the holder at most what keeps

    committed usage + sum of live leases' (reserved - spent) <= budget

where ``budget`` is the period's funds as the caller's engine computed them (balance + usage).
Only then does it insert or update the holder's row; a request that does not fit grants
nothing (or less than asked, never less than ``minimum``). ``return_lease`` gives back what the
holder has not approved; ``prune_leases`` deletes expired rows (the ledger owner's job).

A lease belongs to one usage period (``period_start``): leases of another period never count.
An expired lease counts for nothing, so a sidecar that dies returns its slice at
``expires_at``. ``spent`` only grows.

It must not change usage, grants or balances: usage events are the truth, leases only gate
access answers. It must not compute balances (the caller's engine does) nor decide access.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Row, Table, Update, delete, insert, select, text, update

from allotment.ledger.core.model import Aggregation
from allotment.ledger.storage import usage
from allotment.ledger.storage.schema import LeaseRow, MeterRow

__all__ = [
    "Lease",
    "UsageScope",
    "committed_usage",
    "outstanding",
    "prune_leases",
    "recorded_meter",
    "return_lease",
    "take_lease",
    "usage_of_events",
]

ZERO = Decimal(0)
_LOCK_SPACE = 0x616C6C73  # "alls": advisory locks serialising lease decisions per entitlement
_FAR_FUTURE = timedelta(days=366 * 200)
ADDITIVE = (Aggregation.SUM, Aggregation.COUNT)
_LEASES: Table = LeaseRow.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class UsageScope:
    """Which usage counts for an entitlement: its feature's meter, filters, customer's subjects."""

    meter_slug: str
    subjects: tuple[str, ...]
    filters: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Lease:
    """A holder's lease as the ledger recorded it, and what the last call added to it."""

    entitlement_id: str
    period_start: datetime
    holder: str
    reserved: Decimal
    spent: Decimal
    expires_at: datetime
    granted: Decimal = ZERO
    #: Committed usage in the period when the decision was taken.
    usage: Decimal = ZERO
    #: What was still free for any holder after this call.
    available: Decimal = ZERO

    @property
    def claimed(self) -> Decimal:
        """What the holder still claims against the balance (until ``expires_at``)."""
        return self.reserved - self.spent


def _lock(connection: Connection, namespace: str, entitlement_id: str) -> None:
    if connection.dialect.name != "postgresql":
        return  # SQLite: BEGIN IMMEDIATE already made this the only writer
    digest = zlib.crc32(f"{namespace}/{entitlement_id}".encode())
    key = digest - (1 << 32) if digest >= 1 << 31 else digest
    connection.execute(
        text("SELECT pg_advisory_xact_lock(:space, :key)"), {"space": _LOCK_SPACE, "key": key}
    )


def committed_usage(
    connection: Connection, namespace: str, scope: UsageScope, *, since: datetime
) -> Decimal:
    """Return the usage committed from ``since`` on for a SUM or COUNT meter's scope."""
    aggregation = connection.execute(
        select(MeterRow.aggregation).where(
            MeterRow.namespace == namespace, MeterRow.slug == scope.meter_slug
        )
    ).scalar_one_or_none()
    if aggregation is None:
        raise LookupError(f"no meter {scope.meter_slug!r} is recorded in namespace {namespace}")
    if Aggregation(aggregation) not in ADDITIVE:
        raise ValueError(
            f"meter {scope.meter_slug!r} aggregates with {aggregation}: leases need SUM or COUNT"
        )
    buckets = usage.read_buckets(
        connection,
        namespace,
        scope.meter_slug,
        subjects=scope.subjects,
        filters=scope.filters,
        start=since,
        end=since + _FAR_FUTURE,
    )
    return sum((b.amount or ZERO for b in buckets), ZERO)


def recorded_meter(
    connection: Connection, namespace: str, scope: UsageScope
) -> usage.RecordedMeter | None:
    """Return the scope's meter as recorded (paths compiled), to evaluate events with."""
    return next(
        (m for m in usage.load_meters(connection, namespace) if m.meter.slug == scope.meter_slug),
        None,
    )


def usage_of_events(
    meter: usage.RecordedMeter,
    scope: UsageScope,
    events: Iterable[usage.IncomingEvent],
    *,
    since: datetime,
) -> Decimal:
    """Return what ``events`` add to the scope's usage from ``since`` on, as ingestion counts it.

    Evaluated with ingestion's own meter evaluation; an event the meter cannot evaluate adds
    nothing.
    """
    total = ZERO
    subjects = set(scope.subjects)
    for event in events:
        if (
            event.type != meter.meter.event_type
            or event.subject not in subjects
            or event.time < since
        ):
            continue
        evaluated = usage._evaluate(meter, event)
        if isinstance(evaluated, str):
            continue
        (_, _, groups, _), number, _ = evaluated
        found = json.loads(groups)
        if any(found.get(key) != value for key, value in scope.filters.items()):
            continue
        total += Decimal(1) if meter.meter.aggregation is Aggregation.COUNT else number or ZERO
    return total


def _rows(
    connection: Connection, namespace: str, entitlement_id: str, period_start: datetime
) -> Sequence[Row[Any]]:
    return connection.execute(
        select(_LEASES).where(
            _LEASES.c.namespace == namespace,
            _LEASES.c.entitlement_id == entitlement_id,
            _LEASES.c.period_start == period_start,
        )
    ).all()


def _claimed(rows: Sequence[Row[Any]], now: datetime, *, other_than: str | None = None) -> Decimal:
    return sum(
        (
            max(ZERO, row.reserved - row.spent)
            for row in rows
            if row.expires_at > now and row.holder != other_than
        ),
        ZERO,
    )


def outstanding(
    connection: Connection,
    namespace: str,
    entitlement_id: str,
    period_start: datetime,
    *,
    now: datetime,
) -> Decimal:
    """Return what live leases of the period still claim, over every holder."""
    return _claimed(_rows(connection, namespace, entitlement_id, period_start), now)


def take_lease(
    connection: Connection,
    namespace: str,
    entitlement_id: str,
    period_start: datetime,
    holder: str,
    *,
    scope: UsageScope,
    budget: Decimal,
    want: Decimal,
    minimum: Decimal,
    spent: Decimal,
    now: datetime,
    ttl: timedelta,
) -> Lease:
    """Reserve up to ``want`` more (at least ``minimum``, else nothing) and renew the lease.

    ``spent`` is what the holder has approved and no longer claims (it only grows). The lease
    expires ``ttl`` after ``now``. With ``want`` zero this only renews and records ``spent``.
    """
    if want < 0 or minimum < 0 or spent < 0 or budget.is_nan():
        raise ValueError("lease amounts are non-negative")
    _lock(connection, namespace, entitlement_id)
    rows = _rows(connection, namespace, entitlement_id, period_start)
    mine = next((row for row in rows if row.holder == holder), None)
    spent_now = max(spent, mine.spent if mine is not None else ZERO)
    # An expired lease claims nothing any more: it starts again from what is spent.
    base = mine.reserved if mine is not None and mine.expires_at > now else spent_now
    base = max(base, spent_now)
    used = committed_usage(connection, namespace, scope, since=period_start)
    free = budget - used - _claimed(rows, now, other_than=holder) - (base - spent_now)
    granted = min(want, free) if want > 0 and free > 0 and free >= minimum else ZERO
    reserved = base + granted
    expires_at = now + ttl
    values = {"reserved": reserved, "spent": spent_now, "expires_at": expires_at}
    if mine is None:
        connection.execute(
            insert(LeaseRow).values(
                namespace=namespace,
                entitlement_id=entitlement_id,
                period_start=period_start,
                holder=holder,
                **values,
            )
        )
    else:
        connection.execute(_update_mine(namespace, entitlement_id, period_start, holder, values))
    return Lease(
        entitlement_id,
        period_start,
        holder,
        reserved,
        spent_now,
        expires_at,
        granted=granted,
        usage=used,
        available=free - granted,
    )


def _update_mine(
    namespace: str,
    entitlement_id: str,
    period_start: datetime,
    holder: str,
    values: Mapping[str, object],
) -> Update:
    return (
        update(LeaseRow)
        .where(
            LeaseRow.namespace == namespace,
            LeaseRow.entitlement_id == entitlement_id,
            LeaseRow.period_start == period_start,
            LeaseRow.holder == holder,
        )
        .values(**values)
    )


def return_lease(
    connection: Connection,
    namespace: str,
    entitlement_id: str,
    period_start: datetime,
    holder: str,
    *,
    keep: Decimal,
    spent: Decimal,
    hold_until: datetime,
) -> Lease | None:
    """Give back all but ``keep`` of the reservation; what is kept lapses at ``hold_until``.

    ``keep`` is what the holder approved (approvals still in flight stay claimed until their
    usage has had time to commit); ``spent`` what it no longer claims. None when no such lease.
    """
    rows = _rows(connection, namespace, entitlement_id, period_start)
    mine = next((row for row in rows if row.holder == holder), None)
    if mine is None:
        return None
    spent_now = max(spent, mine.spent)
    reserved = max(spent_now, min(mine.reserved, keep))
    expires_at = min(mine.expires_at, hold_until)
    values = {"reserved": reserved, "spent": spent_now, "expires_at": expires_at}
    connection.execute(_update_mine(namespace, entitlement_id, period_start, holder, values))
    return Lease(entitlement_id, period_start, holder, reserved, spent_now, expires_at)


def prune_leases(connection: Connection, *, before: datetime) -> int:
    """Delete leases that expired before ``before`` (they count for nothing); return how many."""
    result = connection.execute(delete(LeaseRow).where(LeaseRow.expires_at < before))
    return int(result.rowcount)
