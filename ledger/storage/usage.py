"""Usage: meters, ingestion with dedup, per-minute buckets, and reading usage back (D9).

Role: in the caller's write transaction, ``ingest`` stores a batch of events beside the
per-minute buckets they add to, keyed by (namespace, meter, subject, group-by values, minute),
evaluating the meters recorded in that same transaction. Dedup is by (namespace, source, id):
a unique constraint with ``INSERT ... ON CONFLICT DO NOTHING``, so concurrent writers never count
an event twice; the first copy counts. Raw events are kept for the horizon (default 32 days),
which is also the dedup horizon: an event older than the horizon is refused, so a duplicate of a
pruned event (``prune`` deletes them) can never be stored. An event no meter can evaluate is
stored and reported, not counted. Usage of a minute deletes the cached balance snapshots after
that minute (a late event invalidates later snapshots). ``record_meter`` records a Meter (D1
identity) and builds its buckets from the raw events inside the horizon. Each batch appends one
usage entry to the feed.

It must not commit, read the clock, or apply a feature's group-by filters at write time: those
are applied when usage is read (``read_buckets``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    String,
    Table,
    bindparam,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from allotment.ledger.core.model import Aggregation, Meter, UsageBucket
from allotment.ledger.core.timeutil import format_rfc3339, parse_rfc3339, truncate_to_minute
from allotment.ledger.storage import feed, records, snapshots
from allotment.ledger.storage.catalogue import KeyTakenError
from allotment.ledger.storage.jsonpath import MISSING, JsonPath, compile_path
from allotment.ledger.storage.schema import (
    MeterGroupByRow,
    MeterRow,
    UsageBucketRow,
    UsageBucketValueRow,
    UsageEventRow,
)
from allotment.ledger.storage.types import Amount, Instant, format_amount

DEFAULT_HORIZON = timedelta(days=32)
METER_KIND = "Meter"
USAGE_CHANGE = feed.USAGE_CHANGE
METER_CHANGE = "meter"
_METER_LOCK_SPACE = 0x616C6D74  # "almt": advisory locks ordering ingestion and meter recording
_CHUNK = 500
ZERO = Decimal(0)

_METERS: Table = MeterRow.__table__  # type: ignore[assignment]
_GROUP_BY: Table = MeterGroupByRow.__table__  # type: ignore[assignment]
_EVENTS: Table = UsageEventRow.__table__  # type: ignore[assignment]
_BUCKETS: Table = UsageBucketRow.__table__  # type: ignore[assignment]
_VALUES: Table = UsageBucketValueRow.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class IncomingEvent:
    """A usage event as ingestion takes it: a parsed CloudEvent 1.0."""

    id: str
    source: str
    type: str
    subject: str
    time: datetime
    data: Mapping[str, Any]


class EventRefusedError(ValueError):
    """An event of the batch cannot be accepted; the whole batch is refused (it is atomic)."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"event {index}: {reason}")
        self.index = index
        self.reason = reason


@dataclass(frozen=True)
class Uncounted:
    """An event that was stored but that no meter could evaluate, and why."""

    index: int
    source: str
    id: str
    reason: str


@dataclass(frozen=True)
class IngestOutcome:
    """What a batch did: events newly stored, duplicates acknowledged, events not counted."""

    stored: int
    duplicates: int
    uncounted: tuple[Uncounted, ...]
    feed_position: int | None


@dataclass(frozen=True)
class BucketState:
    """The absolute contents of one bucket, as the feed and a namespace load carry them."""

    meter_id: str
    meter_slug: str
    subject: str
    groups: tuple[tuple[str, str], ...]
    minute: datetime
    event_count: int
    value_sum: Decimal
    latest_time: datetime | None = None
    latest_value: Decimal | None = None
    distinct: frozenset[str] = frozenset()

    def to_payload(self) -> dict[str, Any]:
        """Return the read-contract JSON of this bucket."""
        return {
            "meterId": self.meter_id,
            "meter": self.meter_slug,
            "subject": self.subject,
            "groups": dict(self.groups),
            "minute": format_rfc3339(self.minute),
            "eventCount": self.event_count,
            "valueSum": format_amount(self.value_sum),
            "latestTime": None if self.latest_time is None else format_rfc3339(self.latest_time),
            "latestValue": None if self.latest_value is None else format_amount(self.latest_value),
            "distinct": sorted(self.distinct),
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> BucketState:
        """Read a bucket from its read-contract JSON."""
        latest_time = payload.get("latestTime")
        latest_value = payload.get("latestValue")
        return cls(
            meter_id=payload["meterId"],
            meter_slug=payload["meter"],
            subject=payload["subject"],
            groups=tuple(sorted(payload["groups"].items())),
            minute=parse_rfc3339(payload["minute"]),
            event_count=int(payload["eventCount"]),
            value_sum=Decimal(payload["valueSum"]),
            latest_time=None if latest_time is None else parse_rfc3339(latest_time),
            latest_value=None if latest_value is None else Decimal(latest_value),
            distinct=frozenset(payload["distinct"]),
        )


@dataclass(frozen=True)
class RecordedMeter:
    """A meter as recorded in the ledger, with its paths compiled for evaluation."""

    id: str
    namespace: str
    meter: Meter
    created_at: datetime
    value_path: JsonPath | None
    group_paths: tuple[tuple[str, JsonPath], ...]


@dataclass
class _Delta:
    count: int = 0
    total: Decimal = ZERO
    latest: tuple[datetime, Decimal] | None = None
    distinct: set[str] = field(default_factory=set)


_Key = tuple[str, str, str, datetime]  # meter id, subject, group key, minute


# --- meters ----------------------------------------------------------------------------------


def _compile(meter: Meter) -> tuple[JsonPath | None, tuple[tuple[str, JsonPath], ...]]:
    if meter.aggregation is Aggregation.COUNT:
        if meter.value_property is not None:
            raise ValueError("meter value property is not allowed when the aggregation is count")
        value_path = None
    else:
        if not meter.value_property:
            raise ValueError("meter value property is required when the aggregation is not count")
        value_path = compile_path(meter.value_property)
    groups = tuple(sorted((key, compile_path(path)) for key, path in meter.group_by.items()))
    return value_path, groups


def _meter_spec(meter: Meter) -> dict[str, Any]:
    return {
        "slug": meter.slug,
        "eventType": meter.event_type,
        "aggregation": meter.aggregation.value,
        "valueProperty": meter.value_property,
        "groupBy": dict(sorted(meter.group_by.items())),
    }


def load_meters(
    connection: Connection, namespace: str, *, event_types: Iterable[str] | None = None
) -> list[RecordedMeter]:
    """Return the meters recorded in ``namespace`` (only those of ``event_types`` if given)."""
    query = select(_METERS).where(_METERS.c.namespace == namespace).order_by(_METERS.c.slug)
    if event_types is not None:
        query = query.where(_METERS.c.event_type.in_(sorted(set(event_types))))
    rows = connection.execute(query).all()
    if not rows:
        return []
    groups: dict[str, dict[str, str]] = defaultdict(dict)
    for group in connection.execute(
        select(_GROUP_BY).where(_GROUP_BY.c.meter_id.in_([row.id for row in rows]))
    ):
        groups[group.meter_id][group.key] = group.json_path
    loaded = []
    for row in rows:
        meter = Meter(
            slug=row.slug,
            event_type=row.event_type,
            aggregation=Aggregation(row.aggregation),
            value_property=row.value_property,
            group_by=groups[row.id],
        )
        value_path, group_paths = _compile(meter)
        loaded.append(
            RecordedMeter(row.id, namespace, meter, row.created_at, value_path, group_paths)
        )
    return loaded


def record_meter(
    connection: Connection,
    namespace: str,
    name: str,
    meter: Meter,
    *,
    uid: str,
    generation: int,
    acted_at: datetime,
    now: datetime,
    horizon: timedelta = DEFAULT_HORIZON,
) -> RecordedMeter:
    """Record a Meter resource; a new meter's buckets are built from the raw events.

    A re-created Meter with the same event type, aggregation, value property and group-by paths
    re-adopts its record; new group-by keys are added (they apply to events ingested from now
    on). Any other difference raises ``IdentityConflictError``; a slug another Meter of the
    namespace has raises ``KeyTakenError`` (D5).
    """
    _compile(meter)
    _lock_meters(connection, namespace, exclusive=True)
    identity = records.find_identity(connection, namespace, METER_KIND, name)
    spec = _meter_spec(meter)
    if identity is None:
        holder = connection.execute(
            select(_METERS.c.id).where(
                _METERS.c.namespace == namespace, _METERS.c.slug == meter.slug
            )
        ).scalar_one_or_none()
        if holder is not None:
            raise KeyTakenError("meter", meter.slug, holder)
        identity = records.create_identity(
            connection, namespace, METER_KIND, name, created_at=acted_at
        )
        connection.execute(
            insert(_METERS).values(
                id=identity.id,
                namespace=namespace,
                slug=meter.slug,
                event_type=meter.event_type,
                aggregation=meter.aggregation.value,
                value_property=meter.value_property,
                created_at=acted_at,
            )
        )
        _add_group_by(connection, identity.id, meter.group_by, added_at=acted_at)
        records.record_revision(
            connection,
            identity,
            uid=uid,
            generation=generation,
            action="create",
            acted_at=acted_at,
            spec=spec,
        )
        recorded = _recorded(connection, namespace, identity.id)
        changes = [feed.Change(METER_CHANGE, {"meter": spec, "id": identity.id})]
        changes.extend(_backfill(connection, recorded, now=now, horizon=horizon))
        feed.append(connection, namespace, changes, recorded_at=now)
        return recorded
    current = _recorded(connection, namespace, identity.id)
    differences = [
        label
        for label, old, new in (
            ("slug", current.meter.slug, meter.slug),
            ("eventType", current.meter.event_type, meter.event_type),
            ("aggregation", current.meter.aggregation, meter.aggregation),
            ("valueProperty", current.meter.value_property, meter.value_property),
        )
        if old != new
    ]
    differences.extend(
        f"groupBy.{key}"
        for key, path in current.meter.group_by.items()
        if meter.group_by.get(key) != path
    )
    if differences:
        raise records.IdentityConflictError(
            f"Meter {namespace}/{name} is recorded with a different {', '.join(differences)}; "
            "these fields are immutable: give the new meter another name"
        )
    added = {k: v for k, v in meter.group_by.items() if k not in current.meter.group_by}
    revision = records.record_revision(
        connection,
        identity,
        uid=uid,
        generation=generation,
        action="edit" if added else "adopt",
        acted_at=acted_at,
        spec=spec,
    )
    if added:
        _add_group_by(connection, identity.id, added, added_at=revision.acted_at)
        feed.append(
            connection,
            namespace,
            [feed.Change(METER_CHANGE, {"meter": spec, "id": identity.id})],
            recorded_at=now,
        )
    return _recorded(connection, namespace, identity.id)


def _lock_meters(connection: Connection, namespace: str, *, exclusive: bool) -> None:
    """Order ingestion and meter recording in a namespace (PostgreSQL; SQLite has one writer).

    Ingestion holds the namespace's lock shared until commit, recording a meter holds it
    exclusively: a batch either commits before the backfill reads the raw events, or evaluates
    the new meter itself. Without it, a batch in flight while a meter is recorded would be
    stored before the meter existed for it and after the backfill looked: never counted.
    """
    if connection.dialect.name != "postgresql":
        return
    function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    connection.execute(
        text(f"SELECT {function}(:space, hashtext(:namespace))"),
        {"space": _METER_LOCK_SPACE, "namespace": namespace},
    )


def _add_group_by(
    connection: Connection, meter_id: str, group_by: Mapping[str, str], *, added_at: datetime
) -> None:
    if group_by:
        connection.execute(
            insert(_GROUP_BY),
            [
                {"meter_id": meter_id, "key": key, "json_path": path, "added_at": added_at}
                for key, path in sorted(group_by.items())
            ],
        )


def _recorded(connection: Connection, namespace: str, meter_id: str) -> RecordedMeter:
    for recorded in load_meters(connection, namespace):
        if recorded.id == meter_id:
            return recorded
    raise LookupError(f"meter {meter_id} is not recorded in {namespace}")


# --- evaluation ------------------------------------------------------------------------------


def _number(value: object) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, Decimal):
        return value if value.is_finite() else None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        exact = Decimal(repr(value))
        return exact if exact.is_finite() else None
    if isinstance(value, str):
        try:
            parsed = Decimal(value.strip())
        except InvalidOperation:
            return None
        return parsed if parsed.is_finite() else None
    return None


def _scalar_text(value: object) -> str | None:
    if value is None or value is MISSING or isinstance(value, Mapping | list):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    number = _number(value)
    return None if number is None else format_amount(number)


def group_key(groups: Mapping[str, str]) -> str:
    """Return the canonical text of a bucket's group-by values."""
    return json.dumps(dict(sorted(groups.items())), separators=(",", ":"), ensure_ascii=False)


def _evaluate(
    meter: RecordedMeter, event: IncomingEvent
) -> tuple[_Key, Decimal | None, str | None] | str:
    """Return the bucket key and value an event adds to ``meter``, or why it cannot."""
    groups = {}
    for key, path in meter.group_paths:
        text = _scalar_text(path.find(event.data))
        groups[key] = "" if text is None else text
    bucket: _Key = (meter.id, event.subject, group_key(groups), truncate_to_minute(event.time))
    aggregation = meter.meter.aggregation
    if aggregation is Aggregation.COUNT or meter.value_path is None:
        return bucket, None, None
    found = meter.value_path.find(event.data)
    if aggregation is Aggregation.UNIQUE_COUNT:
        distinct = _scalar_text(found)
        if distinct is None:
            return f"meter {meter.meter.slug}: {meter.value_path.text} is missing or not a scalar"
        return bucket, None, distinct
    number = _number(found)
    if number is None:
        return f"meter {meter.meter.slug}: {meter.value_path.text} is missing or not a number"
    return bucket, number, None


def _accumulate(
    deltas: dict[_Key, _Delta],
    key: _Key,
    value: Decimal | None,
    distinct: str | None,
    time: datetime,
) -> None:
    delta = deltas.setdefault(key, _Delta())
    delta.count += 1
    if value is not None:
        delta.total += value
        if delta.latest is None or time > delta.latest[0]:
            delta.latest = (time, value)
    if distinct is not None:
        delta.distinct.add(distinct)


# --- ingestion -------------------------------------------------------------------------------


def ingest(
    connection: Connection,
    namespace: str,
    events: Sequence[IncomingEvent],
    *,
    received_at: datetime,
    horizon: timedelta = DEFAULT_HORIZON,
) -> IngestOutcome:
    """Store ``events`` and add them to their buckets, atomically, in the caller's transaction.

    Raises ``EventRefusedError`` (naming the event's index) for an event older than the horizon.
    """
    _lock_meters(connection, namespace, exclusive=False)
    oldest = received_at - horizon
    for index, event in enumerate(events):
        if event.time < oldest:
            raise EventRefusedError(
                index,
                f"time {format_rfc3339(event.time)} is older than the usage horizon "
                f"({format_rfc3339(oldest)}, {horizon} before receipt)",
            )
    first_copies: dict[tuple[str, str], int] = {}
    for index, event in enumerate(events):
        first_copies.setdefault((event.source, event.id), index)
    meters_by_type: dict[str, list[RecordedMeter]] = defaultdict(list)
    for recorded in load_meters(connection, namespace, event_types={e.type for e in events}):
        meters_by_type[recorded.meter.event_type].append(recorded)

    evaluations: dict[int, list[tuple[_Key, Decimal | None, str | None]]] = {}
    reasons: dict[int, str] = {}
    for index in first_copies.values():
        event = events[index]
        results = [_evaluate(m, event) for m in meters_by_type.get(event.type, [])]
        counted = [r for r in results if not isinstance(r, str)]
        evaluations[index] = counted
        if not counted:
            failures = [r for r in results if isinstance(r, str)]
            reasons[index] = "; ".join(failures) or f"no meter has event type {event.type!r}"

    ordered = sorted(first_copies.items())  # lock the unique index in one order: no deadlock
    rows = [
        {
            "namespace": namespace,
            "source": source,
            "event_id": event_id,
            "event_type": events[index].type,
            "subject": events[index].subject,
            "time": events[index].time,
            "data": json.dumps(events[index].data, default=_json_default, sort_keys=True),
            "received_at": received_at,
            "counted": bool(evaluations[index]),
        }
        for (source, event_id), index in ordered
    ]
    stored: set[tuple[str, str]] = set()
    if rows and connection.dialect.name == "postgresql":
        result = connection.execute(_PG_INSERT_EVENTS, _columns(rows))
        stored.update((row.source, row.event_id) for row in result)
    elif rows:
        statement = (
            sqlite_insert(_EVENTS)
            .on_conflict_do_nothing(index_elements=["namespace", "source", "event_id"])
            .returning(_EVENTS.c.source, _EVENTS.c.event_id)
        )
        stored.update((row.source, row.event_id) for row in connection.execute(statement, rows))

    deltas: dict[_Key, _Delta] = {}
    for (source, event_id), index in sorted(ordered, key=lambda item: item[1]):
        if (source, event_id) in stored:  # in batch order: on a LATEST tie the first one wins
            for key, value, distinct in evaluations[index]:
                _accumulate(deltas, key, value, distinct, events[index].time)
    changes = _apply_deltas(connection, namespace, deltas)
    position = feed.append(connection, namespace, changes, recorded_at=received_at)
    # After the append, under the feed lock: a snapshot saved concurrently is either committed
    # (and deleted here) or refused for the usage entry this batch committed.
    earliest: dict[str, datetime] = {}
    for meter_id, _, _, minute in deltas:
        earliest[meter_id] = min(minute, earliest.get(meter_id, minute))
    for meter_id, minute in sorted(earliest.items()):
        snapshots.invalidate_usage_after(connection, meter_id, minute)
    uncounted = tuple(
        Uncounted(index, events[index].source, events[index].id, reason)
        for index, reason in sorted(reasons.items())
        if (events[index].source, events[index].id) in stored
    )
    return IngestOutcome(
        stored=len(stored),
        duplicates=len(events) - len(stored),
        uncounted=uncounted,
        feed_position=position,
    )


def _json_default(value: object) -> object:
    """Write a Decimal as a JSON number that reads back (``parse_float=Decimal``) exactly."""
    if isinstance(value, Decimal):
        if value == value.to_integral_value():
            return int(value)
        as_float = float(value)
        return as_float if Decimal(repr(as_float)) == value else format_amount(value)
    if isinstance(value, datetime):
        return format_rfc3339(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Turn rows into one list per column, the parameters of an ``unnest`` insert."""
    return {name: [row[name] for row in rows] for name in rows[0]}


# On PostgreSQL batches go in as one array per column through ``unnest``: one short statement
# whose text never changes, so it is parsed and planned once, whatever the batch size.
_PG_INSERT_EVENTS = text(
    """
    INSERT INTO usage_events
        (namespace, source, event_id, event_type, subject, time, data, received_at, counted)
    SELECT * FROM unnest(
        CAST(:namespace AS text[]), CAST(:source AS text[]), CAST(:event_id AS text[]),
        CAST(:event_type AS text[]), CAST(:subject AS text[]), CAST(:time AS timestamptz[]),
        CAST(:data AS text[]), CAST(:received_at AS timestamptz[]), CAST(:counted AS boolean[]))
    ON CONFLICT (namespace, source, event_id) DO NOTHING
    RETURNING source, event_id
    """
)
_PG_NEWER = (
    "EXCLUDED.latest_time IS NOT NULL "
    "AND (b.latest_time IS NULL OR EXCLUDED.latest_time > b.latest_time)"
)
_PG_UPSERT_BUCKETS = text(
    f"""
    INSERT INTO usage_buckets AS b
        (namespace, meter_id, subject, group_key, minute, event_count, value_sum,
         latest_time, latest_value)
    SELECT * FROM unnest(
        CAST(:namespace AS text[]), CAST(:meter_id AS text[]), CAST(:subject AS text[]),
        CAST(:group_key AS text[]), CAST(:minute AS timestamptz[]),
        CAST(:event_count AS bigint[]), CAST(:value_sum AS numeric[]),
        CAST(:latest_time AS timestamptz[]), CAST(:latest_value AS numeric[]))
    ON CONFLICT (namespace, meter_id, subject, group_key, minute) DO UPDATE SET
        event_count = b.event_count + EXCLUDED.event_count,
        value_sum = b.value_sum + EXCLUDED.value_sum,
        latest_time = CASE WHEN {_PG_NEWER} THEN EXCLUDED.latest_time ELSE b.latest_time END,
        latest_value = CASE WHEN {_PG_NEWER} THEN EXCLUDED.latest_value ELSE b.latest_value END
    RETURNING id, meter_id, subject, group_key, minute, event_count, value_sum, latest_time,
        latest_value
    """
).columns(
    id=BigInteger(),
    meter_id=String(),
    subject=String(),
    group_key=String(),
    minute=Instant(),
    event_count=BigInteger(),
    value_sum=Amount(),
    latest_time=Instant(),
    latest_value=Amount(),
)
_PG_INSERT_VALUES = text(
    """
    INSERT INTO usage_bucket_values (bucket_id, value, namespace)
    SELECT * FROM unnest(
        CAST(:bucket_id AS bigint[]), CAST(:value AS text[]), CAST(:namespace AS text[]))
    ON CONFLICT (bucket_id, value) DO NOTHING
    """
)


def _backfill(
    connection: Connection, meter: RecordedMeter, *, now: datetime, horizon: timedelta
) -> list[feed.Change]:
    """Build ``meter``'s buckets from the raw events of its type inside the horizon."""
    rows = connection.execute(
        select(_EVENTS)
        .where(
            _EVENTS.c.namespace == meter.namespace,
            _EVENTS.c.event_type == meter.meter.event_type,
            _EVENTS.c.time >= now - horizon,
        )
        .order_by(_EVENTS.c.id)
    ).all()
    deltas: dict[_Key, _Delta] = {}
    newly_counted: list[int] = []
    for row in rows:
        event = IncomingEvent(
            row.event_id,
            row.source,
            row.event_type,
            row.subject,
            row.time,
            json.loads(row.data, parse_float=Decimal),
        )
        result = _evaluate(meter, event)
        if isinstance(result, str):
            continue
        _accumulate(deltas, result[0], result[1], result[2], event.time)
        if not row.counted:
            newly_counted.append(row.id)
    for start in range(0, len(newly_counted), _CHUNK):
        connection.execute(
            update(_EVENTS)
            .where(_EVENTS.c.id.in_(newly_counted[start : start + _CHUNK]))
            .values(counted=True)
        )
    return _apply_deltas(connection, meter.namespace, deltas)


# --- buckets ---------------------------------------------------------------------------------


def _apply_deltas(
    connection: Connection, namespace: str, deltas: Mapping[_Key, _Delta]
) -> list[feed.Change]:
    """Add ``deltas`` to their buckets; return the feed change with the buckets' new contents.

    The feed carries absolute bucket states, not increments: a reader applying one twice, or
    after its own local ingestion, never counts twice. Bucket rows stay locked until commit and
    positions follow commit order, so a later position always holds the later state.
    """
    if not deltas:
        return []
    keys = sorted(deltas)  # one lock order for every writer
    if connection.dialect.name == "postgresql":
        stored = _upsert_buckets_postgresql(connection, namespace, keys, deltas)
    else:
        stored = _upsert_buckets_sqlite(connection, namespace, keys, deltas)
    distinct = _add_distinct(connection, namespace, stored, deltas)
    slugs: dict[str, str] = {
        row.id: row.slug
        for row in connection.execute(
            select(_METERS.c.id, _METERS.c.slug).where(
                _METERS.c.id.in_(sorted({k[0] for k in keys}))
            )
        )
    }
    states = []
    for key in keys:
        meter_id, subject, groups, minute = key
        row = stored[key]
        states.append(
            BucketState(
                meter_id=meter_id,
                meter_slug=slugs[meter_id],
                subject=subject,
                groups=tuple(sorted(json.loads(groups).items())),
                minute=minute,
                event_count=row.event_count,
                value_sum=row.value_sum,
                latest_time=row.latest_time,
                latest_value=row.latest_value,
                distinct=frozenset(distinct.get(row.id, ())),
            ).to_payload()
        )
    return [feed.Change(USAGE_CHANGE, {"buckets": states})]


@dataclass(frozen=True)
class _Stored:
    id: int
    event_count: int
    value_sum: Decimal
    latest_time: datetime | None
    latest_value: Decimal | None


def _bucket_row(namespace: str, key: _Key, delta: _Delta) -> dict[str, Any]:
    meter_id, subject, groups, minute = key
    return {
        "namespace": namespace,
        "meter_id": meter_id,
        "subject": subject,
        "group_key": groups,
        "minute": minute,
        "event_count": delta.count,
        "value_sum": delta.total,
        "latest_time": None if delta.latest is None else delta.latest[0],
        "latest_value": None if delta.latest is None else delta.latest[1],
    }


def _stored(row: Any) -> _Stored:
    return _Stored(row.id, row.event_count, row.value_sum, row.latest_time, row.latest_value)


def _upsert_buckets_postgresql(
    connection: Connection, namespace: str, keys: Sequence[_Key], deltas: Mapping[_Key, _Delta]
) -> dict[_Key, _Stored]:
    """Add to the buckets in the database itself: concurrent writers serialise on each row."""
    rows = [_bucket_row(namespace, key, deltas[key]) for key in keys]
    return {
        (row.meter_id, row.subject, row.group_key, row.minute): _stored(row)
        for row in connection.execute(_PG_UPSERT_BUCKETS, _columns(rows))
    }


def _upsert_buckets_sqlite(
    connection: Connection, namespace: str, keys: Sequence[_Key], deltas: Mapping[_Key, _Delta]
) -> dict[_Key, _Stored]:
    """Read, add and write in Python: amounts are exact text, and SQLite has one writer."""
    stored: dict[_Key, _Stored] = {}
    existing: dict[_Key, Any] = {}
    by_meter: dict[str, list[_Key]] = defaultdict(list)
    for key in keys:
        by_meter[key[0]].append(key)
    for meter_id, meter_keys in by_meter.items():
        wanted = set(meter_keys)
        rows = connection.execute(
            select(_BUCKETS).where(
                _BUCKETS.c.namespace == namespace,
                _BUCKETS.c.meter_id == meter_id,
                _BUCKETS.c.minute >= min(k[3] for k in meter_keys),
                _BUCKETS.c.minute <= max(k[3] for k in meter_keys),
                _BUCKETS.c.subject.in_(sorted({k[1] for k in meter_keys})),
            )
        )
        for row in rows:
            key = (row.meter_id, row.subject, row.group_key, row.minute)
            if key in wanted:
                existing[key] = row
    updates = []
    new_rows = []
    for key in keys:
        found = existing.get(key)
        delta = deltas[key]
        if found is None:
            new_rows.append(_bucket_row(namespace, key, delta))
            continue
        latest_time, latest_value = found.latest_time, found.latest_value
        if delta.latest is not None and (latest_time is None or delta.latest[0] > latest_time):
            latest_time, latest_value = delta.latest
        stored[key] = _Stored(
            found.id,
            found.event_count + delta.count,
            found.value_sum + delta.total,
            latest_time,
            latest_value,
        )
        updates.append(
            {
                "bucket_id": found.id,
                "new_count": stored[key].event_count,
                "new_sum": stored[key].value_sum,
                "new_latest_time": latest_time,
                "new_latest_value": latest_value,
            }
        )
    if updates:
        connection.execute(
            update(_BUCKETS)
            .where(_BUCKETS.c.id == bindparam("bucket_id"))
            .values(
                event_count=bindparam("new_count"),
                value_sum=bindparam("new_sum", type_=_BUCKETS.c.value_sum.type),
                latest_time=bindparam("new_latest_time", type_=_BUCKETS.c.latest_time.type),
                latest_value=bindparam("new_latest_value", type_=_BUCKETS.c.latest_value.type),
            ),
            updates,
        )
    if new_rows:
        for row in connection.execute(insert(_BUCKETS).returning(*_BUCKETS.c), new_rows):
            stored[(row.meter_id, row.subject, row.group_key, row.minute)] = _stored(row)
    return stored


def _add_distinct(
    connection: Connection,
    namespace: str,
    stored: Mapping[_Key, _Stored],
    deltas: Mapping[_Key, _Delta],
) -> dict[int, set[str]]:
    """Insert the minutes' distinct values; return each touched bucket's full set of values."""
    rows = [
        {"bucket_id": stored[key].id, "value": value, "namespace": namespace}
        for key in sorted(deltas)
        for value in sorted(deltas[key].distinct)
    ]
    if not rows:
        return {}
    if connection.dialect.name == "postgresql":
        connection.execute(_PG_INSERT_VALUES, _columns(rows))
    else:
        connection.execute(
            sqlite_insert(_VALUES).on_conflict_do_nothing(index_elements=["bucket_id", "value"]),
            rows,
        )
    return _distinct_values(
        connection, sorted({stored[key].id for key in deltas if deltas[key].distinct})
    )


def _distinct_values(connection: Connection, bucket_ids: Sequence[int]) -> dict[int, set[str]]:
    values: dict[int, set[str]] = defaultdict(set)
    for start in range(0, len(bucket_ids), _CHUNK):
        for row in connection.execute(
            select(_VALUES.c.bucket_id, _VALUES.c.value).where(
                _VALUES.c.bucket_id.in_(bucket_ids[start : start + _CHUNK])
            )
        ):
            values[row.bucket_id].add(row.value)
    return values


# --- reading ---------------------------------------------------------------------------------


def read_buckets(
    connection: Connection,
    namespace: str,
    meter_slug: str,
    *,
    subjects: Iterable[str],
    filters: Mapping[str, str] | None = None,
    start: datetime,
    end: datetime,
) -> list[UsageBucket]:
    """Return the meter's usage per minute in ``[start, end)`` for ``subjects``.

    Buckets of every subject and group-by value matching ``filters`` (a feature's
    ``meterGroupByFilters``, ``$eq`` on group-by keys) are merged per minute: SUM and COUNT add,
    LATEST keeps the minute's latest value, UNIQUE_COUNT unions the distinct values.
    """
    meter = connection.execute(
        select(_METERS).where(_METERS.c.namespace == namespace, _METERS.c.slug == meter_slug)
    ).one_or_none()
    if meter is None:
        raise LookupError(f"no meter {meter_slug!r} is recorded in namespace {namespace}")
    aggregation = Aggregation(meter.aggregation)
    rows = connection.execute(
        select(_BUCKETS)
        .where(
            _BUCKETS.c.meter_id == meter.id,
            _BUCKETS.c.subject.in_(sorted(set(subjects))),
            _BUCKETS.c.minute >= start,
            _BUCKETS.c.minute < end,
        )
        .order_by(_BUCKETS.c.minute)
    ).all()
    wanted = dict(filters or {})
    matching = [
        row for row in rows if all(json.loads(row.group_key).get(k) == v for k, v in wanted.items())
    ]
    distinct: Mapping[int, set[str]] = {}
    if aggregation is Aggregation.UNIQUE_COUNT and matching:
        distinct = defaultdict(set, _distinct_values(connection, [row.id for row in matching]))
    minutes: dict[datetime, list[Any]] = defaultdict(list)
    for row in matching:
        minutes[row.minute].append(row)
    merged = []
    for minute in sorted(minutes):
        group = minutes[minute]
        if aggregation is Aggregation.SUM:
            merged.append(UsageBucket(minute, amount=sum((r.value_sum for r in group), ZERO)))
        elif aggregation is Aggregation.COUNT:
            merged.append(UsageBucket(minute, amount=Decimal(sum(r.event_count for r in group))))
        elif aggregation is Aggregation.LATEST:
            latest = max(
                (r for r in group if r.latest_time is not None), key=lambda r: r.latest_time
            )
            merged.append(UsageBucket(minute, amount=latest.latest_value))
        else:
            values: frozenset[str] = frozenset().union(*(distinct[r.id] for r in group))
            merged.append(UsageBucket(minute, distinct=values))
    return merged


def count_uncounted(connection: Connection, namespace: str, *, since: datetime) -> int:
    """Return how many events stored since ``since`` no meter could evaluate."""
    return int(
        connection.execute(
            select(func.count())
            .select_from(_EVENTS)
            .where(
                _EVENTS.c.namespace == namespace,
                _EVENTS.c.counted.is_(False),
                _EVENTS.c.received_at >= since,
            )
        ).scalar_one()
    )


def load_bucket_states(
    connection: Connection, namespace: str, *, since: datetime | None = None
) -> list[BucketState]:
    """Return every bucket of ``namespace`` (from minute ``since`` on) as absolute states.

    One query per table: the namespace's meters, buckets and (for UNIQUE_COUNT meters) distinct
    values. This is the bulk load a sidecar starts from before following the feed.
    """
    meters = {
        row.id: (row.slug, row.aggregation)
        for row in connection.execute(
            select(_METERS.c.id, _METERS.c.slug, _METERS.c.aggregation).where(
                _METERS.c.namespace == namespace
            )
        )
    }
    query = select(_BUCKETS).where(_BUCKETS.c.namespace == namespace)
    if since is not None:
        query = query.where(_BUCKETS.c.minute >= since)
    rows = connection.execute(query.order_by(_BUCKETS.c.minute, _BUCKETS.c.id)).all()
    distinct: dict[int, set[str]] = defaultdict(set)
    if any(agg == Aggregation.UNIQUE_COUNT.value for _, agg in meters.values()):
        values = select(_VALUES.c.bucket_id, _VALUES.c.value).where(
            _VALUES.c.namespace == namespace
        )
        for value in connection.execute(values):
            distinct[value.bucket_id].add(value.value)
    return [
        BucketState(
            meter_id=row.meter_id,
            meter_slug=meters[row.meter_id][0],
            subject=row.subject,
            groups=tuple(sorted(json.loads(row.group_key).items())),
            minute=row.minute,
            event_count=row.event_count,
            value_sum=row.value_sum,
            latest_time=row.latest_time,
            latest_value=row.latest_value,
            distinct=frozenset(distinct.get(row.id, ())),
        )
        for row in rows
    ]
