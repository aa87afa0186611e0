"""A canonical dump of a ledger: what two runs of the same Kubernetes writes must share.

Role: read every table and rewrite only what legitimately differs between two runs of the same
sequence of creates, edits and deletes: ledger ids (random ULIDs) become the identity that holds
them (``Kind/name``), Kubernetes uids become ``Kind/name#incarnation``, the namespace becomes
``NS``. An instant in a row owned by a record becomes the Kubernetes fact it came from (DESIGN
D2): ``@created#i`` (the i-th incarnation's creationTimestamp), ``@deleted#i`` (its
deletionTimestamp) or ``@seen:g`` (the instant generation g was first seen, which the log
persists and every retry reuses); instants written in specs stay as they are. Wall-clock
bookkeeping (``recorded_at`` of versions and of the feed, feed positions, row ids, the epoch) is
dropped; the number of feed positions is kept, and a record's rows keep their order. Usage is
measured by the minute, so each fact's minute is a meaning of its own (``@created#0/minute``);
two instants compare equal when they share a meaning (facts may share a second in one run).

Must not: hide a difference a user could see: an extra version, log row, grant, key, feed entry,
or an instant that is not the one its Kubernetes fact says.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

ULID = re.compile(r"\b[0-9A-HJKMNP-TV-Z]{26}\b")
UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
INSTANT = re.compile(r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?")

# Which column names the record a row belongs to (the feed: its payload's "id").
OWNER_COLUMN = {
    "resources": "id",
    "meters": "id",
    "meter_group_by": "meter_id",
    "catalogue_versions": "resource_id",
    "catalogue_keys": "resource_id",
    "reconcile_log": "resource_id",
    "resource_revisions": "resource_id",
    "entitlement_pairs": "entitlement_id",
    "balance_snapshots": "entitlement_id",
}
# Wall-clock bookkeeping, or ids whose order depends on scheduling (see the module docstring).
DROPPED = {
    "balance_snapshots": {"id", "recorded_at"},
    "catalogue_versions": {"recorded_at"},
    "feed": {"recorded_at", "position"},
    "ledger_state": {"epoch"},
    "reconcile_log": {"id"},
    "resource_revisions": {"id"},
}
# The order of a record's rows, where it means something (else: the order of their text).
ORDER_BY = {
    "reconcile_log": "id",
    "resource_revisions": "id",
    "catalogue_versions": "version",
    "feed": "position",
}


@dataclass
class Facts:
    """What the API server said about one run's objects (kept by whoever wrote them)."""

    namespace: str
    uids: dict[str, str] = field(default_factory=dict)  # uid -> Kind/name#i
    created: dict[str, list[datetime]] = field(default_factory=lambda: defaultdict(list))
    deleted: dict[str, list[datetime]] = field(default_factory=lambda: defaultdict(list))

    def record_created(self, kind: str, name: str, obj: Mapping[str, Any]) -> None:
        """Note a created object's uid and creationTimestamp."""
        identity = f"{kind}/{name}"
        metadata = obj["metadata"]
        self.uids[metadata["uid"]] = f"{identity}#{len(self.created[identity])}"
        self.created[identity].append(parse_instant(metadata["creationTimestamp"]))

    def record_deleted(self, kind: str, name: str, obj: Mapping[str, Any]) -> None:
        """Note a deleted object's deletionTimestamp (it must still exist: a finalizer holds it)."""
        self.deleted[f"{kind}/{name}"].append(parse_instant(obj["metadata"]["deletionTimestamp"]))


def parse_instant(text: str) -> datetime:
    """Parse an RFC 3339 instant as the API server or the ledger writes it."""
    return datetime.fromisoformat(text.replace(" ", "T"))


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def read_tables(url: str) -> dict[str, list[dict[str, Any]]]:
    """Return every table's rows as plain dicts (datetimes as ISO text, Decimals as text)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            names = sa.inspect(connection).get_table_names()
            return {
                name: [
                    {k: _plain(v) for k, v in row._mapping.items()}
                    for row in connection.execute(sa.text(f'SELECT * FROM "{name}"'))
                ]
                for name in sorted(names)
            }
    finally:
        engine.dispose()


Canonical = dict[str, dict[str, tuple[str, tuple[frozenset[str], ...]]]]


def _minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


class _Rewriter:
    """Rewrites one run's values into the canonical vocabulary."""

    def __init__(self, tables: Mapping[str, Sequence[Mapping[str, Any]]], facts: Facts) -> None:
        self.facts = facts
        self.identities = {
            row["id"]: f"{row['kind']}/{row['name']}" for row in tables.get("resources", ())
        }
        self.seen: dict[str, dict[datetime, str]] = defaultdict(dict)
        for row in tables.get("reconcile_log", ()):
            if row["action"] == "seen":
                at = parse_instant(str(row["at"]))
                self.seen[row["resource_id"]][at] = f"@seen:{row['generation']}"

    def symbols(self, owner: str | None) -> dict[datetime, set[str]]:
        """Return what each instant a record's rows may hold stands for.

        A fact and its minute (usage is measured by the minute) are different symbols; an
        instant may stand for several when facts share a second or a minute.
        """
        found: dict[datetime, set[str]] = defaultdict(set)
        if owner is None:
            return found
        identity = self.identities.get(owner, "")
        facts: list[tuple[datetime, str]] = []
        facts += [
            (at, f"@created#{i}") for i, at in enumerate(self.facts.created.get(identity, ()))
        ]
        facts += [
            (at, f"@deleted#{i}") for i, at in enumerate(self.facts.deleted.get(identity, ()))
        ]
        facts += [(at, symbol) for at, symbol in self.seen.get(owner, {}).items()]
        for at, symbol in facts:
            found[at].add(symbol)
            found[_minute(at)].add(f"{symbol}/minute")
        created = self.facts.created.get(identity, [])
        for i, at in enumerate(self.facts.deleted.get(identity, ())):
            # An Apply deletion ends at its minute, never before the object's own start (D3).
            start = created[i] if i < len(created) else at
            found[max(_minute(at), start)].add(f"@ended#{i}")
        return found

    def text(
        self, value: str, symbols: Mapping[datetime, set[str]], instants: list[frozenset[str]]
    ) -> str:
        """Rewrite ids, uids and the namespace; move instants into ``instants`` (as ``@?``)."""

        def instant(match: re.Match[str]) -> str:
            try:
                at = parse_instant(match.group(0))
            except ValueError:
                return match.group(0)
            instants.append(frozenset(symbols.get(at, set())) | {at.isoformat()})
            return "@?"

        value = INSTANT.sub(instant, value)
        value = ULID.sub(lambda m: self.identities.get(m.group(0), "<unknown-id>"), value)
        value = UUID.sub(lambda m: self.facts.uids.get(m.group(0), "<unknown-uid>"), value)
        return value.replace(self.facts.namespace, "NS")

    def row(
        self, table: str, row: Mapping[str, Any], owner: str | None
    ) -> tuple[str, tuple[frozenset[str], ...]]:
        symbols = self.symbols(owner)
        dropped = DROPPED.get(table, set())
        instants: list[frozenset[str]] = []
        canonical = {
            key: self.text(value, symbols, instants) if isinstance(value, str) else value
            for key, value in sorted(row.items())
            if key not in dropped
        }
        return json.dumps(canonical, sort_keys=True), tuple(instants)


def _owner(table: str, row: Mapping[str, Any]) -> str | None:
    if table == "feed":
        try:
            payload = json.loads(row["payload"])
        except (TypeError, ValueError):
            return None
        found = payload.get("id") if isinstance(payload, dict) else None
        return found if isinstance(found, str) else None
    column = OWNER_COLUMN.get(table)
    found = row.get(column) if column else None
    return found if isinstance(found, str) else None


def canonical_dump(url: str, facts: Facts) -> Canonical:
    """Return the ledger at ``url`` canonically: per table, rows keyed by record and ordinal.

    A row is its canonical JSON text (instants as ``@?``) and, per instant, the set of what it
    may stand for (its Kubernetes facts and its literal value). Within a record, rows keep the
    order of ``ORDER_BY`` (log ids, versions, feed positions), else the order of their text.
    """
    tables = read_tables(url)
    rewriter = _Rewriter(tables, facts)
    dump: Canonical = {}
    for table, rows in tables.items():
        by_owner: dict[str, list[tuple[Any, str, tuple[frozenset[str], ...]]]] = defaultdict(list)
        order_by = ORDER_BY.get(table)
        for row in rows:
            owner = _owner(table, row)
            text, instants = rewriter.row(table, row, owner)
            name = rewriter.identities.get(owner or "", "-")
            by_owner[name].append((row[order_by] if order_by else 0, text, instants))
        dump[table] = {
            f"{name}[{ordinal}]": (text, instants)
            for name, items in by_owner.items()
            for ordinal, (_, text, instants) in enumerate(sorted(items, key=lambda i: i[:2]))
        }
    return dump


def differences(expected: Canonical, found: Canonical) -> list[str]:
    """Return the rows that differ between two dumps (an instant matches a shared meaning)."""
    lines: list[str] = []
    for table in sorted(set(expected) | set(found)):
        a, b = expected.get(table, {}), found.get(table, {})
        for key in sorted(set(a) | set(b)):
            left, right = a.get(key), b.get(key)
            if left is not None and right is not None and _same(left, right):
                continue
            lines.append(f"{table} {key}:\n  clean: {_show(left)}\n  crash: {_show(right)}")
    return lines


def _same(
    a: tuple[str, tuple[frozenset[str], ...]], b: tuple[str, tuple[frozenset[str], ...]]
) -> bool:
    return (
        a[0] == b[0]
        and len(a[1]) == len(b[1])
        and all(x & y for x, y in zip(a[1], b[1], strict=True))
    )


def _show(row: tuple[str, tuple[frozenset[str], ...]] | None) -> str:
    if row is None:
        return "(none)"
    text, instants = row
    for meanings in instants:
        text = text.replace("@?", "{" + ",".join(sorted(meanings)) + "}", 1)
    return text
