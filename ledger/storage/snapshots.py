"""Balance snapshots: the engine's cached states, saved and invalidated (spec §8.6, DESIGN D9).

Role: save a ``BalanceSnapshot`` of an entitlement at an instant, return the latest one at or
before an instant for the engine to resume from (``engine.run(..., start=snapshot)``), and
delete snapshots that late usage or a catalogue change made stale. A snapshot at ``at`` holds
usage of minutes before ``at``, so usage in minute M invalidates exactly the snapshots after M.
Snapshots are a cache: deleting one never changes a value, only the cost of computing it. A
snapshot computed from an older read is refused when the ledger changed since, and writers
invalidate after appending to the feed, under the lock that saving takes: no stale snapshot
survives a race. Each snapshot also carries the ``basis`` it was computed from (a digest of the
entitlement, its grants and the usage it reads, ``allotment.ledger.values``): a reader passes
its own basis and a snapshot of another basis is never returned, so a catalogue change that
reached the ledger by any path cannot be resumed from. Saving keeps an entitlement's snapshots
few: the newest, and one per UTC day for ``KEEP_DAILY`` days before it.

It must not decide when a snapshot may be taken (never for LATEST meters; the engine refuses
them) nor compute one; the caller owns the transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Table, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from allotment.ledger.core.model import BalanceSnapshot
from allotment.ledger.core.timeutil import format_rfc3339, parse_rfc3339
from allotment.ledger.storage import feed
from allotment.ledger.storage.schema import BalanceSnapshotRow, FeedEntryRow
from allotment.ledger.storage.types import format_amount

_SNAPSHOTS: Table = BalanceSnapshotRow.__table__  # type: ignore[assignment]
_FEED: Table = FeedEntryRow.__table__  # type: ignore[assignment]

#: How many days of daily snapshots an entitlement keeps behind its newest one: a late event
#: inside them resumes from the day before it instead of replaying from measureUsageFrom.
KEEP_DAILY = timedelta(days=7)


def encode_snapshot(snapshot: BalanceSnapshot, basis: str | None = None) -> dict[str, Any]:
    """Return the JSON of a snapshot: instants as RFC 3339, amounts as decimal strings."""
    document: dict[str, Any] = {} if basis is None else {"basis": basis}
    return document | {
        "at": format_rfc3339(snapshot.at),
        "periodStart": format_rfc3339(snapshot.period_start),
        "balances": {k: format_amount(v) for k, v in sorted(snapshot.balances.items())},
        "overage": format_amount(snapshot.overage),
        "usage": format_amount(snapshot.usage),
        "totalGrantUsage": format_amount(snapshot.total_grant_usage),
    }


def decode_snapshot(data: Mapping[str, Any]) -> BalanceSnapshot:
    """Read a snapshot from its JSON."""
    return BalanceSnapshot(
        at=parse_rfc3339(data["at"]),
        period_start=parse_rfc3339(data["periodStart"]),
        balances={k: Decimal(v) for k, v in data["balances"].items()},
        overage=Decimal(data["overage"]),
        usage=Decimal(data["usage"]),
        total_grant_usage=Decimal(data["totalGrantUsage"]),
    )


def save_snapshot(
    connection: Connection,
    namespace: str,
    entitlement_id: str,
    meter_id: str,
    snapshot: BalanceSnapshot,
    *,
    read_position: int,
    recorded_at: datetime,
    basis: str | None = None,
) -> bool:
    """Save ``snapshot``, computed from the ledger as of feed position ``read_position``.

    Returns False, saving nothing, when a snapshot at that instant is already saved or when the
    ledger changed since ``read_position`` in a way that may make it stale: usage of the meter,
    or any catalogue change of the namespace. It takes the feed lock, so a writer that commits
    afterwards deletes it if it must (writers invalidate after appending to the feed). Call it
    in a write transaction whose statements see every committed change (``Ledger.write``, or a
    READ COMMITTED transaction on PostgreSQL). With a ``basis``, the entitlement's snapshots of
    another basis are deleted and the rest thinned (``KEEP_DAILY``).
    """
    feed.lock(connection)
    since = connection.execute(
        select(_FEED.c.kind, _FEED.c.payload).where(
            _FEED.c.namespace == namespace, _FEED.c.position > read_position
        )
    )
    marker = f'"meterId":"{meter_id}"'
    if any(kind != feed.USAGE_CHANGE or marker in payload for kind, payload in since):
        return False
    insert = pg_insert if connection.dialect.name == "postgresql" else sqlite_insert
    statement = (
        insert(_SNAPSHOTS)
        .values(
            namespace=namespace,
            entitlement_id=entitlement_id,
            meter_id=meter_id,
            at=snapshot.at,
            document=json.dumps(
                encode_snapshot(snapshot, basis), sort_keys=True, separators=(",", ":")
            ),
            recorded_at=recorded_at,
        )
        .on_conflict_do_nothing(index_elements=["entitlement_id", "at"])
        .returning(_SNAPSHOTS.c.id)
    )
    saved = connection.execute(statement).first() is not None
    if saved and basis is not None:
        _thin(connection, entitlement_id, basis, newest=snapshot.at)
    return saved


def _thin(connection: Connection, entitlement_id: str, basis: str, *, newest: datetime) -> None:
    """Delete the entitlement's snapshots of another basis, and all but the daily ones kept."""
    rows = connection.execute(
        select(_SNAPSHOTS.c.id, _SNAPSHOTS.c.at, _SNAPSHOTS.c.document).where(
            _SNAPSHOTS.c.entitlement_id == entitlement_id
        )
    ).all()
    doomed = [
        row.id
        for row in rows
        if json.loads(row.document).get("basis") != basis
        or (
            row.at < newest
            and (row.at < newest - KEEP_DAILY or (row.at.hour, row.at.minute) != (0, 0))
        )
    ]
    if doomed:
        connection.execute(delete(_SNAPSHOTS).where(_SNAPSHOTS.c.id.in_(doomed)))


def latest_snapshot(
    connection: Connection,
    entitlement_id: str,
    *,
    at_or_before: datetime,
    basis: str | None = None,
) -> BalanceSnapshot | None:
    """Return the entitlement's latest valid snapshot at or before ``at_or_before``.

    With a ``basis``, None when the latest one was computed from another basis: the catalogue
    changed since, and no older snapshot can be of the current basis either.
    """
    document = connection.execute(
        select(_SNAPSHOTS.c.document)
        .where(_SNAPSHOTS.c.entitlement_id == entitlement_id, _SNAPSHOTS.c.at <= at_or_before)
        .order_by(_SNAPSHOTS.c.at.desc())
        .limit(1)
    ).scalar_one_or_none()
    if document is None:
        return None
    data = json.loads(document)
    if basis is not None and data.get("basis") != basis:
        return None
    return decode_snapshot(data)


def invalidate_usage_after(connection: Connection, meter_id: str, minute: datetime) -> int:
    """Delete the meter's snapshots that include usage of ``minute``; return how many."""
    result = connection.execute(
        delete(_SNAPSHOTS).where(_SNAPSHOTS.c.meter_id == meter_id, _SNAPSHOTS.c.at > minute)
    )
    return int(result.rowcount)


def invalidate_entitlement_after(
    connection: Connection, entitlement_id: str, instant: datetime
) -> int:
    """Delete the entitlement's snapshots after ``instant`` (a grant, void or reset there).

    Call it after appending the change to the feed, so a concurrent save is ordered by the lock.
    """
    result = connection.execute(
        delete(_SNAPSHOTS).where(
            _SNAPSHOTS.c.entitlement_id == entitlement_id, _SNAPSHOTS.c.at > instant
        )
    )
    return int(result.rowcount)


def invalidate_entitlements(connection: Connection, entitlement_ids: Iterable[str]) -> int:
    """Delete every snapshot of the given entitlements (their records changed); return how many.

    Call it after appending the change to the feed, so a concurrent save is ordered by the lock.
    """
    wanted = sorted(set(entitlement_ids))
    if not wanted:
        return 0
    result = connection.execute(delete(_SNAPSHOTS).where(_SNAPSHOTS.c.entitlement_id.in_(wanted)))
    return int(result.rowcount)
