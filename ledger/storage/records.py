"""Record identities and their revisions: (namespace, kind, name), uid and generation (D1, D2).

Role: find or create the identity row of a resource and append one revision row per recorded
(uid, generation), carrying the instant the action happened at. A revision already recorded is
returned as it was, so a retried reconcile reuses the instant first recorded (D2). Nothing here
is ever updated or deleted.

It must not decide whether a spec change is allowed: the caller compares specs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, insert, select

from allotment.ledger.storage.ids import new_id
from allotment.ledger.storage.schema import ResourceRevisionRow, ResourceRow

_RESOURCES: Table = ResourceRow.__table__  # type: ignore[assignment]
_REVISIONS: Table = ResourceRevisionRow.__table__  # type: ignore[assignment]


class IdentityConflictError(ValueError):
    """A re-created resource's immutable fields differ from the recorded record (D1)."""


@dataclass(frozen=True)
class Revision:
    """A recorded (uid, generation) of a resource and the instant it acted at."""

    resource_id: str
    uid: str
    generation: int
    action: str
    acted_at: datetime
    spec: Mapping[str, Any]


@dataclass(frozen=True)
class Identity:
    """A resource's ledger identity."""

    id: str
    namespace: str
    kind: str
    name: str
    created_at: datetime


def find_identity(connection: Connection, namespace: str, kind: str, name: str) -> Identity | None:
    """Return the identity recorded for (namespace, kind, name), if any."""
    row = connection.execute(
        select(_RESOURCES).where(
            _RESOURCES.c.namespace == namespace,
            _RESOURCES.c.kind == kind,
            _RESOURCES.c.name == name,
        )
    ).one_or_none()
    if row is None:
        return None
    return Identity(row.id, row.namespace, row.kind, row.name, row.created_at)


def create_identity(
    connection: Connection, namespace: str, kind: str, name: str, *, created_at: datetime
) -> Identity:
    """Record a new identity with a fresh ULID; the unique constraint refuses a second one."""
    identity = Identity(new_id(), namespace, kind, name, created_at)
    connection.execute(
        insert(_RESOURCES).values(
            id=identity.id, namespace=namespace, kind=kind, name=name, created_at=created_at
        )
    )
    return identity


def record_revision(
    connection: Connection,
    identity: Identity,
    *,
    uid: str,
    generation: int,
    action: str,
    acted_at: datetime,
    spec: Mapping[str, Any],
) -> Revision:
    """Append the revision (uid, generation), or return the one already recorded for it."""
    existing = connection.execute(
        select(_REVISIONS).where(
            _REVISIONS.c.resource_id == identity.id,
            _REVISIONS.c.uid == uid,
            _REVISIONS.c.generation == generation,
        )
    ).one_or_none()
    if existing is not None:
        return Revision(
            identity.id,
            existing.uid,
            existing.generation,
            existing.action,
            existing.acted_at,
            json.loads(existing.spec),
        )
    connection.execute(
        insert(_REVISIONS).values(
            resource_id=identity.id,
            uid=uid,
            generation=generation,
            action=action,
            acted_at=acted_at,
            spec=json.dumps(spec, sort_keys=True, separators=(",", ":")),
        )
    )
    return Revision(identity.id, uid, generation, action, acted_at, spec)


def revisions(connection: Connection, identity: Identity) -> list[Revision]:
    """Return every revision of ``identity`` in the order recorded."""
    rows = connection.execute(
        select(_REVISIONS).where(_REVISIONS.c.resource_id == identity.id).order_by(_REVISIONS.c.id)
    )
    return [
        Revision(identity.id, r.uid, r.generation, r.action, r.acted_at, json.loads(r.spec))
        for r in rows
    ]
