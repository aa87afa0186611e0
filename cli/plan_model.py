"""What ``allotment plan`` found: the plan as data, shared by the builder and the renderers.

Role: frozen dataclasses for a plan (resources created, changed and deleted with what the
reconciliation did, the entitlement values before and after, refusals, orphans, warnings) and
the summary counts. Amounts stay ``Decimal`` here; only the JSON renderer turns them into
numbers. It computes nothing and does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal


class PlanUsageError(ValueError):
    """The command line cannot be planned as given (exit 2)."""


Change = Literal["create", "change", "delete", "unchanged"]
Key = tuple[str, str, str]  # kind, namespace, name

#: The value fields a plan compares, in the order OpenMeter's value endpoint returns them.
VALUE_FIELDS = ("hasAccess", "balance", "usage", "overage", "totalAvailableGrantAmount")


@dataclass(frozen=True)
class FieldChange:
    """One spec field that differs: its path, the two values, and when the change acts."""

    path: str
    before: Any
    after: Any
    note: str = ""


@dataclass(frozen=True)
class Deletion:
    """What deleting a resource does to the ledger (D3)."""

    policy: str  # Orphan or Apply
    effect: Literal["orphaned", "ended", "voided", "kept"]
    at: datetime | None
    description: str


@dataclass(frozen=True)
class ResourcePlan:
    """One resource the change creates, edits or deletes, and what reconciling it does."""

    kind: str
    namespace: str
    name: str
    change: Change
    result: str  # the reconciliation's verb: Record, Amend, Void, Orphan, Refuse, Wait, ...
    message: str
    fields: tuple[FieldChange, ...] = ()
    deletion: Deletion | None = None
    refusals: tuple[str, ...] = ()
    waiting: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        """Kind namespace/name."""
        return f"{self.kind} {self.namespace}/{self.name}"

    @property
    def refused(self) -> bool:
        """Tell whether the cluster would refuse this change."""
        return bool(self.refusals)


@dataclass(frozen=True)
class GrantChange:
    """A grant of an entitlement that the change adds, voids or orphans."""

    name: str
    id: str | None
    change: Literal["new", "voided", "orphaned"]
    amount: Decimal
    at: datetime | None
    description: str
    #: What is left of the grant at the plan's instant, before and after (None: not active).
    balance_before: Decimal | None = None
    balance_after: Decimal | None = None


@dataclass(frozen=True)
class EntitlementPlan:
    """One entitlement's value before and after the change (None: it does not exist then)."""

    namespace: str
    customer: str
    feature: str
    entitlement: str
    id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    grants: tuple[GrantChange, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def value_changed(self) -> bool:
        """Tell whether any compared value field differs (a new entitlement counts)."""
        if self.before is None or self.after is None:
            return self.before != self.after
        return any(self.before.get(k) != self.after.get(k) for k in VALUE_FIELDS)


@dataclass(frozen=True)
class SubscriberValue:
    """One subscriber's entitlement to a feature a Plan edit changes: its value at the rollout
    instant and at the subscriber's next usage-period boundary, before and after the change
    (None: not active then)."""

    subscription: str
    customer: str
    feature: str
    entitlement: str
    id: str
    now_before: dict[str, Any] | None
    now_after: dict[str, Any] | None
    next_at: datetime | None = None  # its next period boundary (None: no usage period)
    next_before: dict[str, Any] | None = None
    next_after: dict[str, Any] | None = None


@dataclass(frozen=True)
class PlanRollout:
    """What a Plan edit does to its subscribers: one summary per changed feature, and the
    values of each subscriber's entitlements to those features."""

    namespace: str
    plan: str  # the Plan's name
    key: str
    policy: str
    changes: tuple[str, ...]
    subscriptions: int
    values: tuple[SubscriberValue, ...] = ()

    def summary(self) -> str:
        """Return ``pro: ai_requests monthly 1,000 -> 2,000 from each one's next period;
        3 subscriptions``."""
        count = f"{self.subscriptions:,} subscription{'' if self.subscriptions == 1 else 's'}"
        return f"{self.key}: {'; '.join(self.changes) or 'no template change'}; {count}"


@dataclass(frozen=True)
class Plan:
    """Everything ``allotment plan`` prints."""

    now: datetime
    usage: str
    resources: tuple[ResourcePlan, ...]
    entitlements: tuple[EntitlementPlan, ...]
    unchanged: int
    notes: tuple[str, ...] = ()
    problems: tuple[str, ...] = field(default=())  # refusals not tied to one resource
    rollouts: tuple[PlanRollout, ...] = ()

    @property
    def refused(self) -> bool:
        """Tell whether anything in the plan would be refused."""
        return bool(self.problems) or any(r.refused for r in self.resources)

    def count(self, change: Change) -> int:
        """Return how many resources the change creates, edits or deletes."""
        return sum(1 for r in self.resources if r.change == change and not r.refused)

    def deletions(self, effect: str) -> int:
        """Return how many deletions have ``effect`` (orphaned, ended, voided, kept)."""
        return sum(
            1
            for r in self.resources
            if r.deletion is not None and r.deletion.effect == effect and not r.refused
        )

    @property
    def value_changes(self) -> int:
        """Return how many entitlements' values differ."""
        return sum(1 for e in self.entitlements if e.value_changed)

    def summary(self) -> str:
        """Return the last line: ``plan: 2 to create, 1 to change, 1 to delete (orphaned); ...``."""
        effects = [
            f"{n} {effect}" if n != self.count("delete") else effect
            for effect in ("voided", "ended", "orphaned", "kept")
            if (n := self.deletions(effect))
        ]
        delete = f"{self.count('delete')} to delete"
        if effects:
            delete += f" ({', '.join(effects)})"
        line = f"plan: {self.count('create')} to create, {self.count('change')} to change, {delete}"
        changes = self.value_changes
        line += f"; {changes} entitlement {'value changes' if changes == 1 else 'values change'}"
        refused = sum(len(r.refusals) for r in self.resources) + len(self.problems)
        if refused:
            line += f"; {refused} refused"
        waiting = sum(1 for r in self.resources if r.waiting is not None)
        if waiting:
            line += f"; {waiting} waiting"
        return line
