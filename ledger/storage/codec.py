"""The read contract's documents: domain records as JSON and back (contract version 1).

Role: one translator between the core's frozen dataclasses and the JSON the ledger stores in
``catalogue_versions`` and the change feed carries to sidecars (DESIGN D10, D11). Amounts travel
as decimal strings and instants as RFC 3339 text, so nothing is rounded through a float. Every
document names its record kind; decoding refuses a kind it does not know.

It must not decide anything: what to record is the reconciliation's business.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

from allotment.ledger.core.model import (
    Aggregation,
    CalendarDuration,
    Consistency,
    Customer,
    Entitlement,
    EntitlementType,
    Expiration,
    ExpirationUnit,
    Feature,
    Grant,
    IssueAfterReset,
    Meter,
    PeriodSource,
    Recurrence,
    UsagePeriodEntry,
    Versioned,
    WhenStale,
)

__all__ = [
    "CUSTOMER_FIELDS",
    "ENTITLEMENT_FIELDS",
    "GRANT_FIELDS",
    "CustomerRecord",
    "FeatureRecord",
    "FieldDecoding",
    "MeterRecord",
    "Record",
    "Removed",
    "decode_record",
    "encode_record",
]

T = TypeVar("T")
Document = dict[str, Any]


@dataclass(frozen=True)
class CustomerRecord:
    """A recorded customer with its ledger id."""

    id: str
    customer: Customer
    created_at: datetime


@dataclass(frozen=True)
class FeatureRecord:
    """A recorded feature with its ledger id."""

    id: str
    feature: Feature
    created_at: datetime


@dataclass(frozen=True)
class MeterRecord:
    """A recorded meter with its ledger id."""

    id: str
    meter: Meter
    created_at: datetime


@dataclass(frozen=True)
class Removed:
    """A record taken out of the current catalogue (an implicit customer a Customer absorbed).

    Its earlier versions stay; it is no longer among the current records.
    """

    id: str
    removed_kind: str
    removed_at: datetime


Record = CustomerRecord | FeatureRecord | MeterRecord | Entitlement | Grant | Removed


# --- scalars ---------------------------------------------------------------------------------


def _instant(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _maybe(value: T | None, encode: Callable[[T], Any]) -> Any:
    return None if value is None else encode(value)


def _amount(value: Decimal) -> str:
    return format(value, "f")


# --- nested values ---------------------------------------------------------------------------


def _recurrence(value: Recurrence) -> Document:
    return {"interval": value.interval.iso(), "anchor": _instant(value.anchor)}


def _parse_recurrence(doc: Mapping[str, Any]) -> Recurrence:
    return Recurrence(CalendarDuration.parse(doc["interval"]), _parse_instant(doc["anchor"]))


def _versions(timeline: tuple[Versioned[T], ...], encode: Callable[[T], Any]) -> list[Document]:
    return [{"since": _instant(v.since), "value": encode(v.value)} for v in timeline]


def _parse_versions(
    docs: list[Mapping[str, Any]], decode: Callable[[Any], T]
) -> tuple[Versioned[T], ...]:
    return tuple(Versioned(_parse_instant(d["since"]), decode(d["value"])) for d in docs)


def _issue(value: IssueAfterReset | None) -> Document | None:
    if value is None:
        return None
    return {"amount": _amount(value.amount), "priority": value.priority}


def _parse_issue(doc: Mapping[str, Any] | None) -> IssueAfterReset | None:
    if doc is None:
        return None
    return IssueAfterReset(Decimal(doc["amount"]), int(doc["priority"]))


def _period_entry(entry: UsagePeriodEntry) -> Document:
    return {
        "start": _instant(entry.start),
        "recurrence": _recurrence(entry.recurrence),
        "source": entry.source.value,
        "preserveOverage": entry.preserve_overage,
    }


def _parse_period_entry(doc: Mapping[str, Any]) -> UsagePeriodEntry:
    return UsagePeriodEntry(
        start=_parse_instant(doc["start"]),
        recurrence=_parse_recurrence(doc["recurrence"]),
        source=PeriodSource(doc["source"]),
        preserve_overage=doc.get("preserveOverage"),
    )


def _identity(value: T) -> T:
    return value


# --- records ---------------------------------------------------------------------------------


def _maybe_instant(text: str | None) -> datetime | None:
    return None if text is None else _parse_instant(text)


def _maybe_decimal(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


def _mapping(doc: Mapping[str, str] | None) -> dict[str, str]:
    return dict(doc or {})


def _parse_period_entries(docs: list[Mapping[str, Any]]) -> tuple[UsagePeriodEntry, ...]:
    return tuple(_parse_period_entry(p) for p in docs)


def _parse_issue_versions(
    docs: list[Mapping[str, Any]],
) -> tuple[Versioned[IssueAfterReset | None], ...]:
    return _parse_versions(docs, _parse_issue)


def _parse_flag_versions(docs: list[Mapping[str, Any]]) -> tuple[Versioned[bool], ...]:
    return _parse_versions(docs, bool)


def _parse_expiration(doc: Mapping[str, Any] | None) -> Expiration | None:
    if doc is None:
        return None
    return Expiration(ExpirationUnit(doc["duration"]), int(doc["count"]))


def _maybe_recurrence(doc: Mapping[str, Any] | None) -> Recurrence | None:
    return None if doc is None else _parse_recurrence(doc)


def _subject_keys(keys: list[str]) -> tuple[str, ...]:
    return tuple(keys)


@dataclass(frozen=True)
class FieldDecoding:
    """How one field of a document becomes one attribute of its record.

    ``attribute`` is the record's (``customer.key``: the ``key`` of a customer record's nested
    ``Customer``); ``decode`` takes the field's value (None where an optional field is absent)
    and depends on nothing else, so a record may be rebuilt field by field. Mapping attributes
    decode to a fresh ``dict``.
    """

    key: str
    attribute: str
    decode: Callable[[Any], Any]
    required: bool = True

    @property
    def mapping(self) -> bool:
        """Tell whether the attribute is a mapping (a fresh ``dict`` per record)."""
        return self.decode is _mapping


def _fields(*rows: tuple[str, str, Callable[[Any], Any], bool]) -> tuple[FieldDecoding, ...]:
    return tuple(FieldDecoding(*row) for row in rows)


#: The entitlement document's fields, in the order the codec writes them.
ENTITLEMENT_FIELDS = _fields(
    ("id", "id", _identity, True),
    ("namespace", "namespace", _identity, True),
    ("name", "name", _identity, True),
    ("customerKey", "customer_key", _identity, True),
    ("featureKey", "feature_key", _identity, True),
    ("type", "type", EntitlementType, True),
    ("createdAt", "created_at", _parse_instant, True),
    ("usagePeriod", "usage_period", _parse_period_entries, True),
    ("measureUsageFrom", "measure_usage_from", _maybe_instant, False),
    ("issueAfterReset", "issue_after_reset", _parse_issue_versions, True),
    ("isSoftLimit", "is_soft_limit", _parse_flag_versions, True),
    ("preserveOverageAtReset", "preserve_overage_at_reset", _parse_flag_versions, True),
    ("config", "config", _identity, False),
    ("activeFrom", "active_from", _maybe_instant, False),
    ("activeTo", "active_to", _maybe_instant, False),
    ("metadata", "metadata", _mapping, False),
)
#: The grant document's fields, in the order the codec writes them.
GRANT_FIELDS = _fields(
    ("id", "id", _identity, True),
    ("namespace", "namespace", _identity, True),
    ("name", "name", _identity, True),
    ("entitlementId", "entitlement_id", _identity, True),
    ("amount", "amount", Decimal, True),
    ("effectiveAt", "effective_at", _parse_instant, True),
    ("createdAt", "created_at", _parse_instant, True),
    ("priority", "priority", int, True),
    ("expiration", "expiration", _parse_expiration, False),
    ("minRolloverAmount", "min_rollover_amount", Decimal, True),
    ("maxRolloverAmount", "max_rollover_amount", _maybe_decimal, False),
    ("recurrence", "recurrence", _maybe_recurrence, False),
    ("voidAt", "void_at", _maybe_instant, False),
    ("metadata", "metadata", _mapping, False),
    ("annotations", "annotations", _mapping, False),
)
#: The customer document's fields (``customer.*``: the nested ``Customer``'s attributes).
CUSTOMER_FIELDS = _fields(
    ("id", "id", _identity, True),
    ("createdAt", "created_at", _parse_instant, True),
    ("key", "customer.key", _identity, True),
    ("name", "customer.name", _identity, True),
    ("subjectKeys", "customer.subject_keys", _subject_keys, True),
    ("metadata", "customer.metadata", _mapping, False),
)


def _attributes(fields: tuple[FieldDecoding, ...], d: Mapping[str, Any]) -> dict[str, Any]:
    return {f.attribute: f.decode(d[f.key] if f.required else d.get(f.key)) for f in fields}


def _encode_entitlement(e: Entitlement) -> Document:
    return {
        "kind": "entitlement",
        "id": e.id,
        "namespace": e.namespace,
        "name": e.name,
        "customerKey": e.customer_key,
        "featureKey": e.feature_key,
        "type": e.type.value,
        "createdAt": _instant(e.created_at),
        "usagePeriod": [_period_entry(p) for p in e.usage_period],
        "measureUsageFrom": _maybe(e.measure_usage_from, _instant),
        "issueAfterReset": _versions(e.issue_after_reset, _issue),
        "isSoftLimit": _versions(e.is_soft_limit, _identity),
        "preserveOverageAtReset": _versions(e.preserve_overage_at_reset, _identity),
        "config": e.config,
        "activeFrom": _maybe(e.active_from, _instant),
        "activeTo": _maybe(e.active_to, _instant),
        "metadata": dict(e.metadata),
    }


def _decode_entitlement(d: Mapping[str, Any]) -> Entitlement:
    return Entitlement(**_attributes(ENTITLEMENT_FIELDS, d))


def _encode_grant(g: Grant) -> Document:
    return {
        "kind": "grant",
        "id": g.id,
        "namespace": g.namespace,
        "name": g.name,
        "entitlementId": g.entitlement_id,
        "amount": _amount(g.amount),
        "effectiveAt": _instant(g.effective_at),
        "createdAt": _instant(g.created_at),
        "priority": g.priority,
        "expiration": _maybe(
            g.expiration, lambda x: {"duration": x.duration.value, "count": x.count}
        ),
        "minRolloverAmount": _amount(g.min_rollover_amount),
        "maxRolloverAmount": _maybe(g.max_rollover_amount, _amount),
        "recurrence": _maybe(g.recurrence, _recurrence),
        "voidAt": _maybe(g.void_at, _instant),
        "metadata": dict(g.metadata),
        "annotations": dict(g.annotations),
    }


def _decode_grant(d: Mapping[str, Any]) -> Grant:
    return Grant(**_attributes(GRANT_FIELDS, d))


def _encode_customer(r: CustomerRecord) -> Document:
    c = r.customer
    return {
        "kind": "customer",
        "id": r.id,
        "createdAt": _instant(r.created_at),
        "key": c.key,
        "name": c.name,
        "subjectKeys": list(c.subject_keys),
        "metadata": dict(c.metadata),
    }


def _decode_customer(d: Mapping[str, Any]) -> CustomerRecord:
    attributes = _attributes(CUSTOMER_FIELDS, d)
    customer = Customer(**{k[9:]: v for k, v in attributes.items() if k.startswith("customer.")})
    return CustomerRecord(attributes["id"], customer, attributes["created_at"])


def _encode_feature(r: FeatureRecord) -> Document:
    f = r.feature
    return {
        "kind": "feature",
        "id": r.id,
        "createdAt": _instant(r.created_at),
        "key": f.key,
        "name": f.name,
        "meterSlug": f.meter_slug,
        "meterGroupByFilters": dict(f.meter_group_by_filters),
        "metadata": dict(f.metadata),
        "whenStale": f.when_stale.value,
        "consistency": f.consistency.value,
    }


def _decode_feature(d: Mapping[str, Any]) -> FeatureRecord:
    feature = Feature(
        key=d["key"],
        name=d["name"],
        meter_slug=d.get("meterSlug"),
        meter_group_by_filters=dict(d.get("meterGroupByFilters") or {}),
        metadata=dict(d.get("metadata") or {}),
        when_stale=WhenStale(d["whenStale"]),
        consistency=Consistency(d["consistency"]),
    )
    return FeatureRecord(d["id"], feature, _parse_instant(d["createdAt"]))


def _encode_meter(r: MeterRecord) -> Document:
    m = r.meter
    return {
        "kind": "meter",
        "id": r.id,
        "createdAt": _instant(r.created_at),
        "slug": m.slug,
        "eventType": m.event_type,
        "aggregation": m.aggregation.value,
        "valueProperty": m.value_property,
        "groupBy": dict(m.group_by),
    }


def _decode_meter(d: Mapping[str, Any]) -> MeterRecord:
    meter = Meter(
        slug=d["slug"],
        event_type=d["eventType"],
        aggregation=Aggregation(d["aggregation"]),
        value_property=d.get("valueProperty"),
        group_by=dict(d.get("groupBy") or {}),
    )
    return MeterRecord(d["id"], meter, _parse_instant(d["createdAt"]))


def _encode_removed(r: Removed) -> Document:
    return {
        "kind": "removed",
        "id": r.id,
        "removedKind": r.removed_kind,
        "removedAt": _instant(r.removed_at),
    }


def _decode_removed(d: Mapping[str, Any]) -> Removed:
    return Removed(d["id"], d["removedKind"], _parse_instant(d["removedAt"]))


def encode_record(record: Record) -> Document:
    """Return the JSON document of a record (contract version 1)."""
    if isinstance(record, Removed):
        return _encode_removed(record)
    if isinstance(record, Entitlement):
        return _encode_entitlement(record)
    if isinstance(record, Grant):
        return _encode_grant(record)
    if isinstance(record, CustomerRecord):
        return _encode_customer(record)
    if isinstance(record, FeatureRecord):
        return _encode_feature(record)
    return _encode_meter(record)


_DECODERS: dict[str, Callable[[Mapping[str, Any]], Record]] = {
    "entitlement": _decode_entitlement,
    "grant": _decode_grant,
    "customer": _decode_customer,
    "feature": _decode_feature,
    "meter": _decode_meter,
    "removed": _decode_removed,
}


def decode_record(document: Mapping[str, Any]) -> Record:
    """Return the record a document holds; refuse a kind this contract does not know."""
    kind = document.get("kind")
    decoder = _DECODERS.get(kind) if isinstance(kind, str) else None
    if decoder is None:
        raise ValueError(f"unknown record kind {kind!r} in the read contract")
    return decoder(document)
