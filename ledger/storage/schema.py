"""The ledger's tables: one ``DeclarativeBase`` with a naming convention, typed columns.

Role: declare every table, constraint and index the migrations create; a test proves the
migrations produce exactly this (``alembic check``). History is append-only: records are keyed by
(namespace, kind, name) with every uid and generation kept as a revision row (DESIGN D1, D2);
usage keeps raw events beside per-minute buckets (D9); the change feed has commit-ordered
positions (D10). Uniqueness the design asks for is a constraint here, not a check in code (D5).

It must not hold behaviour: stores live in their own modules and return domain objects.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from allotment.ledger.storage.types import Amount, Instant

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# An auto-incrementing 64-bit key that SQLite can use as its rowid.
RowId = BigInteger().with_variant(Integer(), "sqlite")
NAMESPACE_LENGTH = 63
NAME_LENGTH = 253
ULID_LENGTH = 26


class Base(DeclarativeBase):
    """The one declarative base of the ledger."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class LedgerStateRow(Base):
    """The single row naming this ledger's epoch and its last allocated feed position."""

    __tablename__ = "ledger_state"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    epoch: Mapped[str] = mapped_column(String(ULID_LENGTH))
    feed_position: Mapped[int] = mapped_column(BigInteger)


class ResourceRow(Base):
    """A ledger record's identity: (namespace, kind, name), never reused for another record."""

    __tablename__ = "resources"
    __table_args__ = (UniqueConstraint("namespace", "kind", "name"),)

    id: Mapped[str] = mapped_column(String(ULID_LENGTH), primary_key=True)
    namespace: Mapped[str] = mapped_column(String(NAMESPACE_LENGTH))
    kind: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    created_at: Mapped[datetime] = mapped_column(Instant())


class ResourceRevisionRow(Base):
    """One recorded (uid, generation) of a record, with the instant it acted at (D1, D2)."""

    __tablename__ = "resource_revisions"
    __table_args__ = (UniqueConstraint("resource_id", "uid", "generation"),)

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    resource_id: Mapped[str] = mapped_column(ForeignKey("resources.id"))
    uid: Mapped[str] = mapped_column(String(64))
    generation: Mapped[int] = mapped_column(BigInteger)
    action: Mapped[str] = mapped_column(String(16))
    acted_at: Mapped[datetime] = mapped_column(Instant())
    spec: Mapped[str] = mapped_column(Text)


class MeterRow(Base):
    """A recorded meter; its slug is unique per namespace (D5)."""

    __tablename__ = "meters"
    __table_args__ = (
        UniqueConstraint("namespace", "slug"),
        Index(None, "namespace", "event_type"),
        CheckConstraint(
            "aggregation IN ('SUM', 'COUNT', 'UNIQUE_COUNT', 'LATEST')", name="aggregation"
        ),
    )

    id: Mapped[str] = mapped_column(ForeignKey("resources.id"), primary_key=True)
    namespace: Mapped[str] = mapped_column(String(NAMESPACE_LENGTH))
    slug: Mapped[str] = mapped_column(String(NAME_LENGTH))
    event_type: Mapped[str] = mapped_column(String(NAME_LENGTH))
    aggregation: Mapped[str] = mapped_column(String(16))
    value_property: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    created_at: Mapped[datetime] = mapped_column(Instant())


class MeterGroupByRow(Base):
    """One group-by key of a meter; keys are only ever added (D4)."""

    __tablename__ = "meter_group_by"

    meter_id: Mapped[str] = mapped_column(ForeignKey("meters.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    json_path: Mapped[str] = mapped_column(String(NAME_LENGTH))
    added_at: Mapped[datetime] = mapped_column(Instant())


class UsageEventRow(Base):
    """A raw usage event, kept for the horizon; (namespace, source, id) is the dedup key (D9)."""

    __tablename__ = "usage_events"
    __table_args__ = (
        UniqueConstraint("namespace", "source", "event_id"),
        Index(None, "namespace", "event_type", "time"),
        Index(None, "time"),
    )

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    namespace: Mapped[str] = mapped_column(String(NAMESPACE_LENGTH))
    source: Mapped[str] = mapped_column(String(NAME_LENGTH))
    event_id: Mapped[str] = mapped_column(String(NAME_LENGTH))
    event_type: Mapped[str] = mapped_column(String(NAME_LENGTH))
    subject: Mapped[str] = mapped_column(String(NAME_LENGTH))
    time: Mapped[datetime] = mapped_column(Instant())
    data: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(Instant())
    counted: Mapped[bool] = mapped_column(Boolean)


class UsageBucketRow(Base):
    """Usage of one meter, subject and group-by values in one minute (D9)."""

    __tablename__ = "usage_buckets"
    __table_args__ = (
        UniqueConstraint("namespace", "meter_id", "subject", "group_key", "minute"),
        Index(None, "meter_id", "subject", "minute"),
    )

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    namespace: Mapped[str] = mapped_column(String(NAMESPACE_LENGTH))
    meter_id: Mapped[str] = mapped_column(ForeignKey("meters.id"))
    subject: Mapped[str] = mapped_column(String(NAME_LENGTH))
    group_key: Mapped[str] = mapped_column(Text)
    minute: Mapped[datetime] = mapped_column(Instant())
    event_count: Mapped[int] = mapped_column(BigInteger)
    value_sum: Mapped[Decimal] = mapped_column(Amount())
    latest_time: Mapped[datetime | None] = mapped_column(Instant())
    latest_value: Mapped[Decimal | None] = mapped_column(Amount())


class UsageBucketValueRow(Base):
    """A distinct value seen in a UNIQUE_COUNT bucket's minute."""

    __tablename__ = "usage_bucket_values"

    bucket_id: Mapped[int] = mapped_column(ForeignKey("usage_buckets.id"), primary_key=True)
    value: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    namespace: Mapped[str] = mapped_column(String(NAMESPACE_LENGTH))


class FeedEntryRow(Base):
    """One change in the feed, at a commit-ordered position, in a versioned contract (D10)."""

    __tablename__ = "feed"
    __table_args__ = (Index(None, "namespace", "position"),)

    position: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    namespace: Mapped[str] = mapped_column(String(NAMESPACE_LENGTH))
    contract_version: Mapped[int] = mapped_column(SmallInteger)
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[str] = mapped_column(Text)
    recorded_at: Mapped[datetime] = mapped_column(Instant())


class SidecarRoleRow(Base):
    """A database role a namespace's sidecar connects as, and the namespace it may see (D12)."""

    __tablename__ = "sidecar_roles"

    role_name: Mapped[str] = mapped_column(String(63), primary_key=True)
    namespace: Mapped[str] = mapped_column(String(NAMESPACE_LENGTH))


class CatalogueVersionRow(Base):
    """One version of a catalogue record's document; versions are only ever appended (D1, D4).

    The current state of a record is its highest version. ``document`` is the read contract's
    JSON (``codec``), the same text the feed carries to sidecars.
    """

    __tablename__ = "catalogue_versions"
    __table_args__ = (Index(None, "namespace", "kind"),)

    resource_id: Mapped[str] = mapped_column(ForeignKey("resources.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    namespace: Mapped[str] = mapped_column(String(NAMESPACE_LENGTH))
    kind: Mapped[str] = mapped_column(String(32))
    document: Mapped[str] = mapped_column(Text)
    recorded_at: Mapped[datetime] = mapped_column(Instant())


class CatalogueKeyRow(Base):
    """A key claimed by one record in a namespace: keys are unique per namespace (D5).

    ``space`` separates what must be unique: ``feature`` keys, ``customer`` keys and subject
    keys (one space, so a string names at most one customer), and ``entitlement`` slots
    (customer key and feature key: one current entitlement per pair).
    """

    __tablename__ = "catalogue_keys"
    __table_args__ = (Index(None, "resource_id"),)

    namespace: Mapped[str] = mapped_column(String(NAMESPACE_LENGTH), primary_key=True)
    space: Mapped[str] = mapped_column(String(32), primary_key=True)
    key: Mapped[str] = mapped_column(String(NAME_LENGTH * 2), primary_key=True)
    resource_id: Mapped[str] = mapped_column(ForeignKey("resources.id"))


class ReconcileLogRow(Base):
    """What the reconciliation did to a record, in order: only ever appended (D1, D2, D3).

    ``action`` is ``applied`` (``spec`` is the spec as written for ``generation``), ``seen``
    (the instant a new generation was first seen: every retry edits at that instant) or
    ``deleted`` (the object is gone and the record orphaned, or ended/voided, under D3).
    """

    __tablename__ = "reconcile_log"
    __table_args__ = (Index(None, "resource_id", "id"),)

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    resource_id: Mapped[str] = mapped_column(ForeignKey("resources.id"))
    action: Mapped[str] = mapped_column(String(16))
    uid: Mapped[str | None] = mapped_column(String(64))
    generation: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[datetime] = mapped_column(Instant())
    spec: Mapped[str | None] = mapped_column(Text)


class BalanceSnapshotRow(Base):
    """A cached engine state of one entitlement at an instant (spec §8.6); deletable, never edited.

    ``meter_id`` lets a late event invalidate the snapshots after its minute without reading
    the catalogue (over-invalidating is safe: a snapshot is only a cache).
    """

    __tablename__ = "balance_snapshots"
    __table_args__ = (
        UniqueConstraint("entitlement_id", "at"),
        Index(None, "meter_id", "at"),
    )

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    namespace: Mapped[str] = mapped_column(String(NAMESPACE_LENGTH))
    entitlement_id: Mapped[str] = mapped_column(String(ULID_LENGTH))
    meter_id: Mapped[str] = mapped_column(ForeignKey("meters.id"))
    at: Mapped[datetime] = mapped_column(Instant())
    document: Mapped[str] = mapped_column(Text)
    recorded_at: Mapped[datetime] = mapped_column(Instant())


class EntitlementPairRow(Base):
    """Which entitlements a (customer, feature) pair has had: an index of the catalogue.

    Reconciling one resource looks its entitlements up here by equality instead of scanning
    the namespace; rows follow the entitlements' current customer key (D5 absorbs move them).
    """

    __tablename__ = "entitlement_pairs"

    namespace: Mapped[str] = mapped_column(String(NAMESPACE_LENGTH), primary_key=True)
    customer_key: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    feature_key: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    entitlement_id: Mapped[str] = mapped_column(ForeignKey("resources.id"), primary_key=True)


class LeaseRow(Base):
    """A strict-mode lease: a slice of one entitlement's period balance one sidecar may approve.

    ``reserved - spent`` is what the holder still claims while ``expires_at`` lies ahead; a
    lease belongs to the usage period starting at ``period_start`` and never changes a balance
    (usage events do). Rows only grow ``spent``; expired rows count for nothing.
    """

    __tablename__ = "leases"

    namespace: Mapped[str] = mapped_column(String(NAMESPACE_LENGTH), primary_key=True)
    entitlement_id: Mapped[str] = mapped_column(String(ULID_LENGTH), primary_key=True)
    period_start: Mapped[datetime] = mapped_column(Instant(), primary_key=True)
    holder: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    reserved: Mapped[Decimal] = mapped_column(Amount())
    spent: Mapped[Decimal] = mapped_column(Amount())
    expires_at: Mapped[datetime] = mapped_column(Instant())
