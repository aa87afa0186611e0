"""Build a plan: apply the desired YAML to a scratch ledger and compare values before and after.

Role: the engine of ``allotment plan``. A scratch SQLite ledger holds the current state (built
from ``--current DIR`` with ``allotment dev``'s own loop, or copied from a live ledger by
``plan_db``); the entitlement values are read from it (``allotment.ledger.values``); then the
desired YAML is admitted and reconciled into it exactly as ``allotment dev`` does it (the same
``DevLoop``: apiserver admission with the old object for transition rules, one uid per tracked
object, a new generation for an edit, a deletion for a removed document, name order until
nothing moves, all at one instant ``now``); the values are read again, and the differences
become a ``Plan``.

It must never write to any ledger but its own scratch one, and it never talks to a cluster.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from allotment.cli.dev import DevLoop, Key, Tracked
from allotment.cli.manifests import Document
from allotment.cli.plan_model import (
    Change,
    Deletion,
    EntitlementPlan,
    FieldChange,
    GrantChange,
    Plan,
    PlanRollout,
    ResourcePlan,
)
from allotment.cli.plan_rollouts import Around, boundaries_of, next_values, plan_rollout
from allotment.cli.validate import subscription_removal
from allotment.ledger.apply import Outcome
from allotment.ledger.core import reconcile as rc
from allotment.ledger.core.grants import expires_at
from allotment.ledger.core.model import Entitlement, EntitlementValue, Grant
from allotment.ledger.core.periods import next_reset_after
from allotment.ledger.core.resources import (
    ParseError,
    PlanSpec,
    Spec,
    default_key,
    parse_resource,
)
from allotment.ledger.core.timeutil import format_rfc3339
from allotment.ledger.storage.engine import Ledger
from allotment.ledger.values import NamespaceRecords, load_records, status_value, values_of

__all__ = ["FixedClock", "PlanLoop", "Snapshot", "build_plan", "take_snapshot"]

#: The reason a Plan's outcome gives while its rollout is not finished (``ledger.apply``).
ROLLING_OUT = "RollingOut"
#: Passes a plan makes to finish rollouts (a chunk each): 10^7 subscribers at 500 a chunk.
_MAX_CHUNKS = 20_000


@dataclass(frozen=True)
class FixedClock:
    """A clock that always reads one instant: a plan happens at ``--now``."""

    instant: datetime

    def now(self) -> datetime:
        """Return the plan's instant."""
        return self.instant


@dataclass
class PlanLoop(DevLoop):
    """``allotment dev``'s loop, recording outcomes and refusals instead of printing them."""

    reports: dict[Key, Outcome] = field(default_factory=dict)
    admission: dict[Key, list[str]] = field(default_factory=dict)
    other: list[str] = field(default_factory=list)
    #: Objects admitted without transition rules (their previous YAML is not known).
    without_previous: set[Key] = field(default_factory=set)
    #: The specs the ledger holds for objects whose previous YAML is not known (``--db``).
    recorded_specs: dict[Key, Spec] = field(default_factory=dict)
    #: Objects of the current set the ledger holds no record of (waiting, refused, no-op).
    not_recorded: set[Key] = field(default_factory=set)
    _admitting: Key | None = None

    def say(self, line: str) -> None:
        """Keep the line: while admitting an object it is that object's refusal."""
        if self._admitting is not None:
            self.admission.setdefault(self._admitting, []).append(line)
        else:
            self.other.append(line)

    def _admit(
        self, key: Key, document: Document, body: dict[str, Any], old: Tracked | None
    ) -> dict[str, Any] | None:
        self._admitting = key
        try:
            previous = None if key in self.without_previous else old
            return super()._admit(key, document, body, previous)
        finally:
            self._admitting = None

    def _report(self, tracked: Tracked, outcome: Outcome) -> None:
        self.reports[tracked.key] = outcome

    def reconcile(self, now: datetime) -> None:
        """Reconcile as dev does, and take every Plan's rollout to its end (dev's loop takes a
        chunk of subscribers per pass; a plan shows the whole rollout)."""
        super().reconcile(now)
        for _ in range(_MAX_CHUNKS):
            rolling = [
                t
                for t in self.tracked.values()
                if t.outcome is not None and t.outcome.reason == ROLLING_OUT
            ]
            if not rolling:
                return
            super().reconcile(now)

    def forget(self) -> None:
        """Clear what was recorded, before the next sync."""
        self.reports.clear()
        self.admission.clear()
        self.other.clear()


# --- values before and after -----------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """A scratch ledger's records and entitlement values at the plan's instant."""

    records: Mapping[str, NamespaceRecords]
    values: Mapping[str, Mapping[str, EntitlementValue]]


def take_snapshot(ledger: Ledger, namespaces: Iterable[str], now: datetime) -> Snapshot:
    """Read the records and values of ``namespaces`` from the scratch ledger."""
    records: dict[str, NamespaceRecords] = {}
    values: dict[str, Mapping[str, EntitlementValue]] = {}
    with ledger.read() as connection:
        for namespace in sorted(set(namespaces)):
            records[namespace] = load_records(connection, namespace)
            values[namespace] = _values(connection, records[namespace], now)
    return Snapshot(records, values)


def _values(
    connection: Connection, records: NamespaceRecords, now: datetime
) -> dict[str, EntitlementValue]:
    return values_of(connection, records, sorted(records.entitlements), now)


# --- the plan --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Before:
    stored: dict[str, Any]
    generation: int


def build_plan(
    loop: PlanLoop,
    desired: list[Path],
    now: datetime,
    *,
    usage: str,
    notes: Iterable[str] = (),
) -> Plan:
    """Apply ``desired`` through ``loop`` (which holds the current state) and return the plan."""
    before_tracked = {
        key: _Before(t.stored, t.generation)
        for key, t in loop.tracked.items()
        if t.deleted_at is None
    }
    namespaces = {key[1] for key in loop.tracked}
    before = take_snapshot(loop.ledger, namespaces | {"default"}, now)
    next_before = next_values(loop.ledger, before.records, now)
    loop.forget()
    loop.paths = list(desired)
    loop.sync()
    namespaces |= {key[1] for key in (*loop.tracked, *loop.admission, *loop.reports)}
    after = take_snapshot(loop.ledger, namespaces | {"default"}, now)
    next_after = next_values(loop.ledger, after.records, now, boundaries_of(next_before))
    around = Around(
        before.records, after.records, before.values, after.values, next_before, next_after
    )

    resources: list[ResourcePlan] = []
    unchanged = 0
    keys = sorted(
        {*before_tracked, *loop.tracked, *loop.admission, *loop.reports},
        key=lambda k: (k[1], _KIND_ORDER.get(k[0], 99), k[2]),
    )
    for key in keys:
        planned = _resource_plan(key, before_tracked.get(key), loop, before, now)
        if planned is None:
            unchanged += 1
        else:
            resources.append(planned)
    problems = tuple(
        line.removeprefix("Refused ")
        for line in loop.other
        if line.startswith(("Refused", "Skipped"))
    )
    entitlements = _entitlement_plans(before, after, resources, now)
    rollouts = tuple(
        rollout
        for resource in resources
        if resource.kind == "Plan" and resource.change == "change" and not resource.refused
        if (rollout := _rollout(resource, before_tracked, loop, around, now)) is not None
    )
    return Plan(
        now=now,
        usage=usage,
        resources=tuple(resources),
        entitlements=entitlements,
        unchanged=unchanged,
        notes=tuple(notes),
        problems=problems,
        rollouts=rollouts,
    )


def _plan_spec(key: Key, stored: Mapping[str, Any]) -> PlanSpec | None:
    kind, namespace, name = key
    body = {
        "apiVersion": stored.get("apiVersion", "allotment.dev/v1alpha1"),
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": stored.get("spec") or {},
    }
    try:
        spec = parse_resource(body).spec
    except ParseError:
        return None
    return spec if isinstance(spec, PlanSpec) else None


def _rollout(
    resource: ResourcePlan,
    before_tracked: Mapping[Key, _Before],
    loop: PlanLoop,
    around: Around,
    now: datetime,
) -> PlanRollout | None:
    """Return what a changed Plan does to its subscribers (None: its specs cannot be read)."""
    key: Key = (resource.kind, resource.namespace, resource.name)
    tracked, was = loop.tracked.get(key), before_tracked.get(key)
    recorded = loop.recorded_specs.get(key)
    old = recorded if isinstance(recorded, PlanSpec) else None
    if old is None and was is not None:
        old = _plan_spec(key, was.stored)
    new = _plan_spec(key, tracked.stored) if tracked is not None else None
    if old is None or new is None:
        return None
    plan_key = new.key or default_key(resource.name)
    return plan_rollout(resource.namespace, resource.name, old, new, plan_key, around, now, _shown)


_KIND_ORDER = {
    "Meter": 0,
    "Feature": 1,
    "Customer": 2,
    "Entitlement": 3,
    "Grant": 4,
    "EntitlementReset": 5,
    "Plan": 6,
    "Subscription": 7,
}


def _resource_plan(
    key: Key, was: _Before | None, loop: PlanLoop, before: Snapshot, now: datetime
) -> ResourcePlan | None:
    kind, namespace, name = key
    tracked = loop.tracked.get(key)
    admission = tuple(loop.admission.get(key, ()))
    outcome = tracked.outcome if tracked is not None else loop.reports.get(key)
    if tracked is not None and key not in loop.reports and not tracked.dirty:
        # Not reconciled in this sync: it was Unchanged, or it still waits or is refused.
        outcome = (
            tracked.outcome if tracked.outcome is not None and not tracked.outcome.ready else None
        )
    change: Change
    if was is None:
        change = "create"
    elif tracked is None or tracked.deleted_at is not None:
        change = "delete"
    elif admission or tracked.generation != was.generation:
        change = "change"
    else:
        change = "unchanged"
    fields: tuple[FieldChange, ...] = ()
    if change == "change" and was is not None and tracked is not None and not admission:
        fields = tuple(_changes_of(key, was, tracked, loop, before, now))
        reconciled = outcome is not None and outcome.action != "Unchanged"
        if not fields and not reconciled:
            change = "unchanged"  # metadata only, or the ledger already holds it as written
    refusals = list(_refusals(admission, f"{kind} {namespace}/{name}"))
    waiting = None
    if outcome is not None and not outcome.ready:
        if outcome.action == "Wait":
            waiting = f"{outcome.reason}: {outcome.message}"
        else:
            refusals.append(f"{outcome.reason}: {outcome.message}")
    if (
        change == "unchanged"
        and key in loop.not_recorded
        and outcome is not None
        and outcome.ready
        and outcome.action not in ("Unchanged", "Noop")
    ):
        change = "create"  # it waited or was refused so far, and this change records it
    if change == "unchanged" and not refusals and waiting is None:
        return None
    deletion = None
    warnings: tuple[str, ...] = ()
    if change == "delete" and was is not None:
        deletion = _deletion(kind, was.stored, outcome, key in loop.not_recorded)
        warnings = tuple(_removal_warnings(kind, namespace, name, was.stored, deletion))
    result = outcome.action if outcome is not None else ("Refuse" if admission else "Unchanged")
    message = outcome.message if outcome is not None else ""
    return ResourcePlan(
        kind=kind,
        namespace=namespace,
        name=name,
        change=change,
        result=result,
        message=message,
        fields=fields,
        deletion=deletion,
        refusals=tuple(refusals),
        waiting=waiting,
        warnings=warnings,
    )


def _refusals(lines: Iterable[str], title: str) -> Iterable[str]:
    """Admission lines as the apiserver words them, each after the file and line it is about.

    ``allotment dev`` says ``Refused TITLE (FILE:LINE): MESSAGE``; the plan names the object
    already, so it keeps ``FILE:LINE: MESSAGE`` (and drops dev's "stays as it was" lines).
    """
    for line in lines:
        if not line.startswith("Refused "):
            continue
        text = line.removeprefix("Refused ")
        if text.startswith(f"{title} ("):
            where, _, message = text.removeprefix(f"{title} (").partition("): ")
            text = f"{where}: {message}"
        yield text


# --- spec differences ------------------------------------------------------------------------


def _changes_of(
    key: Key, was: _Before, tracked: Tracked, loop: PlanLoop, before: Snapshot, now: datetime
) -> Iterable[FieldChange]:
    """Return the spec fields that differ: as written in YAML, else as the ledger holds them."""
    recorded = loop.recorded_specs.get(key)
    if key not in loop.without_previous or recorded is None:
        return _field_changes(key, was.stored, tracked.stored, before, now)
    try:
        desired = parse_resource(tracked.body()).spec
    except ParseError:
        return ()
    old_flat = _spec_flat(recorded, "spec")
    new_flat = _spec_flat(desired, "spec")
    return _diff(key, old_flat, new_flat, before, now)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _spec_flat(value: Any, path: str) -> dict[str, Any]:
    """Flatten a parsed spec (dataclasses) into camelCase field paths and plain values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        flat: dict[str, Any] = {}
        for item in dataclasses.fields(value):
            flat.update(_spec_flat(getattr(value, item.name), f"{path}.{_camel(item.name)}"))
        return flat
    if isinstance(value, Mapping) and value:
        flat = {}
        for key in sorted(value):
            flat.update(_spec_flat(value[key], f"{path}.{key}"))
        return flat
    if isinstance(value, enum.Enum):
        return {path: value.value}
    if isinstance(value, datetime):
        return {path: format_rfc3339(value)}
    if isinstance(value, Decimal | int | float | str | bool) or value is None:
        return {path: value}
    return {path: str(value)}


def _flatten(value: Any, path: str) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key in sorted(value):
            flat.update(_flatten(value[key], f"{path}.{key}"))
        return flat
    return {path: value}


def _field_changes(
    key: Key, old: Mapping[str, Any], new: Mapping[str, Any], before: Snapshot, now: datetime
) -> Iterable[FieldChange]:
    old_flat = _flatten(old.get("spec") or {}, "spec")
    new_flat = _flatten(new.get("spec") or {}, "spec")
    return _diff(key, old_flat, new_flat, before, now)


def _diff(
    key: Key,
    old_flat: Mapping[str, Any],
    new_flat: Mapping[str, Any],
    before: Snapshot,
    now: datetime,
) -> Iterable[FieldChange]:
    entitlement = _entitlement_named(before, key[1], key[2]) if key[0] == "Entitlement" else None
    for path in sorted(old_flat.keys() | new_flat.keys()):
        was, now_value = old_flat.get(path), new_flat.get(path)
        if was != now_value:
            yield FieldChange(path, was, now_value, _when(key[0], path, entitlement, now))


def _entitlement_named(snapshot: Snapshot, namespace: str, name: str) -> Entitlement | None:
    records = snapshot.records.get(namespace)
    if records is None:
        return None
    for entitlement in records.entitlements.values():
        if entitlement.name == name:
            return entitlement
    return None


def _when(kind: str, path: str, entitlement: Entitlement | None, now: datetime) -> str:
    """Say when an edit of ``path`` acts (D4)."""
    if kind == "Entitlement" and path in ("spec.issueAfterReset", "spec.usagePeriod.interval"):
        if entitlement is not None and entitlement.usage_period:
            boundary = format_rfc3339(next_reset_after(entitlement.usage_period, now))
            return (
                f"from the next period boundary, {boundary}; the current period keeps the old value"
            )
        return "from the next period boundary; the current period keeps the old value"
    if kind == "Entitlement" and path == "spec.isSoftLimit":
        return f"from {format_rfc3339(now)}"
    if kind == "Entitlement" and path == "spec.preserveOverageAtReset":
        return f"for resets after {format_rfc3339(now)}"
    if kind == "Entitlement" and path == "spec.activeTo":
        return (
            "access ends at that instant; one before the current period's start acts at that start"
        )
    if kind == "Grant" and path == "spec.voidAt":
        return (
            "the unused balance is gone from that instant; "
            "one before the current period's start acts at that start"
        )
    if path == "spec.deletionPolicy":
        return "decides what deleting the object will do to the ledger"
    if kind == "Customer" and path.startswith("spec.usageAttribution"):
        return f"usage of these subjects counts from {format_rfc3339(now)}"
    return ""


# --- deletions (D3) --------------------------------------------------------------------------


def _deletion(
    kind: str, stored: Mapping[str, Any], outcome: Outcome | None, not_recorded: bool
) -> Deletion:
    spec = stored.get("spec") or {}
    policy = str(spec.get("deletionPolicy", "Orphan"))
    if not_recorded:
        return Deletion(policy, "kept", None, "the ledger holds no record of it: nothing changes")
    actions = outcome.actions if outcome is not None else ()
    for action in actions:
        if isinstance(action, rc.Void):
            at = format_rfc3339(action.at)
            return Deletion(
                policy,
                "voided",
                action.at,
                f"voided at {at} (deletionPolicy Apply): its unused balance is gone",
            )
        if isinstance(action, rc.End):
            at = format_rfc3339(action.at)
            return Deletion(
                policy, "ended", action.at, f"ended at {at} (deletionPolicy Apply): access ends"
            )
    if kind in ("Entitlement", "Grant"):
        if policy == "Apply":
            return Deletion(
                policy,
                "orphaned",
                None,
                "already ended or voided: the ledger record stays as it is",
            )
        what = "access and balance stay" if kind == "Entitlement" else "its balance stays available"
        return Deletion(
            policy,
            "orphaned",
            None,
            f"orphaned (deletionPolicy Orphan): the ledger keeps it, {what}",
        )
    return Deletion(
        policy,
        "kept",
        None,
        f"the ledger keeps its record (deleting a {kind} never changes the ledger)",
    )


def _removal_warnings(
    kind: str, namespace: str, name: str, stored: Mapping[str, Any], deletion: Deletion
) -> Iterable[str]:
    """Warn as ``validate --previous`` does: a removal without activeTo/voidAt, or of a
    Subscription (D3)."""
    if kind == "Subscription":
        message, hint = subscription_removal(f"{kind} {namespace}/{name}", deletion.policy)
        yield f"{message} ({hint})"
        return
    if kind not in ("Entitlement", "Grant"):
        return
    field_name = "activeTo" if kind == "Entitlement" else "voidAt"
    if field_name in (stored.get("spec") or {}):
        return
    action = "end" if kind == "Entitlement" else "void"
    effect = (
        f"the ledger keeps it as it is (deletionPolicy Orphan): deleting it does not {action} it"
        if deletion.policy != "Apply"
        else f"deletionPolicy Apply will {action} it at the deletion instant, which no reviewer sees"
    )
    yield (
        f"this change removes {kind} {namespace}/{name} without spec.{field_name}; {effect} "
        f"(first set spec.{field_name} in a reviewed change, then remove the file)"
    )


# --- entitlement values ----------------------------------------------------------------------


def _shown(value: EntitlementValue | None) -> dict[str, Any] | None:
    if value is None:
        return None
    document = status_value(value)
    document.pop("asOf", None)
    # Keep amounts exact (Decimal) here; the renderers format them.
    for name, amount in (
        ("balance", value.balance),
        ("usage", value.usage),
        ("overage", value.overage),
        ("totalAvailableGrantAmount", value.total_available_grant_amount),
    ):
        if amount is not None:
            document[name] = amount
    return document


def _entitlement_plans(
    before: Snapshot, after: Snapshot, resources: list[ResourcePlan], now: datetime
) -> tuple[EntitlementPlan, ...]:
    touched = {(r.kind, r.namespace, r.name) for r in resources}
    deleted = {(r.kind, r.namespace, r.name): r for r in resources if r.change == "delete"}
    plans: list[EntitlementPlan] = []
    for namespace in sorted(set(before.records) | set(after.records)):
        old_records = before.records.get(namespace)
        new_records = after.records.get(namespace)
        ids = set(old_records.entitlements if old_records else ()) | set(
            new_records.entitlements if new_records else ()
        )
        for entitlement_id in ids:
            old = old_records.entitlements.get(entitlement_id) if old_records else None
            new = new_records.entitlements.get(entitlement_id) if new_records else None
            entitlement = new or old
            if entitlement is None:
                continue
            old_grants = old_records.grants.get(entitlement_id, ()) if old_records else ()
            new_grants = new_records.grants.get(entitlement_id, ()) if new_records else ()
            raw_before = before.values.get(namespace, {}).get(entitlement_id)
            raw_after = after.values.get(namespace, {}).get(entitlement_id)
            grants = tuple(
                replace(
                    change,
                    balance_before=_grant_balance(raw_before, change.id),
                    balance_after=_grant_balance(raw_after, change.id),
                )
                for change in _grant_changes(namespace, old_grants, new_grants, deleted)
            )
            value_before = _shown(raw_before)
            value_after = _shown(raw_after)
            plan = EntitlementPlan(
                namespace=namespace,
                customer=entitlement.customer_key,
                feature=entitlement.feature_key,
                entitlement=entitlement.name,
                id=entitlement_id,
                before=value_before if old is not None else None,
                after=value_after if new is not None else None,
                grants=grants,
                notes=tuple(_entitlement_notes(old, new, now)),
            )
            if (
                plan.value_changed
                or grants
                or plan.notes
                or ("Entitlement", namespace, entitlement.name) in touched
            ):
                plans.append(plan)
    return tuple(sorted(plans, key=lambda p: (p.namespace, p.customer, p.feature, p.entitlement)))


def _grant_balance(value: EntitlementValue | None, grant_id: str | None) -> Decimal | None:
    if value is None or value.grant_balances is None or grant_id is None:
        return None
    return value.grant_balances.get(grant_id)


def _grant_changes(
    namespace: str,
    old: Iterable[Grant],
    new: Iterable[Grant],
    deleted: Mapping[Key, ResourcePlan],
) -> Iterable[GrantChange]:
    old_by_id = {g.id: g for g in old}
    for grant in new:
        was = old_by_id.get(grant.id)
        if was is None:
            described = (
                f"new, effective {format_rfc3339(grant.effective_at)}, priority {grant.priority}"
            )
            expiry = expires_at(grant)
            if expiry is not None:
                described += f", expires {format_rfc3339(expiry)}"
            if grant.recurrence is not None:
                described += ", recurring"
            yield GrantChange(
                grant.name, grant.id, "new", grant.amount, grant.effective_at, described
            )
        elif grant.void_at != was.void_at and grant.void_at is not None:
            yield GrantChange(
                grant.name,
                grant.id,
                "voided",
                grant.amount,
                grant.void_at,
                f"voided at {format_rfc3339(grant.void_at)}",
            )
        elif ("Grant", namespace, grant.name) in deleted:
            yield GrantChange(
                grant.name,
                grant.id,
                "orphaned",
                grant.amount,
                None,
                "its file is removed; the ledger keeps it (deletionPolicy Orphan)",
            )


def _entitlement_notes(
    old: Entitlement | None, new: Entitlement | None, now: datetime
) -> Iterable[str]:
    if old is None or new is None:
        return
    if old.issue_after_reset != new.issue_after_reset and new.issue_after_reset:
        latest = new.issue_after_reset[-1]
        amount = latest.value.amount if latest.value is not None else 0
        yield (
            f"issueAfterReset becomes {amount} from {format_rfc3339(latest.since)}"
            + (" (the value now stays: D4)" if latest.since > now else "")
        )
    if old.active_to != new.active_to and new.active_to is not None:
        yield f"ends at {format_rfc3339(new.active_to)}"
    if old.usage_period != new.usage_period and new.usage_period:
        entry = new.usage_period[-1]
        yield f"usage period {entry.recurrence.interval.iso()} from {format_rfc3339(entry.start)}"
