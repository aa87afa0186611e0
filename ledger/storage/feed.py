"""The change feed: commit-ordered positions, the ledger epoch, one NOTIFY per batch (D10).

Role: append entries in the caller's write transaction, at positions allocated under a
transaction-level lock held until commit (on PostgreSQL a ``pg_advisory_xact_lock`` inside
``allotment_allocate_feed_positions``; on SQLite the single writer's ``BEGIN IMMEDIATE``), so a
reader that has seen position P never later finds a newly committed entry below P: polling alone
is correct. On PostgreSQL ``NOTIFY allotment_feed, '<namespace>'`` is queued with each append
and delivered at commit; PostgreSQL folds identical notifications of one transaction into one,
so a listener gets at most one per committed transaction and namespace, and then polls. Every entry carries the read-contract version it was written in
(``CONTRACT_VERSION``); readers accept the versions they know. ``ledger_epoch`` names this
ledger's history; a restore rotates it and readers that see it change must reload. Readers get
entries with their payloads decoded (``read_feed``) or as the stored text (``read_feed_texts``,
for a reader that decodes them its own way, out of its read transaction).

Append entries last in a transaction: allocation takes the lock that orders commits, and holding
it early would serialise the writers' other work. It must not commit or roll back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, insert, select, text, update

from allotment.ledger.storage.ids import new_id
from allotment.ledger.storage.schema import FeedEntryRow, LedgerStateRow

CONTRACT_VERSION = 1
SUPPORTED_CONTRACT_VERSIONS = frozenset({CONTRACT_VERSION})
NOTIFY_CHANNEL = "allotment_feed"

#: The lock ``allotment_allocate_feed_positions`` takes (migration 0002), held until commit.
FEED_LOCK_KEY = 0x616C666565
#: The kind of the entries ingestion appends: absolute usage bucket states.
USAGE_CHANGE = "usage"

_FEED: Table = FeedEntryRow.__table__  # type: ignore[assignment]
_STATE: Table = LedgerStateRow.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class FeedRecord:
    """One committed change, as a reader sees it."""

    position: int
    namespace: str
    contract_version: int
    kind: str
    payload: Mapping[str, Any]
    recorded_at: datetime


@dataclass(frozen=True)
class Change:
    """One change to append: what kind of change, and its contract-versioned payload."""

    kind: str
    payload: Mapping[str, Any]


def _allocate(connection: Connection, count: int) -> int:
    """Reserve ``count`` positions and return the last; the lock is held until commit."""
    if connection.dialect.name == "postgresql":
        last: int = connection.execute(
            text("SELECT allotment_allocate_feed_positions(:count)"), {"count": count}
        ).scalar_one()
        return last
    return int(
        connection.execute(
            update(_STATE)
            .where(_STATE.c.id == 1)
            .values(feed_position=_STATE.c.feed_position + count)
            .returning(_STATE.c.feed_position)
        ).scalar_one()
    )


def lock(connection: Connection) -> None:
    """Take the lock that orders commits to the feed, until this transaction ends.

    For writers that must not interleave with appends without appending themselves (saving a
    balance snapshot). On SQLite a writer that began with ``BEGIN IMMEDIATE`` already holds it;
    a no-op write takes it in a deferred transaction too, waiting out the busy timeout, before
    the transaction reads anything (a deferred read-then-write could not upgrade).
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": FEED_LOCK_KEY})
    else:
        connection.execute(
            update(_STATE).where(_STATE.c.id == 1).values(feed_position=_STATE.c.feed_position)
        )


def append(
    connection: Connection, namespace: str, changes: Sequence[Change], *, recorded_at: datetime
) -> int | None:
    """Append ``changes`` for ``namespace`` and return the last position (None if none)."""
    if not changes:
        return None
    last = _allocate(connection, len(changes))
    first = last - len(changes) + 1
    connection.execute(
        insert(_FEED),
        [
            {
                "position": first + offset,
                "namespace": namespace,
                "contract_version": CONTRACT_VERSION,
                "kind": change.kind,
                "payload": json.dumps(change.payload, separators=(",", ":"), sort_keys=True),
                "recorded_at": recorded_at,
            }
            for offset, change in enumerate(changes)
        ],
    )
    if connection.dialect.name == "postgresql":
        connection.execute(
            text("SELECT pg_notify(:channel, :message)"),
            {"channel": NOTIFY_CHANNEL, "message": namespace},
        )
    return last


@dataclass(frozen=True)
class FeedText:
    """One committed change with its payload as stored: JSON text, not decoded yet."""

    position: int
    namespace: str
    contract_version: int
    kind: str
    payload: str
    recorded_at: datetime

    def decoded(self) -> FeedRecord:
        """Return this entry with its payload decoded (``json.loads``)."""
        return FeedRecord(
            position=self.position,
            namespace=self.namespace,
            contract_version=self.contract_version,
            kind=self.kind,
            payload=json.loads(self.payload),
            recorded_at=self.recorded_at,
        )


def read_feed_texts(
    connection: Connection, namespace: str, *, after: int, limit: int = 1000
) -> list[FeedText]:
    """Return ``namespace``'s entries after position ``after``, oldest first, payloads as text.

    For readers that decode a payload their own way (``usage.UsageDecoder``), after the read
    transaction: the text is what ``append`` stored.
    """
    f = _FEED.c
    rows = connection.execute(
        select(f.position, f.namespace, f.contract_version, f.kind, f.payload, f.recorded_at)
        .where(f.namespace == namespace, f.position > after)
        .order_by(f.position)
        .limit(limit)
    )
    return [FeedText(*row) for row in rows]


def read_feed(
    connection: Connection, namespace: str, *, after: int, limit: int = 1000
) -> list[FeedRecord]:
    """Return ``namespace``'s entries after position ``after``, oldest first."""
    return [
        entry.decoded()
        for entry in read_feed_texts(connection, namespace, after=after, limit=limit)
    ]


def feed_head(connection: Connection) -> int:
    """Return the last allocated position (committed or not, never reused)."""
    return int(connection.execute(select(_STATE.c.feed_position)).scalar_one())


def ledger_epoch(connection: Connection) -> str:
    """Return the ledger's epoch; it changes when the ledger is restored."""
    return str(connection.execute(select(_STATE.c.epoch)).scalar_one())


def rotate_epoch(connection: Connection) -> str:
    """Give the ledger a new epoch (after a restore) and return it; readers must reload."""
    epoch = new_id()
    connection.execute(update(_STATE).where(_STATE.c.id == 1).values(epoch=epoch))
    return epoch
