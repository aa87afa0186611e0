"""Writing a namespace into a real ledger for sidecar tests, through storage's own functions.

Each helper records one resource the way the operator's reconciliation would (an identity, then
a record version that also reaches the change feed), so the sidecar reads exactly what it reads
in production: ``records.create_identity``, ``catalogue.record_versions``, ``usage.record_meter``
and ``usage.ingest``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from allotment.ledger.core.model import (
    Aggregation,
    CalendarDuration,
    Customer,
    Entitlement,
    EntitlementType,
    Expiration,
    ExpirationUnit,
    Feature,
    Grant,
    IssueAfterReset,
    Meter,
    Recurrence,
    Versioned,
    WhenStale,
)
from allotment.ledger.core.periods import new_usage_period
from allotment.ledger.storage import catalogue, feed, records, usage
from allotment.ledger.storage.codec import CustomerRecord, FeatureRecord, Record
from allotment.ledger.storage.engine import Ledger

NS = "team-a"
T0 = datetime(2026, 11, 1, 0, 0, tzinfo=UTC)


@dataclass
class Seeder:
    """Records resources of one namespace in a ledger."""

    ledger: Ledger
    namespace: str = NS
    now: datetime = T0
    _names: dict[str, int] = field(default_factory=dict)

    def _identity(self, kind: str, name: str) -> str:
        with self.ledger.write() as conn:
            return records.create_identity(conn, self.namespace, kind, name, created_at=self.now).id

    def put(self, *recorded: Record) -> int:
        """Record new versions of records; return the feed head afterwards."""
        with self.ledger.write() as conn:
            catalogue.record_versions(conn, self.namespace, list(recorded), recorded_at=self.now)
            return feed.feed_head(conn)

    def head(self) -> int:
        """Return the ledger's feed head."""
        with self.ledger.read() as conn:
            return feed.feed_head(conn)

    def meter(
        self,
        slug: str,
        aggregation: Aggregation = Aggregation.SUM,
        value_property: str | None = "$.tokens",
        group_by: Mapping[str, str] | None = None,
        event_type: str = "prompt",
    ) -> Meter:
        meter = Meter(slug, event_type, aggregation, value_property, dict(group_by or {}))
        with self.ledger.write() as conn:
            usage.record_meter(
                conn,
                self.namespace,
                slug.replace("_", "-"),
                meter,
                uid=str(uuid.uuid4()),
                generation=1,
                acted_at=self.now,
                now=self.now,
            )
        return meter

    def feature(
        self,
        key: str,
        meter_slug: str | None = None,
        *,
        when_stale: WhenStale = WhenStale.LAST_KNOWN,
        filters: Mapping[str, str] | None = None,
    ) -> FeatureRecord:
        record = FeatureRecord(
            self._identity("Feature", key.replace("_", "-")),
            Feature(
                key,
                key.replace("_", " ").title(),
                meter_slug=meter_slug,
                meter_group_by_filters=dict(filters or {}),
                when_stale=when_stale,
            ),
            self.now,
        )
        self.put(record)
        return record

    def customer(self, key: str, subject_keys: Sequence[str] = ()) -> CustomerRecord:
        record = CustomerRecord(
            self._identity("Customer", key),
            Customer(key, key.title(), tuple(subject_keys)),
            self.now,
        )
        self.put(record)
        return record

    def entitlement(
        self,
        customer: str,
        feature: str,
        kind: EntitlementType,
        *,
        interval: str | None = "MONTH",
        anchor: datetime | None = None,
        issue: Decimal | None = None,
        soft_limit: bool = False,
        config: str | None = None,
        active_to: datetime | None = None,
    ) -> Entitlement:
        name = f"{customer}-{feature.replace('_', '-')}"
        metered = kind is EntitlementType.METERED
        period = (
            new_usage_period(CalendarDuration.parse(interval), anchor or self.now, self.now)
            if interval
            else ()
        )
        entitlement = Entitlement(
            id=self._identity("Entitlement", name),
            namespace=self.namespace,
            name=name,
            customer_key=customer,
            feature_key=feature,
            type=kind,
            created_at=self.now,
            usage_period=period,
            measure_usage_from=self.now if metered else None,
            issue_after_reset=(
                (Versioned(self.now, IssueAfterReset(issue)),) if issue is not None else ()
            ),
            is_soft_limit=(Versioned(self.now, soft_limit),) if metered else (),
            preserve_overage_at_reset=(Versioned(self.now, False),) if metered else (),
            config=config,
            active_to=active_to,
        )
        self.put(entitlement)
        return entitlement

    def grant(
        self,
        entitlement: Entitlement,
        amount: str,
        *,
        effective_at: datetime | None = None,
        priority: int = 0,
        expiration: tuple[ExpirationUnit, int] | None = None,
        recurrence: str | None = None,
        name: str | None = None,
    ) -> Grant:
        self._names[entitlement.name] = self._names.get(entitlement.name, 0) + 1
        grant_name = name or f"{entitlement.name}-grant-{self._names[entitlement.name]}"
        effective = effective_at or self.now
        grant = Grant(
            id=self._identity("Grant", grant_name),
            namespace=self.namespace,
            name=grant_name,
            entitlement_id=entitlement.id,
            amount=Decimal(amount),
            effective_at=effective,
            created_at=self.now,
            priority=priority,
            expiration=Expiration(*expiration) if expiration else None,
            recurrence=(
                Recurrence(CalendarDuration.parse(recurrence), effective) if recurrence else None
            ),
        )
        self.put(grant)
        return grant

    def events(
        self, subject: str, *amounts: tuple[datetime, Mapping[str, Any]], event_type: str = "prompt"
    ) -> int:
        """Ingest events (time, data) for a subject; return the feed head afterwards."""
        incoming = [
            usage.IncomingEvent(
                id=str(uuid.uuid4()),
                source="tests",
                type=event_type,
                subject=subject,
                time=time,
                data=dict(data),
            )
            for time, data in amounts
        ]
        with self.ledger.write() as conn:
            usage.ingest(conn, self.namespace, incoming, received_at=self.now)
            return feed.feed_head(conn)
