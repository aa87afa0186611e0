"""What the operator needs from the ledger and from the Kubernetes API, as narrow Protocols.

Role: the seam between the Kopf handlers and everything they drive. ``LedgerGateway`` wraps the
ledger's ``apply_resource(session, resource, now) -> Outcome`` (parse + reconcile + commit in one
transaction); ``KubeApi`` is the little the operator writes besides what Kopf patches itself.
Handlers are tested as plain coroutines against fakes of these Protocols.

Must not: import Kopf, SQLAlchemy or the Kubernetes client.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

# The reconciliation's action names (``allotment.ledger.core.reconcile``). The first group
# completes the resource; the others leave it not Ready.
DONE_ACTIONS = frozenset(
    {"Record", "Amend", "Reset", "End", "Void", "Adopt", "Orphan", "Unchanged", "Noop"}
)
WAIT = "Wait"
CONFLICT = "Conflict"
REFUSE = "Refuse"

# Past-tense verbs for Kubernetes Events and log lines ("Recorded Grant default/customer-1-bonus").
EVENT_VERBS: Mapping[str, str] = {
    "Record": "Recorded",
    "Amend": "Amended",
    "Reset": "Reset",
    "End": "Ended",
    "Void": "Voided",
    "Adopt": "Adopted",
    "Orphan": "Orphaned",
}


class Outcome(Protocol):
    """What reconciling one resource against the ledger did or why it could not."""

    @property
    def action(self) -> str:
        """One of ``DONE_ACTIONS``, ``Wait``, ``Conflict`` or ``Refuse``."""

    @property
    def reason(self) -> str:
        """The Ready condition's reason: ``Recorded``, ``FeatureNotFound``, ``Scheduled``..."""

    @property
    def message(self) -> str:
        """A sentence a person can act on."""

    @property
    def status(self) -> Mapping[str, Any]:
        """Status fields named as in the CRD: ledger ids and effective defaults."""

    @property
    def retry_at(self) -> datetime | None:
        """For ``Wait``: the instant to look again (a scheduled reset); None: when referenced."""


class LedgerUnavailableError(RuntimeError):
    """The ledger could not be reached or did not answer in time (a temporary condition)."""


class LedgerConflictError(RuntimeError):
    """A concurrent transaction won a race (a unique key, a serialization failure): retry."""


class LedgerGateway(Protocol):
    """The ledger as the operator drives it: one transaction per call."""

    def apply(self, obj: Mapping[str, Any], now: datetime, *, orphan: bool = False) -> Outcome:
        """Parse ``obj`` (a Kubernetes object), reconcile it at ``now`` and commit; raise
        ``LedgerUnavailableError`` when the database cannot be reached. ``orphan`` orphans a
        deleted object whatever its deletionPolicy (its namespace or CRD is going, D3)."""

    def values(
        self, refs: Sequence[tuple[str, str]], now: datetime
    ) -> Mapping[tuple[str, str], Mapping[str, Any]]:
        """Return the value loop's status fields of the Entitlements named by (namespace, name),
        for those the ledger has recorded: ``value`` (hasAccess, balance, usage, overage, asOf)
        and, with a usage period, ``currentUsagePeriod`` (``from``, ``to``)."""

    def close(self) -> None:
        """Release every pooled connection."""


class KubeApi(Protocol):
    """The few Kubernetes API calls the operator makes outside Kopf's own patches."""

    async def nudge(self, plural: str, namespace: str, name: str, handler_id: str) -> None:
        """Make Kopf reconcile the object again now (clear its retry delay)."""

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        """Merge-patch ``status`` of one allotment object."""

    async def is_terminating(self, namespace: str, plural: str) -> bool:
        """Return whether the namespace or the CRD of ``plural`` is being deleted (D3)."""
