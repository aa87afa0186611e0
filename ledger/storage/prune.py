"""Pruning: raw usage events past the dedup horizon and change-feed rows past their retention.

Role: keep the two append-only tables that grow with traffic bounded, without ever losing an
acknowledged event, counting one twice, or letting a reader miss a change.

- **Raw events** (D9). An event is deleted only when both its ``time`` and its ``received_at``
  are older than ``horizon + CLOCK_MARGIN``. Its usage stays in the buckets (ingestion folds
  every counted event into them in the same transaction; buckets are never pruned), and an event
  no meter counted can never be counted later: recording a Meter builds buckets only from events
  inside the horizon. Its dedup key cannot become acceptable again for a resend: ingestion
  refuses any event whose ``time`` is older than the horizon, and the key stays stored for at
  least a horizon after the event's own time and after its acknowledgement, plus a margin for
  clocks of other processes running behind the pruner's. Pass the horizon the sidecars ingest
  with (default 32 days); a shorter one is refused.
- **Feed rows** (D10). Rows recorded before ``now - feed_retention`` (and every row below them)
  are deleted. The ledger cannot see followers' cursors, so a follower whose cursor lies below
  the pruned rows must be made to reload: pruning first gives the ledger a new epoch in a
  transaction of its own, and only then deletes. Every follower reads the epoch with each batch
  (``sidecar`` reloads on a new one), so a cursor never skips a deleted row; the cost is one
  reload of every follower per pruning that deletes feed rows (run it rarely: weekly).
- **Strict-mode leases** that expired more than ``CLOCK_MARGIN`` ago. An expired lease claims
  nothing (``leases``), so deleting it changes no answer and no balance.

It must not touch buckets, catalogue versions, snapshots or the schema; it deletes in chunks,
each in its own transaction, so a writer never waits long behind it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Table, delete, func, select

from allotment.ledger.core.timeutil import require_utc
from allotment.ledger.storage import feed, leases
from allotment.ledger.storage.engine import Ledger
from allotment.ledger.storage.schema import FeedEntryRow, UsageEventRow
from allotment.ledger.storage.usage import DEFAULT_HORIZON

__all__ = [
    "CLOCK_MARGIN",
    "DEFAULT_FEED_RETENTION",
    "PruneOutcome",
    "prune",
]

#: How far another process's clock may lag the pruner's without a pruned key being resent.
CLOCK_MARGIN = timedelta(days=1)
#: How long feed rows are kept: followers further behind than this reload.
DEFAULT_FEED_RETENTION = timedelta(days=7)
#: Rows deleted per transaction.
CHUNK = 10_000

_EVENTS: Table = UsageEventRow.__table__  # type: ignore[assignment]
_FEED: Table = FeedEntryRow.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class PruneOutcome:
    """What a pruning deleted, and the ledger's new epoch when it deleted feed rows."""

    events: int
    feed_rows: int
    epoch: str | None
    leases: int = 0


def prune(
    ledger: Ledger,
    *,
    now: datetime,
    horizon: timedelta = DEFAULT_HORIZON,
    feed_retention: timedelta | None = DEFAULT_FEED_RETENTION,
) -> PruneOutcome:
    """Delete raw events past the horizon and feed rows past the retention (None: keep them)."""
    now = require_utc(now)
    if horizon < DEFAULT_HORIZON:
        raise ValueError(
            f"the horizon {horizon} is shorter than ingestion's default {DEFAULT_HORIZON}: "
            "pruning inside the dedup horizon could count a resent event twice"
        )
    if feed_retention is not None and feed_retention <= timedelta(0):
        raise ValueError(f"the feed retention must be positive, got {feed_retention}")
    events = _prune_events(ledger, before=now - horizon - CLOCK_MARGIN)
    with ledger.write() as connection:  # an expired lease claims nothing: deleting it is neutral
        lapsed = leases.prune_leases(connection, before=now - CLOCK_MARGIN)
    if feed_retention is None:
        return PruneOutcome(events, 0, None, lapsed)
    rows, epoch = _prune_feed(ledger, before=now - feed_retention)
    return PruneOutcome(events, rows, epoch, lapsed)


def _prune_events(ledger: Ledger, *, before: datetime) -> int:
    """Delete, chunk by chunk, events whose time and receipt are both before ``before``."""
    deleted = 0
    while True:
        with ledger.write() as connection:
            chunk = (
                select(_EVENTS.c.id)
                .where(_EVENTS.c.time < before, _EVENTS.c.received_at < before)
                .limit(CHUNK)
                .scalar_subquery()
            )
            count = int(connection.execute(delete(_EVENTS).where(_EVENTS.c.id.in_(chunk))).rowcount)
        deleted += count
        if count < CHUNK:
            return deleted


def _prune_feed(ledger: Ledger, *, before: datetime) -> tuple[int, str | None]:
    """Delete the feed rows below the first one recorded at or after ``before``.

    Rows recorded by processes with different clocks need not be in position order, so the cut
    is a position: everything below the first row that must be kept.
    """
    with ledger.read() as connection:
        kept = connection.execute(
            select(func.min(_FEED.c.position)).where(_FEED.c.recorded_at >= before)
        ).scalar_one_or_none()
        last = kept - 1 if kept is not None else feed.feed_head(connection)
        first = connection.execute(select(func.min(_FEED.c.position))).scalar_one_or_none()
    if first is None or first > last:
        return 0, None
    with ledger.write() as connection:  # readers below the cut reload before anything goes
        epoch = feed.rotate_epoch(connection)
    deleted = 0
    while True:
        with ledger.write() as connection:
            chunk = (
                select(_FEED.c.position)
                .where(_FEED.c.position <= last)
                .order_by(_FEED.c.position)
                .limit(CHUNK)
                .scalar_subquery()
            )
            count = int(
                connection.execute(delete(_FEED).where(_FEED.c.position.in_(chunk))).rowcount
            )
        deleted += count
        if count < CHUNK:
            return deleted, epoch
