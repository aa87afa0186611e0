"""The ``LedgerSource`` backed by the ledger database, through storage's read contract.

Role: open the ledger (``open_ledger``: refuses a schema it does not match, D11), load one
namespace in a single read transaction with one bulk query per table (current catalogue records,
meters, usage buckets, distinct values, the epoch and feed head), and read the change feed after
a cursor (``feed.read_feed_texts``), and on PostgreSQL LISTEN on ``feed.NOTIFY_CHANNEL`` in one
thread as a wake-up hint, decoding each entry with storage's codec after the read transaction:
``record`` entries carry a record document, ``usage`` entries absolute bucket states (one
``usage.UsageDecoder`` per read), ``meter`` entries a meter.

Storage functions relied on: ``engine.open_ledger``/``Ledger.read``, ``feed.ledger_epoch``,
``feed.feed_head``, ``feed.read_feed_texts``, ``codec.decode_record`` (feed entries),
``usage.load_meters``, ``usage.UsageDecoder``; and, for the bulk bucket load (storage has no
function for it yet), the ``usage_buckets``, ``usage_bucket_values`` and ``meters`` tables.

It must not write to the ledger (the sidecar's role may only ingest, D12) or compute values.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from sqlalchemy import Connection, Table, null, select, tuple_
from sqlalchemy.engine import make_url

from allotment.ledger.core.model import Aggregation, Meter
from allotment.ledger.storage import catalogue, feed, usage
from allotment.ledger.storage.codec import MeterRecord, Removed, decode_record
from allotment.ledger.storage.engine import Ledger, current_revision, open_ledger
from allotment.ledger.storage.schema import (
    CatalogueVersionRow,
    MeterRow,
    UsageBucketRow,
    UsageBucketValueRow,
)
from allotment.ledger.storage.usage import BucketState

from .settings import SidecarSettings
from .source import Change, FeedBatch, FeedItem, LoadedNamespace, RecordRemoved, UsageEntry

__all__ = ["StorageSource"]

log = logging.getLogger("allotment.sidecar.ledger")

_BUCKETS: Table = UsageBucketRow.__table__  # type: ignore[assignment]
_VALUES: Table = UsageBucketValueRow.__table__  # type: ignore[assignment]
_METERS: Table = MeterRow.__table__  # type: ignore[assignment]
_VERSIONS: Table = CatalogueVersionRow.__table__  # type: ignore[assignment]
_PLAIN = (Aggregation.SUM.value, Aggregation.COUNT.value)
#: Rows per query of a load: bounded statements, so a starting fleet never stampedes the ledger.
PAGE = 5000


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
        """Read the namespace in one snapshot, in pages of ``PAGE`` rows per query.

        The meters are read here; the catalogue documents and then the usage buckets are read
        page by page as the caller iterates ``documents`` and ``usage`` (in the same read
        transaction, closed after the last bucket page), so a load of 10^6 entitlements never
        holds every record nor every bucket at once, nor sends one huge query.
        """
        stack = contextlib.ExitStack()
        connection = stack.enter_context(self.ledger.read())
        try:
            epoch = feed.ledger_epoch(connection)
            position = feed.feed_head(connection)
            revision = current_revision(connection)
            meters = [
                MeterRecord(m.id, m.meter, m.created_at)
                for m in usage.load_meters(connection, namespace)
            ]
        except BaseException:
            stack.close()
            raise
        return LoadedNamespace(
            namespace=namespace,
            epoch=epoch,
            position=position,
            contract_version=feed.CONTRACT_VERSION,
            meters=meters,
            documents=_PagedDocuments(connection, namespace),
            usage=_PagedBuckets(connection, namespace, stack),
            details={"schemaRevision": revision or "none"},
        )

    def changes_since(self, namespace: str, position: int, limit: int) -> FeedBatch:
        """Return the namespace's changes after ``position`` (and advance past others')."""
        with self.ledger.read() as connection:
            epoch = feed.ledger_epoch(connection)
            head = feed.feed_head(connection)
            entries = feed.read_feed_texts(connection, namespace, after=position, limit=limit)
        changes: list[FeedItem] = []
        version = feed.CONTRACT_VERSION
        buckets = usage.UsageDecoder()  # usage: decoded where applied, a state at a time
        for entry in entries:
            version = entry.contract_version
            if entry.kind == usage.USAGE_CHANGE:
                changes.append(UsageEntry(entry.payload, buckets))
            else:
                changes.extend(_decode(entry.decoded()))
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


class _PagedDocuments:
    """The namespace's current catalogue documents, ``PAGE`` versions per query.

    Keyset paging over the versions' primary key (resource, version): each page is an index
    range, so a load costs one pass over the table whatever its size (grouping by resource per
    page made every page read the whole namespace: quadratic). The namespace is compared as an
    expression (``namespace || ''``) so that no planner prefers the namespace index and sorts.
    The last version of each resource is current; a removed record's is not yielded. Iterated
    once, inside the load's read transaction (``_PagedBuckets`` closes it).
    """

    def __init__(self, connection: Connection, namespace: str) -> None:
        self.connection = connection
        self.namespace = namespace

    def __iter__(self) -> Iterator[dict[str, Any]]:
        v = _VERSIONS.c
        key = (v.resource_id, v.version)
        after: tuple[str, int] = ("", -1)
        held: tuple[str, str] | None = None  # (resource, document) of the last version seen
        while True:
            rows = self.connection.execute(
                select(v.resource_id, v.version, v.document)
                .where((v.namespace + "") == self.namespace, tuple_(*key) > tuple_(*after))
                .order_by(*key)
                .limit(PAGE)
            ).all()
            for resource_id, _version, document in rows:
                if held is not None and held[0] != resource_id:
                    yield from _current(held[1])
                held = (resource_id, document)
            if len(rows) < PAGE:
                if held is not None:
                    yield from _current(held[1])
                return
            after = (rows[-1][0], rows[-1][1])


def _current(text: str) -> Iterator[dict[str, Any]]:
    document: dict[str, Any] = json.loads(text)
    if document.get("kind") != "removed":
        yield document


class _PagedBuckets:
    """The namespace's usage buckets, read ``PAGE`` at a time while iterated (once).

    Pages follow the buckets' unique key (meter, subject, group, minute), so each series arrives
    whole and in minute order. The read transaction closes after the last page, or when this
    object is dropped unread.
    """

    def __init__(self, connection: Connection, namespace: str, stack: contextlib.ExitStack) -> None:
        self.connection = connection
        self.namespace = namespace
        self.stack = stack

    def __iter__(self) -> Iterator[BucketState]:
        try:
            yield from _read_buckets(self.connection, self.namespace)
        finally:
            self.stack.close()

    def __del__(self) -> None:
        self.stack.close()


def _read_buckets(connection: Connection, namespace: str) -> Iterator[BucketState]:
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
    b = _BUCKETS.c
    key = (b.meter_id, b.subject, b.group_key, b.minute)
    # Only LATEST and UNIQUE_COUNT meters keep more than count and sum (``UsageStore``).
    extra = any(agg not in _PLAIN for _, agg in slugs.values())
    latest = (b.latest_time, b.latest_value) if extra else (null(), null())
    columns = (*key, b.event_count, b.value_sum, *latest, b.id)
    after: tuple[Any, ...] | None = None
    groups: dict[str, tuple[tuple[str, str], ...]] = {}
    none: frozenset[str] = frozenset()
    while True:
        query = select(*columns).where(b.namespace == namespace)
        if after is not None:
            query = query.where(tuple_(*key) > tuple_(*after))
        rows = connection.execute(query.order_by(*key).limit(PAGE)).all()
        for meter_id, subject, group_key, minute, count, total, at, latest, row_id in rows:
            slug = slugs.get(meter_id)
            if slug is None:
                continue
            group = groups.get(group_key)
            if group is None:
                group = groups[group_key] = tuple(sorted(json.loads(group_key).items()))
            seen = distinct.get(row_id)
            yield BucketState(
                meter_id,
                slug[0],
                subject,
                group,
                minute,
                count,
                total,
                at,
                latest,
                none if seen is None else frozenset(seen),
            )
        if len(rows) < PAGE:
            return
        after = tuple(rows[-1][:4])
