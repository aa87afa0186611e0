"""What a Plan edit does to its subscribers, for ``allotment plan``.

Role: from the Plan's spec before and after, one phrase per changed feature template saying
what changes and when it acts under the Plan's ``rolloutPolicy`` ("ai_requests monthly 1,000 ->
2,000 from each one's next period"); and, for every subscriber's entitlement to such a feature,
its value at the rollout instant (the plan's ``now``) and at the subscriber's next usage-period
boundary, before and after, read from the scratch ledger around the change.

Must not: decide when a change acts (the ledger's rollout does; the phrases only name the rule
the README states) or write to any ledger; it reads the scratch ledger ``plan_build`` owns.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from allotment.cli.plan_model import PlanRollout, SubscriberValue
from allotment.ledger.core.model import Entitlement, EntitlementType, EntitlementValue
from allotment.ledger.core.periods import next_reset_after
from allotment.ledger.core.plans import PLAN_KEY, SUBSCRIPTION_NAME
from allotment.ledger.core.resources import PlanFeatureSpec, PlanSpec, RolloutPolicy
from allotment.ledger.storage.engine import Ledger
from allotment.ledger.values import NamespaceRecords, values_of

__all__ = [
    "Around",
    "NextValues",
    "boundaries_of",
    "feature_changes",
    "next_values",
    "plan_rollout",
]

Shown = Callable[[EntitlementValue | None], dict[str, Any] | None]
#: Per (namespace, entitlement id): its next period boundary after ``now`` and its value there.
NextValues = Mapping[tuple[str, str], tuple[datetime, EntitlementValue | None]]

_AT_NEXT = "from each one's next period"
_AT_ONCE = "at the rollout instant"
_WORDS = {"DAY": "daily", "WEEK": "weekly", "MONTH": "monthly", "YEAR": "yearly"}


def _subscribed(entitlement: Entitlement) -> bool:
    return SUBSCRIPTION_NAME in entitlement.metadata


def next_values(
    ledger: Ledger,
    records: Mapping[str, NamespaceRecords],
    now: datetime,
    boundaries: Mapping[tuple[str, str], datetime] | None = None,
) -> dict[tuple[str, str], tuple[datetime, EntitlementValue | None]]:
    """Return each subscription entitlement's value at its next period boundary after ``now``
    (or at the instant ``boundaries`` gives it), for the entitlements with a usage period."""
    wanted: dict[tuple[str, datetime], list[str]] = defaultdict(list)
    for namespace, held in records.items():
        for entitlement in held.entitlements.values():
            if not _subscribed(entitlement) or not entitlement.usage_period:
                continue
            at = (boundaries or {}).get((namespace, entitlement.id))
            if at is None:
                at = next_reset_after(entitlement.usage_period, now)
            wanted[(namespace, at)].append(entitlement.id)
    found: dict[tuple[str, str], tuple[datetime, EntitlementValue | None]] = {}
    with ledger.read() as connection:
        for (namespace, at), ids in sorted(wanted.items()):
            values = values_of(connection, records[namespace], sorted(ids), at)
            for entitlement_id in ids:
                found[(namespace, entitlement_id)] = (at, values.get(entitlement_id))
    return found


# --- the phrases -------------------------------------------------------------------------------


def _amount(value: Decimal | None) -> str:
    if value is None:
        return "none"
    normal = value.normalize()
    return f"{normal:,f}" if normal == normal.to_integral_value() else f"{normal:,}"


def _periodic(template: PlanFeatureSpec) -> bool:
    return template.type is EntitlementType.METERED and template.usage_period is not None


def _interval_word(template: PlanFeatureSpec) -> str:
    if template.usage_period is None:
        return ""
    interval = template.usage_period.interval
    name = interval.duration.enum_name()
    return _WORDS.get(name or "", f"every {interval.text}")


def _describe(template: PlanFeatureSpec) -> str:
    words = [template.type.value]
    if template.usage_period is not None:
        words.append(_interval_word(template))
    if template.issue_after_reset is not None:
        words.append(_amount(template.issue_after_reset))
    return " ".join(words)


def _edits(old: PlanFeatureSpec, new: PlanFeatureSpec, policy: RolloutPolicy) -> list[str]:
    """Return what changes in a kept feature's template, each with when it acts."""
    key, immediately = new.feature_key, policy is RolloutPolicy.IMMEDIATELY
    if old.type is not new.type:
        when = _AT_NEXT if _periodic(old) else _AT_ONCE
        return [f"{key} type {old.type.value} -> {new.type.value} {when}"]
    if not _periodic(new):
        changed = old != new
        return [f"{key} {_describe(old)} -> {_describe(new)} {_AT_ONCE}"] if changed else []
    edits: list[str] = []
    if old.issue_after_reset != new.issue_after_reset:
        was, becomes = old.issue_after_reset or Decimal(0), new.issue_after_reset or Decimal(0)
        when = _AT_NEXT
        if immediately and becomes > was:
            when = "at the rollout instant (a grant of the difference until each one's period ends)"
        edits.append(
            f"{key} {_interval_word(new)} {_amount(old.issue_after_reset)} -> "
            f"{_amount(new.issue_after_reset)} {when}"
        )
    if old.usage_period != new.usage_period:
        edits.append(
            f"{key} usage period {_interval_word(old)} -> {_interval_word(new)} {_AT_NEXT}"
        )
    flags = (
        ("soft limit", old.is_soft_limit, new.is_soft_limit),
        ("overage kept at reset", old.preserve_overage_at_reset, new.preserve_overage_at_reset),
    )
    for label, before, after in flags:
        if bool(before) != bool(after):
            when = _AT_ONCE if immediately else _AT_NEXT
            edits.append(
                f"{key} {label} {str(bool(before)).lower()} -> {str(bool(after)).lower()} {when}"
            )
    if old.issue_after_reset_priority != new.issue_after_reset_priority:
        edits.append(
            f"{key} issueAfterReset priority {old.issue_after_reset_priority or 1} -> "
            f"{new.issue_after_reset_priority or 1} {_AT_NEXT}"
        )
    return edits


def feature_changes(old: PlanSpec, new: PlanSpec) -> list[tuple[str, str]]:
    """Return (feature key, phrase) for every template the edit adds, drops or changes."""
    policy = new.effective_rollout_policy
    before = {t.feature_key: t for t in old.features}
    after = {t.feature_key: t for t in new.features}
    keys = [*after, *(k for k in before if k not in after)]
    found: list[tuple[str, str]] = []
    for key in keys:
        was, becomes = before.get(key), after.get(key)
        if was is None and becomes is not None:
            waits = _periodic(becomes) and policy is RolloutPolicy.NEXT_PERIOD
            found.append(
                (key, f"{key} added ({_describe(becomes)}) {_AT_NEXT if waits else _AT_ONCE}")
            )
        elif becomes is None and was is not None:
            found.append((key, f"{key} dropped: ends {_AT_NEXT if _periodic(was) else _AT_ONCE}"))
        elif was is not None and becomes is not None:
            found.extend((key, phrase) for phrase in _edits(was, becomes, policy))
    return found


# --- the subscribers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Around:
    """The scratch ledger around the change: records, values at ``now``, values at each
    subscription entitlement's next boundary; before and after."""

    records_before: Mapping[str, NamespaceRecords]
    records_after: Mapping[str, NamespaceRecords]
    now_before: Mapping[str, Mapping[str, EntitlementValue]]
    now_after: Mapping[str, Mapping[str, EntitlementValue]]
    next_before: NextValues
    next_after: NextValues


def plan_rollout(
    namespace: str,
    name: str,
    old: PlanSpec,
    new: PlanSpec,
    key: str,
    around: Around,
    now: datetime,
    shown: Shown,
) -> PlanRollout:
    """Return what the edit of Plan ``namespace/name`` (key ``key``) does to its subscribers."""
    changes = feature_changes(old, new)
    touched = {feature for feature, _ in changes}
    held: dict[str, Entitlement] = {}
    for records in (around.records_before.get(namespace), around.records_after.get(namespace)):
        for entitlement in records.entitlements.values() if records else ():
            if (
                _subscribed(entitlement)
                and entitlement.metadata.get(PLAN_KEY) == key
                and (entitlement.active_to is None or entitlement.active_to > now)
            ):
                held[entitlement.id] = entitlement
    subscriptions = {e.metadata[SUBSCRIPTION_NAME] for e in held.values()}
    values = [
        _value(namespace, entitlement, around, shown)
        for entitlement in held.values()
        if entitlement.feature_key in touched
    ]
    values.sort(key=lambda v: (v.subscription, v.feature, v.entitlement))
    return PlanRollout(
        namespace=namespace,
        plan=name,
        key=key,
        policy=new.effective_rollout_policy.value,
        changes=tuple(phrase for _, phrase in changes),
        subscriptions=len(subscriptions),
        values=tuple(values),
    )


def _value(
    namespace: str, entitlement: Entitlement, around: Around, shown: Shown
) -> SubscriberValue:
    ident = (namespace, entitlement.id)
    was = (around.records_before.get(namespace) or _EMPTY).entitlements.get(entitlement.id)
    still = (around.records_after.get(namespace) or _EMPTY).entitlements.get(entitlement.id)
    before_next = around.next_before.get(ident)
    after_next = around.next_after.get(ident)
    next_at = (after_next or before_next or (None, None))[0]
    return SubscriberValue(
        subscription=entitlement.metadata[SUBSCRIPTION_NAME],
        customer=entitlement.customer_key,
        feature=entitlement.feature_key,
        entitlement=entitlement.name,
        id=entitlement.id,
        now_before=shown(around.now_before.get(namespace, {}).get(entitlement.id)) if was else None,
        now_after=shown(around.now_after.get(namespace, {}).get(entitlement.id)) if still else None,
        next_at=next_at,
        next_before=shown(before_next[1]) if before_next and was else None,
        next_after=shown(after_next[1]) if after_next and still else None,
    )


_EMPTY = NamespaceRecords("", {}, {}, {}, {}, {})


def boundaries_of(found: NextValues) -> dict[tuple[str, str], datetime]:
    """Return the boundary instants of ``found`` (to read the after-values at the same ones)."""
    return {ident: at for ident, (at, _) in found.items()}
