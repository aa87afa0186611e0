"""The catalogue store: recorded customers, features, meters, entitlements and grants.

Role: append a new version of a record's document (and the same document to the change feed,
so sidecars follow it), read the current version of records, and claim keys that must be unique
per namespace (D5). A record's id is its identity's ULID (``records``), kept for life (D1).
Versions are only ever appended: an edit, an end, a void or a reset is a new version whose
document carries the timeline entry (D4); nothing recorded is rewritten.

It must not decide what to record: the reconciliation does. The caller owns the transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, and_, func, insert, select

from allotment.ledger.core.model import Entitlement, Grant
from allotment.ledger.storage import snapshots
from allotment.ledger.storage.codec import Record, Removed, decode_record, encode_record
from allotment.ledger.storage.feed import Change, append
from allotment.ledger.storage.schema import (
    CatalogueKeyRow,
    CatalogueVersionRow,
    EntitlementPairRow,
)

__all__ = [
    "RECORD_CHANGE",
    "KeyTakenError",
    "claim_key",
    "current_records",
    "entitlements_of",
    "find_record",
    "index_entitlement",
    "key_owner",
    "key_owners",
    "names_of",
    "record_versions",
    "records_by_id",
    "release_key",
    "resource_names",
    "unindex_entitlement",
]

#: The feed entry kind carrying a record document (read contract version 1).
RECORD_CHANGE = "record"

_VERSIONS: Table = CatalogueVersionRow.__table__  # type: ignore[assignment]
_KEYS: Table = CatalogueKeyRow.__table__  # type: ignore[assignment]
_PAIRS: Table = EntitlementPairRow.__table__  # type: ignore[assignment]


class KeyTakenError(ValueError):
    """A key is already claimed by another record in the namespace (D5)."""

    def __init__(self, space: str, key: str, owner: str) -> None:
        super().__init__(f"{space} key {key!r} is already used by record {owner}")
        self.space = space
        self.key = key
        self.owner = owner


def _document_text(document: dict[str, Any]) -> str:
    return json.dumps(document, separators=(",", ":"), sort_keys=True)


def record_versions(
    connection: Connection,
    namespace: str,
    records: Sequence[Record],
    *,
    recorded_at: datetime,
) -> list[int]:
    """Append a new version of each record and its feed entry; return the versions written.

    Appending a document equal to the current one writes nothing and returns the current
    version, so a retried reconciliation is idempotent. A new version of an entitlement or of
    one of its grants (a grant, a void, a reset, an edit) deletes that entitlement's balance
    snapshots, after the feed entry, under the lock a snapshot save takes.
    """
    versions: list[int] = []
    changes: list[Change] = []
    changed_entitlements: set[str] = set()
    for record in records:
        document = encode_record(record)
        text = _document_text(document)
        current = connection.execute(
            select(_VERSIONS.c.version, _VERSIONS.c.document)
            .where(_VERSIONS.c.resource_id == record.id)
            .order_by(_VERSIONS.c.version.desc())
            .limit(1)
        ).one_or_none()
        if current is not None and current.document == text:
            versions.append(current.version)
            continue
        version = 1 if current is None else current.version + 1
        connection.execute(
            insert(_VERSIONS).values(
                resource_id=record.id,
                version=version,
                namespace=namespace,
                kind=document["kind"],
                document=text,
                recorded_at=recorded_at,
            )
        )
        versions.append(version)
        changes.append(Change(RECORD_CHANGE, document))
        if isinstance(record, Entitlement):
            changed_entitlements.add(record.id)
        elif isinstance(record, Grant):
            changed_entitlements.add(record.entitlement_id)
    append(connection, namespace, changes, recorded_at=recorded_at)
    snapshots.invalidate_entitlements(connection, changed_entitlements)
    return versions


def _latest(namespace: str, kinds: Iterable[str] | None = None) -> Any:
    latest = select(_VERSIONS.c.resource_id, func.max(_VERSIONS.c.version).label("version")).where(
        _VERSIONS.c.namespace == namespace
    )
    if kinds is not None:
        latest = latest.where(_VERSIONS.c.kind.in_(list(kinds)))
    subquery = latest.group_by(_VERSIONS.c.resource_id).subquery()
    return select(_VERSIONS.c.document, _VERSIONS.c.version, _VERSIONS.c.recorded_at).join(
        subquery,
        and_(
            _VERSIONS.c.resource_id == subquery.c.resource_id,
            _VERSIONS.c.version == subquery.c.version,
        ),
    )


def current_records(
    connection: Connection, namespace: str, kinds: Iterable[str] | None = None
) -> list[Record]:
    """Return the current version of every record in ``namespace`` (optionally of some kinds).

    A removed record (its last version a removal) is not current.
    """
    query = _latest(namespace, kinds)
    rows = connection.execute(query.order_by(_VERSIONS.c.resource_id))
    records = (decode_record(json.loads(row.document)) for row in rows)
    return [record for record in records if not isinstance(record, Removed)]


def records_by_id(connection: Connection, ids: Iterable[str]) -> list[Record]:
    """Return the current version of each of the given records (removed ones left out)."""
    wanted = sorted(set(ids))
    if not wanted:
        return []
    latest = (
        select(_VERSIONS.c.resource_id, func.max(_VERSIONS.c.version).label("version"))
        .where(_VERSIONS.c.resource_id.in_(wanted))
        .group_by(_VERSIONS.c.resource_id)
        .subquery()
    )
    rows = connection.execute(
        select(_VERSIONS.c.document)
        .join(
            latest,
            and_(
                _VERSIONS.c.resource_id == latest.c.resource_id,
                _VERSIONS.c.version == latest.c.version,
            ),
        )
        .order_by(_VERSIONS.c.resource_id)
    )
    records = (decode_record(json.loads(row.document)) for row in rows)
    return [record for record in records if not isinstance(record, Removed)]


def find_record(connection: Connection, record_id: str) -> Record | None:
    """Return the current version of one record; None when never recorded or removed."""
    row = connection.execute(
        select(_VERSIONS.c.document)
        .where(_VERSIONS.c.resource_id == record_id)
        .order_by(_VERSIONS.c.version.desc())
        .limit(1)
    ).one_or_none()
    record = None if row is None else decode_record(json.loads(row.document))
    return None if isinstance(record, Removed) else record


def key_owner(connection: Connection, namespace: str, space: str, key: str) -> str | None:
    """Return the id of the record holding ``key`` in ``space``, if any."""
    owner: str | None = connection.execute(
        select(_KEYS.c.resource_id).where(
            _KEYS.c.namespace == namespace, _KEYS.c.space == space, _KEYS.c.key == key
        )
    ).scalar_one_or_none()
    return owner


def key_owners(
    connection: Connection, namespace: str, space: str, keys: Iterable[str]
) -> dict[str, str]:
    """Return key -> owner id for those of ``keys`` claimed in ``space``."""
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    rows = connection.execute(
        select(_KEYS.c.key, _KEYS.c.resource_id).where(
            _KEYS.c.namespace == namespace, _KEYS.c.space == space, _KEYS.c.key.in_(wanted)
        )
    )
    return {row.key: row.resource_id for row in rows}


def index_entitlement(
    connection: Connection, namespace: str, customer_key: str, feature_key: str, entitlement_id: str
) -> None:
    """Index an entitlement under its (customer, feature) pair; indexing it again is a no-op."""
    present = connection.execute(
        select(_PAIRS.c.entitlement_id).where(
            _PAIRS.c.namespace == namespace,
            _PAIRS.c.customer_key == customer_key,
            _PAIRS.c.feature_key == feature_key,
            _PAIRS.c.entitlement_id == entitlement_id,
        )
    ).one_or_none()
    if present is None:
        connection.execute(
            insert(_PAIRS).values(
                namespace=namespace,
                customer_key=customer_key,
                feature_key=feature_key,
                entitlement_id=entitlement_id,
            )
        )


def unindex_entitlement(
    connection: Connection, namespace: str, customer_key: str, entitlement_id: str
) -> None:
    """Drop an entitlement's pair entries under ``customer_key`` (its customer changed)."""
    connection.execute(
        _PAIRS.delete().where(
            _PAIRS.c.namespace == namespace,
            _PAIRS.c.customer_key == customer_key,
            _PAIRS.c.entitlement_id == entitlement_id,
        )
    )


def entitlements_of(
    connection: Connection, namespace: str, customer_key: str, feature_key: str | None = None
) -> list[str]:
    """Return the ids of a customer's entitlements (to one feature, if given)."""
    query = select(_PAIRS.c.entitlement_id).where(
        _PAIRS.c.namespace == namespace, _PAIRS.c.customer_key == customer_key
    )
    if feature_key is not None:
        query = query.where(_PAIRS.c.feature_key == feature_key)
    return [row.entitlement_id for row in connection.execute(query)]


def names_of(connection: Connection, ids: Iterable[str]) -> dict[str, str]:
    """Return record id -> the name of the resource that declares it, for the given ids."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    rows = connection.execute(
        select(_KEYS.c.resource_id, _KEYS.c.key).where(
            _KEYS.c.resource_id.in_(wanted), _KEYS.c.space.startswith("ref:")
        )
    )
    return {row.resource_id: row.key for row in rows}


def resource_names(connection: Connection, namespace: str) -> dict[str, str]:
    """Return record id -> the name of the resource that declares it (its ``ref:`` key)."""
    rows = connection.execute(
        select(_KEYS.c.resource_id, _KEYS.c.key).where(
            _KEYS.c.namespace == namespace, _KEYS.c.space.startswith("ref:")
        )
    )
    return {row.resource_id: row.key for row in rows}


def claim_key(connection: Connection, namespace: str, space: str, key: str, owner: str) -> None:
    """Claim ``key`` for ``owner``; claiming one's own key again is a no-op.

    Raises ``KeyTakenError`` when another record holds it. The primary key makes a concurrent
    second claim fail in the database too.
    """
    held = key_owner(connection, namespace, space, key)
    if held == owner:
        return
    if held is not None:
        raise KeyTakenError(space, key, held)
    connection.execute(
        insert(_KEYS).values(namespace=namespace, space=space, key=key, resource_id=owner)
    )


def release_key(connection: Connection, namespace: str, space: str, key: str, owner: str) -> None:
    """Release ``key`` if ``owner`` holds it (an ended entitlement frees its slot)."""
    connection.execute(
        _KEYS.delete().where(
            _KEYS.c.namespace == namespace,
            _KEYS.c.space == space,
            _KEYS.c.key == key,
            _KEYS.c.resource_id == owner,
        )
    )
