"""Balance snapshots: the engine's cached states, saved and invalidated (spec §8.6, DESIGN D9).

Role: save a ``BalanceSnapshot`` of an entitlement at an instant, return the latest one at or
before an instant for the engine to resume from (``engine.run(..., start=snapshot)``), and
delete snapshots that late usage or a catalogue change made stale. A snapshot at ``at`` holds
usage of minutes before ``at``, so usage in minute M invalidates exactly the snapshots after M.
Snapshots are a cache: deleting one never changes a value, only the cost of computing it. A
snapshot computed from an older read is refused when the ledger changed since, and writers
invalidate after appending to the feed, under the lock that saving takes: no stale snapshot
survives a race.

It must not decide when a snapshot may be taken (never for LATEST meters; the engine refuses
them) nor compute one; the caller owns the transaction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
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


def encode_snapshot(snapshot: BalanceSnapshot) -> dict[str, Any]:
    """Return the JSON of a snapshot: instants as RFC 3339, amounts as decimal strings."""
    return {
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
) -> bool:
    """Save ``snapshot``, computed from the ledger as of feed position ``read_position``.

    Returns False, saving nothing, when a snapshot at that instant is already saved or when the
    ledger changed since ``read_position`` in a way that may make it stale: usage of the meter,
    or any catalogue change of the namespace. It takes the feed lock, so a writer that commits
    afterwards deletes it if it must (writers invalidate after appending to the feed). Call it
    in a write transaction (``Ledger.write``), whose statements see every committed change.
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
            document=json.dumps(encode_snapshot(snapshot), sort_keys=True, separators=(",", ":")),
            recorded_at=recorded_at,
        )
        .on_conflict_do_nothing(index_elements=["entitlement_id", "at"])
        .returning(_SNAPSHOTS.c.id)
    )
    return connection.execute(statement).first() is not None


def latest_snapshot(
    connection: Connection, entitlement_id: str, *, at_or_before: datetime
) -> BalanceSnapshot | None:
    """Return the entitlement's latest valid snapshot at or before ``at_or_before``."""
    document = connection.execute(
        select(_SNAPSHOTS.c.document)
        .where(_SNAPSHOTS.c.entitlement_id == entitlement_id, _SNAPSHOTS.c.at <= at_or_before)
        .order_by(_SNAPSHOTS.c.at.desc())
        .limit(1)
    ).scalar_one_or_none()
    return None if document is None else decode_snapshot(json.loads(document))


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
