"""From a ledger outcome to ``status``: kstatus conditions, ``observedGeneration``, ledger ids.

Role: pure functions. Ready, Reconciling and Stalled are always written, each with
``observedGeneration``; ``lastTransitionTime`` moves only when a condition's status flips.
Also decides what a user-visible change of ``status.value`` or ``currentUsagePeriod`` is.

Must not: talk to Kubernetes or the ledger, or read the clock (``now`` is a parameter).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from allotment.operator.ports import CONFLICT, DONE_ACTIONS, REFUSE, WAIT, Outcome

LEDGER_UNAVAILABLE = "LedgerUnavailable"
CONDITION_TYPES = ("Ready", "Reconciling", "Stalled")
# The fields of ``status.value`` a user acts on; ``asOf`` alone moving is not worth a write.
VALUE_FIELDS = ("hasAccess", "balance", "usage", "overage", "totalAvailableGrantAmount")


class Phase(enum.Enum):
    """Where a resource stands, as kstatus sees it."""

    READY = "ready"  # Ready=True
    PROGRESSING = "progressing"  # Ready=False, Reconciling=True: waiting, will converge
    STALLED = "stalled"  # Ready=False, Stalled=True: needs another object or a person


@dataclass(frozen=True)
class Verdict:
    """A phase with the reason and message all three conditions carry."""

    phase: Phase
    reason: str
    message: str


def verdict_of(outcome: Outcome) -> Verdict:
    """Classify a ledger outcome."""
    if outcome.action in DONE_ACTIONS:
        return Verdict(Phase.READY, outcome.reason, outcome.message)
    if outcome.action == WAIT:
        return Verdict(Phase.PROGRESSING, outcome.reason, outcome.message)
    if outcome.action in (CONFLICT, REFUSE):
        return Verdict(Phase.STALLED, outcome.reason, outcome.message)
    return Verdict(Phase.STALLED, "UnknownOutcome", f"the ledger answered {outcome.action!r}")


def unavailable(message: str) -> Verdict:
    """The verdict while the ledger cannot be reached."""
    return Verdict(Phase.PROGRESSING, LEDGER_UNAVAILABLE, message)


def _timestamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def conditions(
    verdict: Verdict,
    generation: int,
    now: datetime,
    previous: Iterable[Mapping[str, Any]] = (),
) -> list[dict[str, Any]]:
    """Return the Ready, Reconciling and Stalled conditions for ``verdict``."""
    truth = {
        "Ready": verdict.phase is Phase.READY,
        "Reconciling": verdict.phase is Phase.PROGRESSING,
        "Stalled": verdict.phase is Phase.STALLED,
    }
    before = {str(c.get("type")): c for c in previous if isinstance(c, Mapping)}
    result: list[dict[str, Any]] = []
    for kind in CONDITION_TYPES:
        status = "True" if truth[kind] else "False"
        old = before.get(kind)
        moved = old is None or old.get("status") != status
        since = _timestamp(now) if moved or old is None else str(old.get("lastTransitionTime"))
        result.append(
            {
                "type": kind,
                "status": status,
                "reason": verdict.reason,
                "message": verdict.message,
                "observedGeneration": generation,
                "lastTransitionTime": since,
            }
        )
    return result


def status_patch(
    verdict: Verdict,
    fields: Mapping[str, Any],
    generation: int,
    now: datetime,
    previous_conditions: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Return the whole ``status`` to merge: ledger fields, conditions, observedGeneration."""
    patch: dict[str, Any] = {
        key: value
        for key, value in fields.items()
        if key not in ("conditions", "observedGeneration")
    }
    patch["observedGeneration"] = generation
    patch["conditions"] = conditions(verdict, generation, now, previous_conditions)
    return patch


def _same_number(a: Any, b: Any) -> bool:
    try:
        return Decimal(str(a)) == Decimal(str(b))
    except (InvalidOperation, ValueError):
        return bool(a == b)


REFRESHED_FIELDS = ("value", "currentUsagePeriod")


def refreshed_fields(status: Any) -> dict[str, Any] | None:
    """Return the fields the value loop owns from an Entitlement's ``status`` (None: none yet)."""
    if not isinstance(status, Mapping) or not isinstance(status.get("value"), Mapping):
        return None
    return {key: status[key] for key in REFRESHED_FIELDS if key in status}


def refresh_moved(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Return whether the value loop must patch: the value moved, or the period rolled over."""
    if old is None or not isinstance(old.get("value"), Mapping):
        return True
    if value_moved(old["value"], new.get("value") or {}):
        return True
    return old.get("currentUsagePeriod") != new.get("currentUsagePeriod")


def value_moved(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Return whether a user would see ``status.value`` change (``asOf`` alone does not count)."""
    if old is None:
        return True
    for key in VALUE_FIELDS:
        if (key in old) != (key in new):
            return True
        if key in new:
            a, b = old[key], new[key]
            if isinstance(a, bool) or isinstance(b, bool):
                if a != b:
                    return True
            elif not _same_number(a, b):
                return True
    return False
