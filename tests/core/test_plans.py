"""Plans and Subscriptions in the pure core: expansion, rollout policies, upgrades, deletion.

Each case drives ``reconcile`` the way storage does: actions are applied to an in-memory
``Recorded`` and the next object is reconciled against the result; the values a customer would
see come from the core's own value function.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

from allotment.ledger.core import reconcile as rc
from allotment.ledger.core.model import Customer, Entitlement, EntitlementType, Feature, Grant
from allotment.ledger.core.plans import RAISE_ANNOTATION, SUBSCRIPTION_ID
from allotment.ledger.core.resources import (
    DEFAULT_NAMESPACE,
    PlanSpec,
    Resource,
    parse_resource,
)

from .factory import T, value

NS = DEFAULT_NAMESPACE


def plan(
    features: list[dict[str, Any]],
    *,
    name: str = "pro",
    policy: str | None = None,
    generation: int = 1,
    at: str = "2024-01-01T00:00",
    deleted: str | None = None,
) -> Resource:
    spec: dict[str, Any] = {"features": features}
    if policy is not None:
        spec["rolloutPolicy"] = policy
    metadata: dict[str, Any] = {
        "name": name,
        "uid": f"uid-plan-{name}",
        "generation": generation,
        "creationTimestamp": f"{at}:00Z",
    }
    if deleted is not None:
        metadata["deletionTimestamp"] = f"{deleted}:00Z"
    return parse_resource(
        {"apiVersion": "allotment.dev/v1alpha1", "kind": "Plan", "metadata": metadata, "spec": spec}
    )


def subscription(
    plan_key: str = "pro",
    *,
    name: str = "acme-pro",
    customer: str = "acme",
    generation: int = 1,
    at: str = "2024-01-01T00:00",
    deleted: str | None = None,
    policy: str | None = None,
    labels: dict[str, str] | None = None,
) -> Resource:
    spec: dict[str, Any] = {"customer": customer, "planKey": plan_key}
    if policy is not None:
        spec["deletionPolicy"] = policy
    if labels is not None:
        spec["metadata"] = labels
    metadata: dict[str, Any] = {
        "name": name,
        "uid": f"uid-sub-{name}",
        "generation": generation,
        "creationTimestamp": f"{at}:00Z",
    }
    if deleted is not None:
        metadata["deletionTimestamp"] = f"{deleted}:00Z"
    return parse_resource(
        {
            "apiVersion": "allotment.dev/v1alpha1",
            "kind": "Subscription",
            "metadata": metadata,
            "spec": spec,
        }
    )


def tokens(issue: int | None = 1000, interval: str = "MONTH", **more: Any) -> dict[str, Any]:
    feature: dict[str, Any] = {
        "featureKey": "tokens",
        "type": "metered",
        "usagePeriod": {"interval": interval},
    }
    if issue is not None:
        feature["issueAfterReset"] = issue
    return {**feature, **more}


SUPPORT = {"featureKey": "support", "type": "boolean"}


class Ledger:
    """A tiny stand-in for storage: identities, the log's last applied state, the catalogue."""

    def __init__(self) -> None:
        t0 = T("2023-12-01T00:00")
        self.features: tuple[rc.RecordedFeature, ...] = (
            rc.RecordedFeature("F1", "tokens", t0, Feature("tokens", "Tokens", meter_slug="m")),
            rc.RecordedFeature("F2", "support", t0, Feature("support", "Support")),
        )
        self.customers = (
            rc.RecordedCustomer("C1", "acme", t0, Customer("acme", "ACME")),
            rc.RecordedCustomer("C2", "globex", t0, Customer("globex", "Globex")),
        )
        self.owns: dict[tuple[str, str], rc.Own] = {}
        self.plans: dict[str, rc.RecordedPlan] = {}
        self.entitlements: dict[str, Entitlement] = {}
        self.grants: dict[str, Grant] = {}
        self.counter = 0

    def recorded(self, resource: Resource) -> rc.Recorded:
        return rc.Recorded(
            own=self.owns.get((resource.ref.kind.value, resource.ref.name)),
            features=self.features,
            customers=self.customers,
            entitlements=tuple(self.entitlements.values()),
            grants=tuple(self.grants.values()),
            plans=tuple(self.plans.values()),
        )

    def apply(self, resource: Resource, now: str) -> tuple[rc.Action, ...]:
        key = (resource.ref.kind.value, resource.ref.name)
        own = self.owns.get(key)
        if own is not None and resource.generation != own.generation and own.seen is None:
            self.owns[key] = replace(own, seen=(resource.generation, T(now)))
        self.counter += 1
        actions = rc.reconcile(resource, self.recorded(resource), T(now), f"ID{self.counter:02d}")
        for action in actions:
            self._write(resource, action)
        return actions

    def _write(self, resource: Resource, action: rc.Action) -> None:
        key = (resource.ref.kind.value, resource.ref.name)
        if isinstance(action, rc.Declare):
            self.owns[key] = rc.Own(
                action.id, action.uid, action.generation, action.at, action.at, action.spec
            )
        elif isinstance(action, rc.Amend):
            own = self.owns[key]
            self.owns[key] = replace(
                own, generation=action.generation, recorded_at=action.at, spec=action.spec
            )
        elif isinstance(action, rc.Orphan):
            self.owns[key] = replace(self.owns[key], deleted=True)
        elif isinstance(action, rc.Entitle):
            self.entitlements[action.entitlement.id] = action.entitlement
        elif isinstance(action, rc.Fund):
            self.grants[action.grant.id] = action.grant
        elif isinstance(action, rc.End):
            found = self.entitlements[action.id]
            self.entitlements[action.id] = replace(found, active_to=action.at)
        if isinstance(resource.spec, PlanSpec) and key in self.owns:
            own = self.owns[key]
            spec = own.spec
            assert isinstance(spec, PlanSpec)
            self.plans[resource.ref.name] = rc.RecordedPlan(
                own.id,
                resource.ref.name,
                resource.key or "",
                own.generation,
                own.recorded_at,
                own.created_at,
                spec,
                own.deleted,
            )

    def held(self, customer: str = "acme", feature: str = "tokens") -> list[Entitlement]:
        return sorted(
            (
                e
                for e in self.entitlements.values()
                if e.customer_key == customer and e.feature_key == feature
            ),
            key=lambda e: e.start,
        )

    def balance(self, at: str, customer: str = "acme") -> Decimal | None:
        [entitlement] = [e for e in self.held(customer) if e.is_active_at(T(at))]
        grants = [g for g in self.grants.values() if g.entitlement_id == entitlement.id]
        return value(entitlement, at, grants).balance

    def access(self, at: str, customer: str = "acme", feature: str = "support") -> bool:
        return any(e.is_active_at(T(at)) for e in self.held(customer, feature))


def kinds(actions: tuple[rc.Action, ...]) -> list[str]:
    return [type(a).__name__ for a in actions]


@pytest.fixture
def ledger() -> Ledger:
    led = Ledger()
    led.apply(plan([tokens(1000), SUPPORT]), "2024-01-01T00:00")
    led.apply(plan([tokens(100)], name="starter", policy="Immediately"), "2024-01-01T00:00")
    led.apply(subscription(at="2024-01-15T12:00"), "2024-01-15T12:00")
    return led


# --- expansion -------------------------------------------------------------------------------


def test_a_subscription_holds_one_ledger_entitlement_per_plan_feature(ledger: Ledger) -> None:
    [metered] = ledger.held()
    [boolean] = ledger.held(feature="support")
    assert metered.metadata[SUBSCRIPTION_ID] == boolean.metadata[SUBSCRIPTION_ID]
    assert metered.start == T("2024-01-15T12:00")
    assert ledger.balance("2024-01-20T00:00") == Decimal(1000)
    # periods are anchored at the subscription's start
    assert ledger.balance("2024-02-15T12:00") == Decimal(1000)
    assert ledger.access("2024-01-20T00:00")


def test_reconciling_again_writes_nothing(ledger: Ledger) -> None:
    assert ledger.apply(subscription(at="2024-01-15T12:00"), "2024-01-16T00:00") == ()


@pytest.mark.parametrize(
    ("resource", "reason"),
    [
        pytest.param(subscription("gold"), "PlanNotFound", id="no-such-plan"),
        pytest.param(
            subscription(customer="initech", name="initech-pro"),
            "CustomerNotFound",
            id="no-such-customer",
        ),
    ],
)
def test_a_subscription_waits_for_its_references(resource: Resource, reason: str) -> None:
    led = Ledger()
    led.apply(plan([tokens(1000)]), "2024-01-01T00:00")
    [wait] = led.apply(resource, "2024-01-02T00:00")
    assert isinstance(wait, rc.Wait) and wait.reason.value == reason
    assert led.entitlements == {}


def test_a_plan_key_is_unique_per_namespace() -> None:
    led = Ledger()
    led.apply(plan([tokens()]), "2024-01-01T00:00")
    other = parse_resource(
        {
            "apiVersion": "allotment.dev/v1alpha1",
            "kind": "Plan",
            "metadata": {"name": "pro-copy", "uid": "u"},
            "spec": {"key": "pro", "features": [tokens()]},
        }
    )
    [conflict] = led.apply(other, "2024-01-02T00:00")
    assert isinstance(conflict, rc.Conflict) and conflict.reason.value == "KeyConflict"


@pytest.mark.parametrize(
    ("features", "field"),
    [
        pytest.param([tokens(), tokens()], "spec.features[1].featureKey", id="twice"),
        pytest.param(
            [{"featureKey": "tokens", "type": "metered"}],
            "spec.features[0].usagePeriod",
            id="metered-without-period",
        ),
        pytest.param([tokens(-5)], "spec.features[0].issueAfterReset", id="negative-issue"),
    ],
)
def test_a_plan_that_breaks_a_rule_is_refused(features: list[dict[str, Any]], field: str) -> None:
    [refuse] = Ledger().apply(plan(features), "2024-01-01T00:00")
    assert isinstance(refuse, rc.Refuse)
    assert field in [error.field for error in refuse.errors]


# --- plan edits by policy --------------------------------------------------------------------

EDIT = "2024-02-01T00:00"  # mid-period: the subscriber's periods start on the 15th at 12:00


@pytest.mark.parametrize(
    ("policy", "after_edit", "next_period"),
    [
        pytest.param("NextPeriod", 1000, 3000, id="raise-next-period"),
        pytest.param("Immediately", 3000, 3000, id="raise-immediately"),
    ],
)
def test_a_raised_issue_after_reset(
    ledger: Ledger, policy: str, after_edit: int, next_period: int
) -> None:
    ledger.apply(plan([tokens(3000), SUPPORT], policy=policy, generation=2), EDIT)
    ledger.apply(subscription(at="2024-01-15T12:00"), EDIT)
    assert ledger.balance("2024-01-31T00:00") == Decimal(1000)  # history is not rewritten
    assert ledger.balance("2024-02-02T00:00") == Decimal(after_edit)
    assert ledger.balance("2024-02-16T00:00") == Decimal(next_period)
    [entitlement] = ledger.held()
    assert entitlement.id == ledger.held()[0].id  # the same entitlement, a new timeline entry


def test_the_immediate_raise_grant_ends_with_the_period_and_is_issued_once(ledger: Ledger) -> None:
    ledger.apply(plan([tokens(3000), SUPPORT], policy="Immediately", generation=2), EDIT)
    ledger.apply(subscription(at="2024-01-15T12:00"), EDIT)
    ledger.apply(subscription(at="2024-01-15T12:00"), "2024-02-03T00:00")
    [raise_grant] = ledger.grants.values()
    assert raise_grant.amount == Decimal(2000)
    assert raise_grant.annotations[RAISE_ANNOTATION] == "true"
    assert raise_grant.void_at == T("2024-02-15T12:00")


@pytest.mark.parametrize("policy", ["NextPeriod", "Immediately"])
def test_a_lowered_issue_after_reset_waits_for_the_boundary(ledger: Ledger, policy: str) -> None:
    ledger.apply(plan([tokens(400), SUPPORT], policy=policy, generation=2), EDIT)
    ledger.apply(subscription(at="2024-01-15T12:00"), EDIT)
    assert ledger.balance("2024-02-02T00:00") == Decimal(1000)
    assert ledger.balance("2024-02-16T00:00") == Decimal(400)
    assert ledger.grants == {}


@pytest.mark.parametrize("policy", ["NextPeriod", "Immediately"])
def test_a_dropped_feature_ends_at_the_boundary_and_one_without_a_period_at_once(
    ledger: Ledger, policy: str
) -> None:
    ledger.apply(plan([SUPPORT], policy=policy, generation=2), EDIT)
    ledger.apply(subscription(at="2024-01-15T12:00"), EDIT)
    [metered] = ledger.held()
    assert metered.active_to == T("2024-02-15T12:00")
    ledger.apply(plan([], policy=policy, generation=3), "2024-02-05T00:00")
    ledger.apply(subscription(at="2024-01-15T12:00"), "2024-02-05T00:00")
    assert ledger.access("2024-02-04T00:00") and not ledger.access("2024-02-05T00:00")


@pytest.mark.parametrize(
    ("policy", "starts"),
    [
        pytest.param("NextPeriod", "2024-02-15T12:00", id="next-period"),
        pytest.param("Immediately", "2024-02-01T00:00", id="immediately"),
    ],
)
def test_an_added_metered_feature_starts_by_policy(policy: str, starts: str) -> None:
    led = Ledger()
    led.apply(plan([SUPPORT]), "2024-01-01T00:00")
    led.apply(subscription(at="2024-01-15T12:00"), "2024-01-15T12:00")
    led.apply(plan([SUPPORT, tokens(50)], policy=policy, generation=2), EDIT)
    led.apply(subscription(at="2024-01-15T12:00"), EDIT)
    [added] = led.held()
    assert added.start == T(starts)
    assert added.usage_period[0].recurrence.anchor == T("2024-01-15T12:00")


def test_an_interval_change_waits_for_the_boundary_under_immediately(ledger: Ledger) -> None:
    ledger.apply(plan([tokens(1000, "WEEK"), SUPPORT], policy="Immediately", generation=2), EDIT)
    ledger.apply(subscription(at="2024-01-15T12:00"), EDIT)
    [entitlement] = ledger.held()
    assert [e.start for e in entitlement.usage_period] == [
        T("2024-01-15T12:00"),
        T("2024-02-15T12:00"),
    ]


# --- upgrades, downgrades, deletion ----------------------------------------------------------


def test_an_upgrade_keeps_the_shared_feature_and_its_grants(ledger: Ledger) -> None:
    before = ledger.held()[0].id
    ledger.apply(subscription("starter", generation=2, at="2024-01-15T12:00"), EDIT)
    [kept] = ledger.held()
    assert kept.id == before
    assert ledger.balance("2024-02-02T00:00") == Decimal(1000)  # starter lowers: next period
    assert ledger.balance("2024-02-16T00:00") == Decimal(100)
    # the dropped boolean feature has no usage period: it ends at the edit instant
    assert ledger.access("2024-01-31T00:00") and not ledger.access("2024-02-01T00:00")


def test_deleting_a_plan_changes_no_subscriber(ledger: Ledger) -> None:
    before = dict(ledger.entitlements)
    actions = ledger.apply(plan([tokens(1000), SUPPORT], deleted=EDIT), EDIT)
    assert kinds(actions) == ["Orphan"]
    [wait] = ledger.apply(subscription(at="2024-01-15T12:00"), "2024-02-02T00:00")
    assert isinstance(wait, rc.Wait) and wait.reason.value == "PlanNotFound"
    assert ledger.entitlements == before


@pytest.mark.parametrize(
    ("policy", "ended"),
    [
        pytest.param(None, None, id="orphan-keeps-entitlements"),
        pytest.param("Apply", T("2024-02-01T00:00"), id="apply-ends-them"),
    ],
)
def test_deleting_a_subscription_follows_its_deletion_policy(
    policy: str | None, ended: datetime | None
) -> None:
    led = Ledger()
    led.apply(plan([tokens(1000), SUPPORT]), "2024-01-01T00:00")
    led.apply(subscription(at="2024-01-15T12:00", policy=policy), "2024-01-15T12:00")
    led.apply(subscription(at="2024-01-15T12:00", policy=policy, deleted=EDIT), EDIT)
    assert {e.active_to for e in led.entitlements.values()} == {ended}


# --- conflicts with hand-written entitlements ------------------------------------------------


def test_a_subscription_does_not_take_a_feature_an_entitlement_holds() -> None:
    led = Ledger()
    hand = _hand_written()
    led.entitlements[hand.id] = hand
    led.apply(plan([tokens(1000), SUPPORT]), "2024-01-01T00:00")
    actions = led.apply(subscription(at="2024-01-15T12:00"), "2024-01-15T12:00")
    assert isinstance(actions[-1], rc.Conflict)
    assert actions[-1].reason.value == "EntitlementConflict"
    assert led.entitlements[hand.id].active_to is None  # nothing recorded is ended
    assert len(led.held()) == 1  # the other feature is recorded


def _hand_written() -> Entitlement:
    return Entitlement(
        id="HAND",
        namespace=NS,
        name="acme-support",
        customer_key="acme",
        feature_key="support",
        type=EntitlementType.BOOLEAN,
        created_at=T("2024-01-10T00:00"),
    )


def test_an_entitlement_does_not_take_a_feature_a_subscription_holds(ledger: Ledger) -> None:
    hand = parse_resource(
        {
            "apiVersion": "allotment.dev/v1alpha1",
            "kind": "Entitlement",
            "metadata": {
                "name": "acme-tokens",
                "uid": "u",
                "creationTimestamp": "2024-02-01T00:00:00Z",
            },
            "spec": {
                "customer": "acme",
                "featureKey": "tokens",
                "type": "metered",
                "usagePeriod": {"interval": "MONTH"},
            },
        }
    )
    [conflict] = rc.reconcile(hand, ledger.recorded(hand), T(EDIT), "NEW")
    assert isinstance(conflict, rc.Conflict) and conflict.reason.value == "EntitlementConflict"


def test_a_top_up_grant_by_customer_and_feature_funds_the_subscription(ledger: Ledger) -> None:
    top_up = parse_resource(
        {
            "apiVersion": "allotment.dev/v1alpha1",
            "kind": "Grant",
            "metadata": {"name": "topup", "uid": "u", "creationTimestamp": "2024-02-01T00:00:00Z"},
            "spec": {"customer": "acme", "featureKey": "tokens", "amount": 500},
        }
    )
    [record] = rc.reconcile(top_up, ledger.recorded(top_up), T(EDIT), "G1")
    assert isinstance(record, rc.Record) and isinstance(record.record, Grant)
    assert record.record.entitlement_id == ledger.held()[0].id


# --- level-based: reconciling again writes nothing, raises never add up past the plan -------

EDITS = {
    "raise": [tokens(3000), SUPPORT],
    "lower": [tokens(400), SUPPORT],
    "interval": [tokens(1000, "WEEK"), SUPPORT],
    "soft-limit": [tokens(1000, isSoftLimit=True), SUPPORT],
    "drop": [SUPPORT],
    "add": [tokens(1000), SUPPORT, {"featureKey": "extra", "type": "boolean"}],
    "type-change": [tokens(1000), {"featureKey": "support", "type": "static", "config": {"a": 1}}],
}


@pytest.mark.parametrize("policy", ["NextPeriod", "Immediately"])
@pytest.mark.parametrize("edit", [pytest.param(v, id=k) for k, v in EDITS.items()])
def test_after_any_plan_edit_reconciling_again_writes_nothing(
    ledger: Ledger, edit: list[dict[str, Any]], policy: str
) -> None:
    ledger.features = (
        *ledger.features,
        rc.RecordedFeature("F3", "extra", T("2023-12-01T00:00"), Feature("extra", "Extra")),
    )
    ledger.apply(plan(edit, policy=policy, generation=2), EDIT)
    first = ledger.apply(subscription(at="2024-01-15T12:00"), EDIT)
    assert any(rc.is_write(a) for a in first)
    again = ledger.apply(subscription(at="2024-01-15T12:00"), "2024-02-20T00:00")
    assert [a for a in again if rc.is_write(a)] == []


def test_raising_lowering_and_raising_again_issues_the_difference_once(ledger: Ledger) -> None:
    for generation, amount in ((2, 3000), (3, 1000), (4, 3000), (5, 3500)):
        at = f"2024-02-0{generation}T00:00"
        features = [tokens(amount), SUPPORT]
        ledger.apply(plan(features, policy="Immediately", generation=generation), at)
        ledger.apply(subscription(at="2024-01-15T12:00"), at)
    assert sorted(g.amount for g in ledger.grants.values()) == [Decimal(500), Decimal(2000)]
    assert ledger.balance("2024-02-06T00:00") == Decimal(3500)
    assert ledger.balance("2024-02-16T00:00") == Decimal(3500)


def test_a_subscription_s_metadata_is_copied_to_its_entitlements_under_its_marks() -> None:
    led = Ledger()
    led.apply(plan([tokens(1000), SUPPORT]), "2024-01-01T00:00")
    forged = {"tier": "gold", SUBSCRIPTION_ID: "forged"}
    led.apply(subscription(at="2024-01-15T12:00", labels=forged), "2024-01-15T12:00")
    [metered] = led.held()
    assert metered.metadata["tier"] == "gold"
    assert metered.metadata[SUBSCRIPTION_ID] != "forged"  # the marks win: identity stays ours
    led.apply(
        subscription(at="2024-01-15T12:00", generation=2, labels={"region": "eu"}),
        "2024-01-20T00:00",
    )
    [edited] = led.held()
    assert edited.id == metered.id  # an edit of metadata keeps the entitlement
    assert (edited.metadata.get("tier"), edited.metadata["region"]) == (None, "eu")
    assert edited.metadata[SUBSCRIPTION_ID] == metered.metadata[SUBSCRIPTION_ID]
