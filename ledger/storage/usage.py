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
usage entry to the feed; ``UsageDecoder`` reads such entries' text back into bucket states.

It must not commit, read the clock, or apply a feature's group-by filters at write time: those
are applied when usage is read (``read_buckets``).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Table,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from allotment.ledger.core.model import Aggregation, Meter, UsageBucket
from allotment.ledger.core.timeutil import format_rfc3339, parse_rfc3339, truncate_to_minute
from allotment.ledger.storage import feed, records
from allotment.ledger.storage.catalogue import KeyTakenError
from allotment.ledger.storage.jsonpath import MISSING, JsonPath, compile_path
from allotment.ledger.storage.schema import (
    MeterGroupByRow,
    MeterRow,
    UsageBucketRow,
    UsageBucketValueRow,
    UsageEventRow,
)
from allotment.ledger.storage.types import format_amount, format_instant

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
        return _payload(
            self.meter_id,
            self.meter_slug,
            self.subject,
            self.groups,
            format_rfc3339(self.minute),
            self.event_count,
            self.value_sum,
            None if self.latest_time is None else format_rfc3339(self.latest_time),
            self.latest_value,
            self.distinct,
        )

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


def _payload(
    meter_id: str,
    meter_slug: str,
    subject: str,
    groups: tuple[tuple[str, str], ...],
    minute: str,
    event_count: int,
    value_sum: Decimal,
    latest_time: str | None,
    latest_value: Decimal | None,
    distinct: Iterable[str],
) -> dict[str, Any]:
    """Return a bucket's read-contract JSON, its instants already RFC 3339 text."""
    return {
        "meterId": meter_id,
        "meter": meter_slug,
        "subject": subject,
        "groups": dict(groups),
        "minute": minute,
        "eventCount": event_count,
        "valueSum": format_amount(value_sum),
        "latestTime": latest_time,
        "latestValue": None if latest_value is None else format_amount(latest_value),
        "distinct": sorted(distinct),
    }


#: A JSON string the ledger wrote (``json.dumps``, ASCII): no escape, quote or control character.
_STRING = r'"[^"\\\x00-\x1f]*"'
_CAPTURE = r'"([^"\\\x00-\x1f]*)"'
#: The strings of a canonical list or object's inside, in order (``","`` may be inside one).
_STRINGS = re.compile(_CAPTURE).findall
#: One bucket of a usage entry as ``feed.append`` writes it (sorted keys, no spaces, string
#: amounts and instants, ``_payload``'s fields); anything else is left to ``json.loads``.
_CANONICAL_BUCKET = re.compile(
    rf'\{{"distinct":\[((?:{_STRING}(?:,{_STRING})*)?)\]'
    r',"eventCount":(0|[1-9][0-9]*)'
    rf',"groups":\{{((?:{_STRING}:{_STRING}(?:,{_STRING}:{_STRING})*)?)\}}'
    rf',"latestTime":(?:null|{_CAPTURE}),"latestValue":(?:null|{_CAPTURE})'
    rf',"meter":{_CAPTURE},"meterId":{_CAPTURE},"minute":{_CAPTURE}'
    rf',"subject":{_CAPTURE},"valueSum":{_CAPTURE}\}}'
)
#: The instants ``format_rfc3339`` writes: whole seconds or microseconds, in UTC with ``Z``.
_CANONICAL_INSTANT = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{6})?Z"
)
_ENTRY_START = '{"buckets":['
_ENTRY_END = "]}"
#: Texts a ``UsageDecoder`` cache holds before it starts over (each entry repeats a few).
_DECODER_CACHE = 4096
_T = TypeVar("_T")
_K = TypeVar("_K")


class UsageDecoder:
    """Decodes the payload texts of usage feed entries into ``BucketState``s.

    Gives exactly what ``json.loads`` and ``BucketState.from_payload`` give, cheaper: a payload
    in the form ``feed.append`` writes is read by one pattern per bucket without building its
    JSON objects, and the instants, amounts and group-by values a page of entries repeats are
    parsed once per decoder (caches bounded, held by the decoder: make one per read). Any other
    text (escaped strings, numbers as amounts, other keys) goes through ``json.loads`` and
    ``from_payload``, so it decodes, or fails, as it always did.
    """

    def __init__(self) -> None:
        self._instants = _Memo(_parse_instant)
        self._amounts = _Memo(Decimal)
        self._groups = _Memo(_group_pairs)
        self._groups[""] = ()

    def decode(self, text: str) -> list[BucketState]:
        """Return the bucket states of one usage entry's payload text."""
        return list(self.states(text))

    def states(self, text: str) -> Iterator[BucketState]:
        """Yield the bucket states of one usage entry's payload text, each decoded when asked.

        A payload in the canonical form is read a bucket per state; one that turns out not to
        be, part way, is decoded by ``json.loads`` and yields its states from there on (the
        ones read already are the same either way).
        """
        read = 0
        for state in self._canonical(text):
            if state is None:
                break
            read += 1
            yield state
        else:
            return
        payload = json.loads(text)
        for bucket in payload.get("buckets", ())[read:]:
            yield BucketState.from_payload(bucket)

    def _canonical(self, text: str) -> Iterator[BucketState | None]:
        """Yield the states of a payload in the canonical form, then None if it is not one."""
        if not text.startswith(_ENTRY_START):
            yield None
            return
        end = len(text) - len(_ENTRY_END)
        position = len(_ENTRY_START)
        if position == end:
            if not text.endswith(_ENTRY_END):
                yield None
            return
        match = _CANONICAL_BUCKET.match
        instants, amounts, groups = self._instants, self._amounts, self._groups
        new, empty = object.__new__, frozenset[str]()
        while True:
            found = match(text, position)
            if found is None:
                yield None
                return
            distinct, count, group, at, latest, slug, meter_id, minute, subject, total = (
                found.groups()
            )
            group_key = groups.get(group)
            if group_key is None:
                group_key = groups(group)
            # A frozen dataclass's __init__ sets each field through object.__setattr__; the
            # ledger's own text needs no checks, so the fields are set at once (same object).
            state = new(BucketState)
            state.__dict__.update(
                {
                    "meter_id": meter_id,
                    "meter_slug": slug,
                    "subject": subject,
                    "groups": group_key,
                    "minute": instants.get(minute) or instants(minute),
                    "event_count": int(count),
                    "value_sum": amounts.get(total) or amounts(total),
                    "latest_time": None if at is None else instants.get(at) or instants(at),
                    "latest_value": None
                    if latest is None
                    else amounts.get(latest) or amounts(latest),
                    "distinct": frozenset(_STRINGS(distinct)) if distinct else empty,
                }
            )
            yield state
            position = found.end()
            if position == end:
                if not text.endswith(_ENTRY_END):
                    yield None
                return
            if not text.startswith(",", position):
                yield None
                return
            position += 1


class _Memo(dict[_K, _T]):
    """Values computed once each from their key (by ``make``), held by one read or one batch.

    At most ``_DECODER_CACHE`` kept, then it starts over (a page's or a batch's repeats are
    near one another).
    """

    def __init__(self, make: Callable[[_K], _T]) -> None:
        super().__init__()
        self._make = make

    def __call__(self, key: _K) -> _T:
        made = self.get(key)
        if made is None:
            made = self._make(key)
            if len(self) >= _DECODER_CACHE:
                self.clear()
            self[key] = made
        return made


def _group_pairs(text: str) -> tuple[tuple[str, str], ...]:
    """Return the sorted pairs of a canonical groups object's inside (``"k":"v","k2":"v2"``)."""
    strings = _STRINGS(text)  # each delimited by quotes it cannot contain: in order, unambiguous
    return tuple(sorted(dict(zip(strings[::2], strings[1::2], strict=True)).items()))


def _parse_instant(text: str) -> datetime:
    """Parse an instant as ``parse_rfc3339`` does, the canonical ``Z`` text without its regex."""
    if _CANONICAL_INSTANT.fullmatch(text):
        with contextlib.suppress(ValueError):  # out-of-range fields: the strict parser says why
            return datetime.fromisoformat(text)
    return parse_rfc3339(text)


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
    """Return the meters recorded in ``namespace`` (only those of ``event_types`` if given).

    One query (meters joined with their group-by keys); a meter whose recorded fields are
    unchanged reuses its compiled paths.
    """
    postgres = connection.dialect.name == "postgresql"
    query = _METERS_SQL_PG if postgres else _METERS_SQL_SQLITE
    params: dict[str, Any] = {"namespace": namespace}
    if event_types is None:
        query = query.format(types="")
    else:
        types = sorted(set(event_types))
        if not types:
            return []
        if postgres:
            query = query.format(types="AND m.event_type = ANY(CAST(%(types)s AS text[]))")
            params["types"] = types
        else:
            names = [f"t{n}" for n in range(len(types))]
            query = query.format(types=f"AND m.event_type IN ({', '.join(':' + n for n in names)})")
            params.update(zip(names, types, strict=True))
    rows = connection.exec_driver_sql(query, params).all()
    loaded: list[RecordedMeter] = []
    groups: list[tuple[str, str]] = []
    for number, row in enumerate(rows):
        if row[6] is not None:
            groups.append((row[6], row[7]))
        if number + 1 < len(rows) and rows[number + 1][0] == row[0]:
            continue
        created = row[5] if postgres else datetime.fromisoformat(row[5])
        meter_id, slug, event_type, aggregation, value_property = row[:5]
        loaded.append(
            _recorded_meter(
                namespace,
                meter_id,
                slug,
                event_type,
                aggregation,
                value_property,
                created.astimezone(UTC),
                tuple(groups),
            )
        )
        groups = []
    return loaded


# One statement whatever the event types (SQLite's sqlite3 takes named ``:x`` parameters, psycopg
# ``%(x)s``); ``{types}`` is filled with the event-type condition or nothing.
_METERS_SQL_SELECT = (
    "SELECT m.id, m.slug, m.event_type, m.aggregation, m.value_property, m.created_at, g.key, "
    "g.json_path FROM meters AS m LEFT JOIN meter_group_by AS g ON g.meter_id = m.id "
)
_METERS_SQL_SQLITE = _METERS_SQL_SELECT + (
    "WHERE m.namespace = :namespace {types} ORDER BY m.slug, m.id, g.key"
)
_METERS_SQL_PG = _METERS_SQL_SELECT + (
    "WHERE m.namespace = %(namespace)s {types} ORDER BY m.slug, m.id, g.key"
)


def _recorded_meter(
    namespace: str,
    meter_id: str,
    slug: str,
    event_type: str,
    aggregation: str,
    value_property: str | None,
    created_at: datetime,
    groups: tuple[tuple[str, str], ...],
) -> RecordedMeter:
    """Return the recorded meter these fields describe, its paths compiled."""
    meter = Meter(
        slug=slug,
        event_type=event_type,
        aggregation=Aggregation(aggregation),
        value_property=value_property,
        group_by=dict(groups),
    )
    value_path, group_paths = _compile(meter)
    return RecordedMeter(meter_id, namespace, meter, created_at, value_path, group_paths)


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
    connection.exec_driver_sql(
        _PG_LOCK_EXCLUSIVE if exclusive else _PG_LOCK_SHARED,
        {"space": _METER_LOCK_SPACE, "namespace": namespace},
    )


_PG_LOCK_EXCLUSIVE = "SELECT pg_advisory_xact_lock(%(space)s, hashtext(%(namespace)s))"
_PG_LOCK_SHARED = "SELECT pg_advisory_xact_lock_shared(%(space)s, hashtext(%(namespace)s))"


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
    return _group_key(tuple(sorted(groups.items())))


def _group_key(groups: tuple[tuple[str, str], ...]) -> str:
    """Return the canonical text of group-by values sorted by key."""
    if not groups:
        return _NO_GROUPS
    return json.dumps(dict(groups), separators=(",", ":"), ensure_ascii=False)


def _groups(key: str) -> tuple[tuple[str, str], ...]:
    """Return the group-by values a bucket's group key holds, sorted by key."""
    return () if key == _NO_GROUPS else tuple(sorted(json.loads(key).items()))


#: The group key of a bucket of a meter without group-by values (most of them).
_NO_GROUPS = "{}"


def _evaluate(
    meter: RecordedMeter, event: IncomingEvent
) -> tuple[_Key, Decimal | None, str | None] | str:
    """Return the bucket key and value an event adds to ``meter``, or why it cannot."""
    return _evaluate_at(meter, event, truncate_to_minute(event.time))


def _evaluate_at(
    meter: RecordedMeter, event: IncomingEvent, minute: datetime
) -> tuple[_Key, Decimal | None, str | None] | str:
    """``_evaluate`` for an event whose minute is already known."""
    groups = "{}"
    if meter.group_paths:
        groups = _group_key(
            tuple(
                (key, _scalar_text(path.find(event.data)) or "") for key, path in meter.group_paths
            )
        )
    bucket: _Key = (meter.id, event.subject, groups, minute)
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
    Round trips: the meter lock (PostgreSQL), the meters, the events, the buckets (one each per
    500 rows), the distinct values (UNIQUE_COUNT meters only), the feed entry and one snapshot
    invalidation for all the batch's meters.
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
    meters = load_meters(connection, namespace, event_types={e.type for e in events})
    for recorded in meters:
        meters_by_type[recorded.meter.event_type].append(recorded)

    evaluations: dict[int, list[tuple[_Key, Decimal | None, str | None]]] = {}
    reasons: dict[int, str] = {}
    for index in first_copies.values():
        event = events[index]
        minute = truncate_to_minute(event.time)
        results = [_evaluate_at(m, event, minute) for m in meters_by_type.get(event.type, ())]
        counted = [r for r in results if not isinstance(r, str)]
        evaluations[index] = counted
        if not counted:
            failures = [r for r in results if isinstance(r, str)]
            reasons[index] = "; ".join(failures) or f"no meter has event type {event.type!r}"

    ordered = sorted(first_copies.items())  # lock the unique index in one order: no deadlock
    stored = _insert_events(connection, namespace, events, ordered, evaluations, received_at)

    deltas: dict[_Key, _Delta] = {}
    for (source, event_id), index in sorted(ordered, key=lambda item: item[1]):
        if (source, event_id) in stored:  # in batch order: on a LATEST tie the first one wins
            for key, value, distinct in evaluations[index]:
                _accumulate(deltas, key, value, distinct, events[index].time)
    changes = _apply_deltas(connection, namespace, deltas, {m.id: m.meter.slug for m in meters})
    position = feed.append(connection, namespace, changes, recorded_at=received_at)
    # After the append, under the feed lock: a snapshot saved concurrently is either committed
    # (and deleted here) or refused for the usage entry this batch committed.
    earliest: dict[str, datetime] = {}
    for meter_id, _, _, minute in deltas:
        earliest[meter_id] = min(minute, earliest.get(meter_id, minute))
    _invalidate_snapshots(connection, sorted(earliest.items()))
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


def _insert_events(
    connection: Connection,
    namespace: str,
    events: Sequence[IncomingEvent],
    ordered: Sequence[tuple[tuple[str, str], int]],
    evaluations: Mapping[int, Sequence[object]],
    received_at: datetime,
) -> set[tuple[str, str]]:
    """Insert the first copies (in ``ordered`` order); return the (source, id) newly stored.

    ``INSERT ... ON CONFLICT DO NOTHING RETURNING``: an event already stored (by this or a
    concurrent writer) is not returned, so it is acknowledged and never counted again.
    """
    stored: set[tuple[str, str]] = set()
    if not ordered:
        return stored
    encode = _DATA_ENCODER.encode
    if connection.dialect.name == "postgresql":
        rfc3339 = _Memo(format_rfc3339)
        received_text = rfc3339(received_at)
        rows = [
            (
                namespace,
                source,
                event_id,
                events[index].type,
                events[index].subject,
                rfc3339(events[index].time),
                encode(events[index].data),
                received_text,
                bool(evaluations[index]),
            )
            for (source, event_id), index in ordered
        ]
        result = connection.exec_driver_sql(_PG_INSERT_EVENTS, {"rows": _ROWS_ENCODER(rows)})
        stored.update(result.all())
        return stored
    instant = _Memo(format_instant)
    received = instant(received_at)
    for start in range(0, len(ordered), _CHUNK):
        chunk = ordered[start : start + _CHUNK]
        params: list[Any] = []
        for (source, event_id), index in chunk:
            event = events[index]
            params += (
                namespace,
                source,
                event_id,
                event.type,
                event.subject,
                instant(event.time),
                encode(event.data),
                received,
                1 if evaluations[index] else 0,
            )
        sql = _SQLITE_INSERT_EVENTS.format(values=_placeholders(len(chunk), 9))
        stored.update(connection.exec_driver_sql(sql, tuple(params)).all())
    return stored


def _placeholders(rows: int, columns: int) -> str:
    """Return the ``VALUES`` list of a multi-row SQLite insert: ``(?,?),(?,?)``."""
    return ",".join(["(" + ",".join("?" * columns) + ")"] * rows)


def _invalidate_snapshots(connection: Connection, earliest: Sequence[tuple[str, datetime]]) -> None:
    """Delete each meter's snapshots after its minute (``snapshots.invalidate_usage_after``).

    One ``executemany`` for every meter of the batch: one round trip.
    """
    if not earliest:
        return
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(
            _PG_INVALIDATE_SNAPSHOTS, [{"meter_id": m, "at": at} for m, at in earliest]
        )
    else:
        connection.exec_driver_sql(
            _SQLITE_INVALIDATE_SNAPSHOTS, [(m, format_instant(at)) for m, at in earliest]
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


# The raw event's data as stored: the text ``json.dumps(data, default=..., sort_keys=True)``
# writes, from one encoder instead of a new one per event.
_DATA_ENCODER = json.JSONEncoder(default=_json_default, sort_keys=True)


def _columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Turn rows into one list per column, the parameters of an ``unnest`` insert."""
    return {name: [row[name] for row in rows] for name in rows[0]}


# The hot path runs driver SQL (``exec_driver_sql``) whose text is fixed, or on SQLite fixed per
# batch size: no statement is built or compiled per call, and parameters are converted here
# exactly as the ``Instant``/``Amount`` column types convert them (SQLite) or passed as they are
# (PostgreSQL, which the column types leave as they are too).
_EVENT_COLUMNS = (
    "namespace, source, event_id, event_type, subject, time, data, received_at, counted"
)
_BUCKET_COLUMNS = (
    "namespace, meter_id, subject, group_key, minute, event_count, value_sum, latest_time, "
    "latest_value"
)
_BUCKET_RETURNING = (
    "id, meter_id, subject, group_key, minute, event_count, value_sum, latest_time, latest_value"
)
_BUCKET_KEY = "namespace, meter_id, subject, group_key, minute"
_SQLITE_INSERT_EVENTS = (
    f"INSERT INTO usage_events ({_EVENT_COLUMNS}) VALUES {{values}} "
    "ON CONFLICT (namespace, source, event_id) DO NOTHING RETURNING source, event_id"
)
_SQLITE_INVALIDATE_SNAPSHOTS = "DELETE FROM balance_snapshots WHERE meter_id = ? AND at > ?"
_PG_INVALIDATE_SNAPSHOTS = (
    "DELETE FROM balance_snapshots WHERE meter_id = %(meter_id)s AND at > %(at)s"
)
# On PostgreSQL a batch goes in as one JSON array of rows (one text parameter, encoded by the
# json module's C encoder; psycopg dumps text arrays element by element in Python), read as
# ``jsonb`` (parsed once, where ``json`` would be parsed again by every ``->>``): one short
# statement whose text never changes, so it is parsed and planned once, whatever the batch
# size. ``->>`` gives a string exactly as sent: amounts and instants travel as strings
# (``format_amount``, RFC 3339) and are cast exactly.
_ROWS_ENCODER = json.JSONEncoder(separators=(",", ":")).encode
_PG_INSERT_EVENTS = f"""
    INSERT INTO usage_events ({_EVENT_COLUMNS})
    SELECT r->>0, r->>1, r->>2, r->>3, r->>4, CAST(r->>5 AS timestamptz), r->>6,
        CAST(r->>7 AS timestamptz), CAST(r->>8 AS boolean)
    FROM jsonb_array_elements(CAST(%(rows)s AS jsonb)) AS r
    ON CONFLICT (namespace, source, event_id) DO NOTHING
    RETURNING source, event_id
    """
_PG_NEWER = (
    "EXCLUDED.latest_time IS NOT NULL "
    "AND (b.latest_time IS NULL OR EXCLUDED.latest_time > b.latest_time)"
)
_PG_UPSERT_BUCKETS = f"""
    INSERT INTO usage_buckets AS b ({_BUCKET_COLUMNS})
    SELECT r->>0, r->>1, r->>2, r->>3, CAST(r->>4 AS timestamptz), CAST(r->>5 AS bigint),
        CAST(r->>6 AS numeric), CAST(r->>7 AS timestamptz), CAST(r->>8 AS numeric)
    FROM jsonb_array_elements(CAST(%(rows)s AS jsonb)) AS r
    ON CONFLICT ({_BUCKET_KEY}) DO UPDATE SET
        event_count = b.event_count + EXCLUDED.event_count,
        value_sum = b.value_sum + EXCLUDED.value_sum,
        latest_time = CASE WHEN {_PG_NEWER} THEN EXCLUDED.latest_time ELSE b.latest_time END,
        latest_value = CASE WHEN {_PG_NEWER} THEN EXCLUDED.latest_value ELSE b.latest_value END
    RETURNING {_BUCKET_RETURNING}
    """
# SQLite adds amounts with ``allotment_add_amounts``, a function this module registers on the
# connection: exact ``Decimal`` addition of the canonical texts, never a float. Instants are
# fixed-width text, so text order is time order.
_SQLITE_NEWER = (
    "excluded.latest_time IS NOT NULL "
    "AND (latest_time IS NULL OR excluded.latest_time > latest_time)"
)
_SQLITE_UPSERT_BUCKETS = f"""
    INSERT INTO usage_buckets ({_BUCKET_COLUMNS}) VALUES {{values}}
    ON CONFLICT ({_BUCKET_KEY}) DO UPDATE SET
        event_count = event_count + excluded.event_count,
        value_sum = allotment_add_amounts(value_sum, excluded.value_sum),
        latest_time = CASE WHEN {_SQLITE_NEWER} THEN excluded.latest_time ELSE latest_time END,
        latest_value = CASE WHEN {_SQLITE_NEWER} THEN excluded.latest_value ELSE latest_value END
    RETURNING {_BUCKET_RETURNING}
    """
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
    return _apply_deltas(connection, meter.namespace, deltas, {meter.id: meter.meter.slug})


# --- buckets ---------------------------------------------------------------------------------


def _apply_deltas(
    connection: Connection,
    namespace: str,
    deltas: Mapping[_Key, _Delta],
    slugs: Mapping[str, str],
) -> list[feed.Change]:
    """Add ``deltas`` to their buckets; return the feed change with the buckets' new contents.

    The feed carries absolute bucket states, not increments: a reader applying one twice, or
    after its own local ingestion, never counts twice. Bucket rows stay locked until commit and
    positions follow commit order, so a later position always holds the later state. ``slugs``
    names the meters of ``deltas`` (by id), as recorded in this transaction.
    """
    if not deltas:
        return []
    keys = sorted(deltas)  # one lock order for every writer
    if connection.dialect.name == "postgresql":
        stored = _upsert_buckets_postgresql(connection, namespace, keys, deltas)
    else:
        stored = _upsert_buckets_sqlite(connection, namespace, keys, deltas)
    distinct = _add_distinct(connection, namespace, stored, deltas)
    rfc3339 = _Memo(format_rfc3339)  # a batch's buckets share a few minutes and instants
    states = []
    for key in keys:
        meter_id, subject, groups, minute = key
        row = stored[key]
        states.append(
            _payload(
                meter_id,
                slugs[meter_id],
                subject,
                _groups(groups),
                rfc3339(minute),
                row.event_count,
                row.value_sum,
                None if row.latest_time is None else rfc3339(row.latest_time),
                row.latest_value,
                distinct.get(row.id, ()),
            )
        )
    return [feed.Change(USAGE_CHANGE, {"buckets": states})]


@dataclass(frozen=True)
class _Stored:
    id: int
    event_count: int
    value_sum: Decimal
    latest_time: datetime | None
    latest_value: Decimal | None


def _upsert_buckets_postgresql(
    connection: Connection, namespace: str, keys: Sequence[_Key], deltas: Mapping[_Key, _Delta]
) -> dict[_Key, _Stored]:
    """Add to the buckets in the database itself: concurrent writers serialise on each row."""
    rfc3339 = _Memo(format_rfc3339)
    rows = []
    for key in keys:
        meter_id, subject, groups, minute = key
        delta = deltas[key]
        latest = delta.latest
        rows.append(
            (
                namespace,
                meter_id,
                subject,
                groups,
                rfc3339(minute),
                delta.count,
                format_amount(delta.total),
                None if latest is None else rfc3339(latest[0]),
                None if latest is None else format_amount(latest[1]),
            )
        )
    stored: dict[_Key, _Stored] = {}
    result = connection.exec_driver_sql(_PG_UPSERT_BUCKETS, {"rows": _ROWS_ENCODER(rows)})
    for row in result.all():
        bucket_id, meter_id, subject, groups, minute, count, total, latest_time, latest = row
        stored[(meter_id, subject, groups, minute.astimezone(UTC))] = _Stored(
            bucket_id,
            count,
            total,
            None if latest_time is None else latest_time.astimezone(UTC),
            latest,
        )
    return stored


def _upsert_buckets_sqlite(
    connection: Connection, namespace: str, keys: Sequence[_Key], deltas: Mapping[_Key, _Delta]
) -> dict[_Key, _Stored]:
    """Add to the buckets in one upsert per 500 buckets (amounts added exactly, as Decimal)."""
    _register_functions(connection)
    instant = _Memo(format_instant)
    stored: dict[_Key, _Stored] = {}
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        by_text: dict[tuple[str, str, str, str], _Key] = {}
        params: list[Any] = []
        for key in chunk:
            meter_id, subject, groups, minute = key
            delta = deltas[key]
            minute_text = instant(minute)
            by_text[(meter_id, subject, groups, minute_text)] = key
            latest = delta.latest
            params += (
                namespace,
                meter_id,
                subject,
                groups,
                minute_text,
                delta.count,
                format_amount(delta.total),
                None if latest is None else instant(latest[0]),
                None if latest is None else format_amount(latest[1]),
            )
        sql = _SQLITE_UPSERT_BUCKETS.format(values=_placeholders(len(chunk), 9))
        for row in connection.exec_driver_sql(sql, tuple(params)).all():
            bucket_id, meter_id, subject, groups, minute_text, count, total, latest_time, latest = (
                row
            )
            stored[by_text[(meter_id, subject, groups, minute_text)]] = _Stored(
                bucket_id,
                count,
                Decimal(total),
                None if latest_time is None else datetime.fromisoformat(latest_time),
                None if latest is None else Decimal(latest),
            )
    return stored


def _add_amounts(stored: str, added: str) -> str:
    """Return the canonical text of the sum of two canonical amount texts, exactly."""
    return format_amount(Decimal(stored) + Decimal(added))


def _register_functions(connection: Connection) -> None:
    """Register ``allotment_add_amounts`` once on this SQLite connection (for its life).

    Registering again would expire every prepared statement of the connection.
    """
    pooled = connection.connection
    if not pooled.info.get("allotment_add_amounts"):
        raw: Any = pooled.dbapi_connection
        raw.create_function("allotment_add_amounts", 2, _add_amounts, deterministic=True)
        pooled.info["allotment_add_amounts"] = True


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
