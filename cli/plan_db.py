"""``allotment plan --db URL``: stage the live ledger's state in the plan's scratch ledger.

Role: open the ledger at ``--db`` for reading only (PostgreSQL: a ``READ ONLY`` transaction at
REPEATABLE READ; SQLite: ``PRAGMA query_only`` and one transaction), check its schema revision,
copy the rows the plan needs for the namespaces the manifests name (identities, the
reconciliation log, catalogue versions and keys, meters, usage buckets) into the scratch SQLite
ledger, roll the read transaction back, and tell the plan loop which objects the ledger already
holds (their uid, generation and creation instant, so an object applied as written stays
Unchanged and an edit is a new generation of the same object).

Not copied: raw usage events (a Meter the change adds starts with no usage here, where the
cluster would build its buckets from the raw events of the last 32 days), the feed, snapshots
and roles. It must never write to the ledger at ``--db``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, event, insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from allotment.cli.admission import admit
from allotment.cli.dev import DEFAULT_NAMESPACE, GROUP, Key, Tracked, allotment_key
from allotment.cli.manifests import Document, manifest_files, read_documents
from allotment.cli.plan_build import PlanLoop
from allotment.cli.plan_model import PlanUsageError
from allotment.ledger.apply import recorded_spec
from allotment.ledger.storage.engine import (
    Ledger,
    SchemaMismatchError,
    current_revision,
    head_revision,
    normalize_url,
)
from allotment.ledger.storage.schema import (
    CatalogueKeyRow,
    CatalogueVersionRow,
    EntitlementPairRow,
    MeterGroupByRow,
    MeterRow,
    ReconcileLogRow,
    ResourceRevisionRow,
    ResourceRow,
    UsageBucketRow,
    UsageBucketValueRow,
)

__all__ = ["read_only", "stage_from_ledger"]

_CHUNK = 1000


def _table(row: Any) -> Table:
    table: Table = row.__table__
    return table


RESOURCES = _table(ResourceRow)
REVISIONS = _table(ResourceRevisionRow)
LOG = _table(ReconcileLogRow)
METERS = _table(MeterRow)
GROUP_BY = _table(MeterGroupByRow)
VERSIONS = _table(CatalogueVersionRow)
KEYS = _table(CatalogueKeyRow)
PAIRS = _table(EntitlementPairRow)
BUCKETS = _table(UsageBucketRow)
BUCKET_VALUES = _table(UsageBucketValueRow)


def shown_url(url: str) -> str:
    """Return ``url`` with its password hidden."""
    return make_url(normalize_url(url)).render_as_string(hide_password=True)


def _engine(url: str) -> Engine:
    try:
        parsed = make_url(normalize_url(url))
    except ArgumentError as error:
        raise PlanUsageError(f"--db: {error}") from error
    normalized = parsed.render_as_string(hide_password=False)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(normalized, pool_size=1, max_overflow=0)
    database = parsed.database or ""
    if database in ("", ":memory:") or not Path(database).is_file():
        # Opening a missing SQLite file would create it: refuse instead of writing anything.
        raise PlanUsageError(f"--db: no SQLite ledger at {database or '(none)'}")
    engine = create_engine(normalized, pool_size=1, max_overflow=0)

    @event.listens_for(engine, "connect")
    def _query_only(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA query_only = ON")  # this connection cannot write
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN")

    return engine


@contextmanager
def read_only(url: str) -> Iterator[Connection]:
    """Yield a connection to ``url`` in a read-only transaction that is always rolled back."""
    engine = _engine(url)
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                connection = connection.execution_options(
                    isolation_level="REPEATABLE READ", postgresql_readonly=True
                )
            transaction = connection.begin()
            try:
                yield connection
            finally:
                transaction.rollback()
    finally:
        engine.dispose()


def _check_schema(connection: Connection, url: str) -> None:
    expected, found = head_revision(), current_revision(connection)
    if found != expected:
        shown = "no allotment schema" if found is None else f"schema revision {found}"
        raise SchemaMismatchError(
            f"the ledger at {shown_url(url)} has {shown}, this allotment expects revision "
            f"{expected}: plan with the allotment version that migrated it"
        )


def _copy(source: Connection, target: Connection, table: Table, query: Any) -> int:
    rows = source.execute(query).mappings()
    copied = 0
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(dict(row))
        if len(batch) >= _CHUNK:
            target.execute(insert(table), batch)
            copied += len(batch)
            batch = []
    if batch:
        target.execute(insert(table), batch)
        copied += len(batch)
    return copied


def copy_namespaces(source: Connection, target: Connection, namespaces: Iterable[str]) -> int:
    """Copy the rows of ``namespaces`` a plan needs; return how many usage buckets came along."""
    names = sorted(set(namespaces))
    ids = select(RESOURCES.c.id).where(RESOURCES.c.namespace.in_(names))
    meter_ids = select(METERS.c.id).where(METERS.c.namespace.in_(names))
    _copy(source, target, RESOURCES, select(RESOURCES).where(RESOURCES.c.namespace.in_(names)))
    _copy(source, target, REVISIONS, select(REVISIONS).where(REVISIONS.c.resource_id.in_(ids)))
    _copy(source, target, LOG, select(LOG).where(LOG.c.resource_id.in_(ids)))
    _copy(source, target, METERS, select(METERS).where(METERS.c.namespace.in_(names)))
    _copy(source, target, GROUP_BY, select(GROUP_BY).where(GROUP_BY.c.meter_id.in_(meter_ids)))
    _copy(source, target, VERSIONS, select(VERSIONS).where(VERSIONS.c.namespace.in_(names)))
    _copy(source, target, KEYS, select(KEYS).where(KEYS.c.namespace.in_(names)))
    _copy(source, target, PAIRS, select(PAIRS).where(PAIRS.c.namespace.in_(names)))
    buckets = _copy(source, target, BUCKETS, select(BUCKETS).where(BUCKETS.c.namespace.in_(names)))
    _copy(
        source,
        target,
        BUCKET_VALUES,
        select(BUCKET_VALUES).where(BUCKET_VALUES.c.namespace.in_(names)),
    )
    return buckets


# --- the objects the ledger holds ------------------------------------------------------------


def _documents(paths: list[Path]) -> dict[Key, Document]:
    """Return the allotment documents under ``paths`` by (kind, namespace, name)."""
    found: dict[Key, Document] = {}
    for path in manifest_files(paths):
        try:
            items = list(read_documents(path))
        except (OSError, UnicodeDecodeError):
            continue  # the plan loop reports it when it reads the file
        for item in items:
            if not isinstance(item, Document):
                continue
            key = allotment_key(item.body)
            if key is not None:
                found.setdefault(key, item)
    return found


def _held(connection: Connection, key: Key) -> tuple[str, int, datetime, Any] | None:
    """Return (uid, generation, created_at, spec) of the object the ledger holds, if live."""
    kind, namespace, name = key
    resource = connection.execute(
        select(KEYS.c.resource_id).where(
            KEYS.c.namespace == namespace, KEYS.c.space == f"ref:{kind}", KEYS.c.key == name
        )
    ).scalar_one_or_none()
    if resource is None:
        resource = connection.execute(
            select(RESOURCES.c.id).where(
                RESOURCES.c.namespace == namespace,
                RESOURCES.c.kind == kind,
                RESOURCES.c.name == name,
            )
        ).scalar_one_or_none()
    if resource is None:
        return None
    created_at = connection.execute(
        select(RESOURCES.c.created_at).where(RESOURCES.c.id == resource)
    ).scalar_one()
    rows = connection.execute(
        select(LOG).where(LOG.c.resource_id == resource).order_by(LOG.c.id)
    ).all()
    applied = [row for row in rows if row.action == "applied"]
    if not applied:
        return None
    last = applied[-1]
    if any(row.action == "deleted" and row.uid == last.uid for row in rows):
        return None  # orphaned: a file for it re-adopts the record as a new object
    return last.uid, int(last.generation), created_at, recorded_spec(last.spec)


def _admitted(loop: PlanLoop, key: Key, document: Document | None) -> dict[str, Any] | None:
    if document is None:
        return None
    crd = loop.crds.get((str(document.body.get("apiVersion")), key[0]))
    if crd is None:
        return None
    violations, admitted = admit(document.body, crd.schema, None)
    return None if violations else admitted


def _stage_unrecorded(loop: PlanLoop, key: Key, document: Document | None, now: datetime) -> None:
    """Track an object of ``--current`` the ledger holds nothing for, as the cluster has it.

    It waits, was refused, or had nothing to do (a reset not after the last one): it is
    reconciled again only if the change edits it, so a reset the cluster found nothing to do
    for is not replayed at ``now``.
    """
    stored = _admitted(loop, key, document)
    if document is None or stored is None:
        return
    uid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"allotment-plan/{'/'.join(key)}"))
    loop.tracked[key] = Tracked(key, "current", document.body, stored, uid, 1, now, dirty=False)
    loop.not_recorded.add(key)


def stage_from_ledger(
    url: str,
    scratch: Ledger,
    loop: PlanLoop,
    desired: list[Path],
    current: list[Path] | None,
    now: datetime,
    notes: list[str],
) -> str:
    """Copy the live ledger into ``scratch`` and load ``loop`` with the objects it holds.

    Return the plan's ``usage:`` line.
    """
    wanted = _documents(desired)
    previous = _documents(current) if current else {}
    namespaces = {key[1] for key in (*wanted, *previous)} | {DEFAULT_NAMESPACE}
    with read_only(url) as source:
        _check_schema(source, url)
        with scratch.write() as target:
            buckets = copy_namespaces(source, target, namespaces)
    with scratch.read() as connection:
        for key in sorted({*wanted, *previous}):
            held = _held(connection, key)
            if held is None:
                _stage_unrecorded(loop, key, previous.get(key), now)
                continue
            uid, generation, created_at, spec = held
            stored = _admitted(loop, key, previous.get(key))
            if stored is None:
                stored = {"apiVersion": f"{GROUP}/v1alpha1", "kind": key[0], "spec": {}}
                loop.without_previous.add(key)
            # ``written`` never equals a file, so every desired object is reconciled against the
            # ledger; the sync adds one to the generation, which makes it the ledger's own (an
            # object as the ledger holds it is then Unchanged, a different spec an edit).
            staged = generation - 1 if key in wanted else generation
            loop.tracked[key] = Tracked(
                key, "ledger", {}, stored, uid, staged, created_at, dirty=False
            )
            loop.recorded_specs[key] = spec
    if not current:
        notes.append(
            "deletions: not planned (without --current DIR a missing file cannot be told from an "
            "object applied outside Git, such as a Grant a billing service created)"
        )
    namespaces_shown = ", ".join(sorted(namespaces))
    return (
        f"from the ledger at {shown_url(url)}, read with a read-only transaction "
        f"({buckets} usage buckets of namespaces {namespaces_shown})"
    )
