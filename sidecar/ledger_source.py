"""The ``LedgerSource`` backed by the ledger database, through storage's read contract.

Role: open the ledger (``open_ledger``: refuses a schema it does not match, D11), load one
namespace in a single read transaction with one bulk query per table (current catalogue records,
meters, usage buckets, distinct values, the epoch and feed head), and read the change feed after
a cursor (``feed.read_feed``), and on PostgreSQL LISTEN on ``feed.NOTIFY_CHANNEL`` in one thread
as a wake-up hint, decoding each entry with storage's codec: ``record`` entries carry
a record document, ``usage`` entries absolute bucket states, ``meter`` entries a meter.

Storage functions relied on: ``engine.open_ledger``/``Ledger.read``, ``feed.ledger_epoch``,
``feed.feed_head``, ``feed.read_feed``, ``catalogue.current_records``, ``codec.decode_record``,
``usage.load_meters``, ``usage.BucketState.from_payload``; and, for the bulk bucket load (storage
has no function for it yet), the ``usage_buckets``, ``usage_bucket_values`` and ``meters`` tables.

It must not write to the ledger (the sidecar's role may only ingest, D12) or compute values.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import defaultdict
from collections.abc import Callable

import psycopg
from sqlalchemy import Connection, Table, select
from sqlalchemy.engine import make_url

from allotment.ledger.core.model import Aggregation, Entitlement, Grant, Meter
from allotment.ledger.storage import catalogue, feed, usage
from allotment.ledger.storage.codec import (
    CustomerRecord,
    FeatureRecord,
    MeterRecord,
    Removed,
    decode_record,
)
from allotment.ledger.storage.engine import Ledger, current_revision, open_ledger
from allotment.ledger.storage.schema import MeterRow, UsageBucketRow, UsageBucketValueRow
from allotment.ledger.storage.usage import BucketState

from .settings import SidecarSettings
from .source import Change, FeedBatch, LoadedNamespace, RecordRemoved

__all__ = ["StorageSource"]

log = logging.getLogger("allotment.sidecar.ledger")

_BUCKETS: Table = UsageBucketRow.__table__  # type: ignore[assignment]
_VALUES: Table = UsageBucketValueRow.__table__  # type: ignore[assignment]
_METERS: Table = MeterRow.__table__  # type: ignore[assignment]


class StorageSource:
    """Reads one ledger database for the sidecar (blocking; called from worker threads)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    @classmethod
    def open(cls, settings: SidecarSettings) -> StorageSource:
        """Open the ledger named in ``settings`` (one small pool: load and poll share it)."""
        return cls(open_ledger(settings.database_url, reader_pool_size=2))

    def listen(self, namespace: str, wake: Callable[[], None]) -> Callable[[], None] | None:
        """On PostgreSQL, LISTEN on the feed channel in a thread; None elsewhere."""
        if self.ledger.dialect != "postgresql":
            return None
        url = make_url(self.ledger.url).set(drivername="postgresql")
        listener = _Listener(url.render_as_string(hide_password=False), namespace, wake)
        listener.start()
        return listener.stop

    def close(self) -> None:
        """Dispose of the connections."""
        self.ledger.dispose()

    def load(self, namespace: str) -> LoadedNamespace:
        """Read the namespace in one snapshot, one bulk query per table."""
        with self.ledger.read() as connection:
            epoch = feed.ledger_epoch(connection)
            position = feed.feed_head(connection)
            revision = current_revision(connection)
            records = catalogue.current_records(connection, namespace)
            meters = [
                MeterRecord(m.id, m.meter, m.created_at)
                for m in usage.load_meters(connection, namespace)
            ]
            buckets = _load_buckets(connection, namespace)
        customers = [r for r in records if isinstance(r, CustomerRecord)]
        features = [r for r in records if isinstance(r, FeatureRecord)]
        entitlements = [r for r in records if isinstance(r, Entitlement)]
        grants = [r for r in records if isinstance(r, Grant)]
        return LoadedNamespace(
            namespace=namespace,
            epoch=epoch,
            position=position,
            contract_version=feed.CONTRACT_VERSION,
            customers=customers,
            features=features,
            meters=meters,
            entitlements=entitlements,
            grants=grants,
            usage=buckets,
            details={"schemaRevision": revision or "none"},
        )

    def changes_since(self, namespace: str, position: int, limit: int) -> FeedBatch:
        """Return the namespace's changes after ``position`` (and advance past others')."""
        with self.ledger.read() as connection:
            epoch = feed.ledger_epoch(connection)
            head = feed.feed_head(connection)
            entries = feed.read_feed(connection, namespace, after=position, limit=limit)
        changes: list[Change] = []
        version = feed.CONTRACT_VERSION
        for entry in entries:
            version = entry.contract_version
            changes.extend(_decode(entry))
        last = entries[-1].position if len(entries) >= limit else max(head, position)
        return FeedBatch(epoch=epoch, position=last, contract_version=version, changes=changes)


class _Listener(threading.Thread):
    """One listening connection (DESIGN D10's budget); reconnects with backoff, never raises."""

    def __init__(self, dsn: str, namespace: str, wake: Callable[[], None]) -> None:
        super().__init__(name="allotment-feed-listener", daemon=True)
        self.dsn = dsn
        self.namespace = namespace
        self.wake = wake
        self.stopped = threading.Event()

    def stop(self) -> None:
        """Ask the thread to end (within a second)."""
        self.stopped.set()

    def run(self) -> None:
        backoff = 0.1
        while not self.stopped.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {feed.NOTIFY_CHANNEL}")
                    self.wake()  # anything committed while not listening is polled now
                    backoff = 0.1
                    while not self.stopped.is_set():
                        for note in conn.notifies(timeout=1.0):
                            if note.payload.split(":", 1)[0] == self.namespace:
                                self.wake()
            except Exception as error:
                log.info("Feed notifications unavailable (polling continues): %s", error)
                self.stopped.wait(backoff)
                backoff = min(backoff * 2, 5.0)


def _decode(entry: feed.FeedRecord) -> list[Change]:
    kind, payload = entry.kind, entry.payload
    if kind == catalogue.RECORD_CHANGE:
        record = decode_record(payload)
        if isinstance(record, Removed):
            return [RecordRemoved(record.removed_kind, record.id)]  # type: ignore[arg-type]
        return [record]
    if kind == usage.USAGE_CHANGE:
        return [BucketState.from_payload(b) for b in payload.get("buckets", ())]
    if kind == usage.METER_CHANGE:
        spec = payload["meter"]
        meter = Meter(
            slug=spec["slug"],
            event_type=spec["eventType"],
            aggregation=Aggregation(spec["aggregation"]),
            value_property=spec.get("valueProperty"),
            group_by=dict(spec.get("groupBy") or {}),
        )
        return [MeterRecord(payload["id"], meter, entry.recorded_at)]
    log.warning("Ignoring a feed entry of unknown kind %r", kind)
    return []


def _load_buckets(connection: Connection, namespace: str) -> list[BucketState]:
    slugs = {
        row.id: (row.slug, row.aggregation)
        for row in connection.execute(
            select(_METERS.c.id, _METERS.c.slug, _METERS.c.aggregation).where(
                _METERS.c.namespace == namespace
            )
        )
    }
    distinct: dict[int, set[str]] = defaultdict(set)
    if any(agg == Aggregation.UNIQUE_COUNT.value for _, agg in slugs.values()):
        for row in connection.execute(
            select(_VALUES.c.bucket_id, _VALUES.c.value).where(_VALUES.c.namespace == namespace)
        ):
            distinct[row.bucket_id].add(row.value)
    buckets = []
    for row in connection.execute(
        select(_BUCKETS).where(_BUCKETS.c.namespace == namespace).order_by(_BUCKETS.c.minute)
    ):
        slug = slugs.get(row.meter_id)
        if slug is None:
            continue
        buckets.append(
            BucketState(
                meter_id=row.meter_id,
                meter_slug=slug[0],
                subject=row.subject,
                groups=tuple(sorted(json.loads(row.group_key).items())),
                minute=row.minute,
                event_count=row.event_count,
                value_sum=row.value_sum,
                latest_time=row.latest_time,
                latest_value=row.latest_value,
                distinct=frozenset(distinct.get(row.id, ())),
            )
        )
    return buckets
