"""Reconciliation: one named case per DESIGN rule (D1-D6), each also proven idempotent.

Every case settles some resources into a small in-memory ledger (``Ledger`` below applies the
actions the way storage must), reconciles one desired resource, checks the actions a user would
see (kind, reason, instant), applies them, and reconciles again: the second pass must write
nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from allotment.ledger.core.model import (
    CalendarDuration,
    Customer,
    Entitlement,
    Feature,
    Grant,
    IssueAfterReset,
    Meter,
)
from allotment.ledger.core.reconcile import (
    Absorb,
    Action,
    Adopt,
    Amend,
    Conflict,
    End,
    ImplyCustomer,
    Noop,
    Orphan,
    Own,
    Record,
    Recorded,
    RecordedCustomer,
    RecordedFeature,
    RecordedMeter,
    Refuse,
    Reset,
    Void,
    Wait,
    is_write,
    reconcile,
    resolve_subject,
)
from allotment.ledger.core.resources import Ref, Resource, parse_resource
from allotment.ledger.core.timeutil import format_rfc3339

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(days: float = 0, hours: float = 0, minutes: float = 0) -> datetime:
    return T0 + timedelta(days=days, hours=hours, minutes=minutes)


def make(
    kind: str,
    name: str,
    spec: dict[str, Any],
    *,
    t: datetime = T0,
    uid: str | None = None,
    generation: int = 1,
    deleted: datetime | None = None,
) -> Resource:
    metadata: dict[str, Any] = {
        "name": name,
        "uid": uid or f"uid-{name}",
        "generation": generation,
        "creationTimestamp": format_rfc3339(t),
    }
    if deleted is not None:
        metadata["deletionTimestamp"] = format_rfc3339(deleted)
    return parse_resource(
        {"apiVersion": "allotment.dev/v1alpha1", "kind": kind, "metadata": metadata, "spec": spec}
    )


def edited(resource: Resource, raw: dict[str, Any], **changes: Any) -> Resource:
    """Return the next generation of ``resource`` whose spec is ``raw`` with ``changes``."""
    spec = {k: v for k, v in {**raw, **changes}.items() if v is not None}
    return make(
        resource.ref.kind.value,
        resource.ref.name,
        spec,
        t=resource.created_at or T0,
        uid=resource.uid,
        generation=resource.generation + 1,
    )


def deleted(resource: Resource, when: datetime, raw: dict[str, Any] | None = None) -> Resource:
    """Return ``resource`` (with spec ``raw`` if given) as deleted at ``when``."""
    spec = resource.spec if raw is None else make(resource.ref.kind.value, "x", raw).spec
    return replace(resource, spec=spec, deleted_at=when)


# --- the in-memory ledger: applies actions as storage must -------------------------------------


@dataclass
class Ledger:
    own: dict[Ref, Own] = field(default_factory=dict)
    meters: dict[str, RecordedMeter] = field(default_factory=dict)
    features: dict[str, RecordedFeature] = field(default_factory=dict)
    customers: dict[str, RecordedCustomer] = field(default_factory=dict)
    entitlements: dict[str, Entitlement] = field(default_factory=dict)
    grants: dict[str, Grant] = field(default_factory=dict)
    issued: int = 0

    def view(self, resource: Resource) -> Recorded:
        return Recorded(
            own=self.own.get(resource.ref),
            meters=tuple(self.meters.values()),
            features=tuple(self.features.values()),
            customers=tuple(self.customers.values()),
            entitlements=tuple(self.entitlements.values()),
            grants=tuple(self.grants.values()),
        )

    def next_id(self) -> str:
        self.issued += 1
        return f"01TEST{self.issued:020d}"

    def reconcile(self, resource: Resource, now: datetime, **kw: Any) -> tuple[Action, ...]:
        return reconcile(resource, self.view(resource), now, self.next_id(), **kw)

    def settle(
        self, resource: Resource, now: datetime | None = None, **kw: Any
    ) -> tuple[Action, ...]:
        actions = self.reconcile(resource, now or resource.created_at or T0, **kw)
        self.apply(actions)
        return actions

    def snapshot(self) -> tuple[object, ...]:
        return (dict(self.own), dict(self.meters), dict(self.features), dict(self.customers),
                dict(self.entitlements), dict(self.grants))  # fmt: skip

    def apply(self, actions: Sequence[Action]) -> None:
        for action in actions:
            self._apply(action)

    def _apply(self, action: Action) -> None:
        if isinstance(action, Record):
            self.own[action.ref] = Own(action.id, action.uid, action.generation, action.at,
                                       action.at, action.spec)  # fmt: skip
            self._store(action.ref, action.id, action.at, action.record)
        elif isinstance(action, ImplyCustomer):
            self.customers[action.id] = RecordedCustomer(
                action.id, None, action.at, action.customer
            )
        elif isinstance(action, Absorb):
            del self.customers[action.implicit_id]
            for id, entitlement in list(self.entitlements.items()):
                if entitlement.customer_key == action.implicit_key:
                    self.entitlements[id] = replace(entitlement, customer_key=action.key)
        elif isinstance(action, Amend):
            own = self.own[action.ref]
            self.own[action.ref] = replace(own, generation=action.generation,
                                           recorded_at=action.at, spec=action.spec, seen=None)  # fmt: skip
            if action.record is not None:
                self._store(action.ref, action.id, own.created_at, action.record)
        elif isinstance(action, Reset):
            self.own[action.ref] = Own(action.id, action.uid, action.generation, action.at,
                                       action.at, action.spec)  # fmt: skip
            self.entitlements[action.entitlement.id] = action.entitlement
        elif isinstance(action, End):
            self.entitlements[action.id] = replace(
                self.entitlements[action.id], active_to=action.at
            )
        elif isinstance(action, Void):
            self.grants[action.id] = replace(self.grants[action.id], void_at=action.at)
        elif isinstance(action, Adopt):
            own = self.own[action.ref]
            self.own[action.ref] = replace(own, uid=action.uid, generation=action.generation,
                                           recorded_at=action.at, deleted=False)  # fmt: skip
        elif isinstance(action, Orphan):
            self.own[action.ref] = replace(self.own[action.ref], deleted=True)

    def _store(self, ref: Ref, id: str, at: datetime, record: object) -> None:
        if isinstance(record, Meter):
            self.meters[id] = RecordedMeter(id, ref.name, at, record)
        elif isinstance(record, Feature):
            self.features[id] = RecordedFeature(id, ref.name, at, record)
        elif isinstance(record, Customer):
            previous = self.customers.get(id)
            created = previous.created_at if previous is not None else at
            self.customers[id] = RecordedCustomer(id, ref.name, created, record)
        elif isinstance(record, Entitlement):
            self.entitlements[id] = record
        elif isinstance(record, Grant):
            self.grants[id] = record


def summary(action: Action) -> tuple[object, ...]:
    """What a user sees of an action: its kind, reason and instant."""
    if isinstance(action, Record):
        return ("Record", action.at)
    if isinstance(action, ImplyCustomer):
        return ("ImplyCustomer", action.customer.key, action.at)
    if isinstance(action, Amend):
        return ("Amend", *((c.field, c.since) for c in action.changes))
    if isinstance(action, Absorb):
        return ("Absorb", action.implicit_key, action.key)
    if isinstance(action, Reset):
        return ("Reset", action.reset.effective_at)
    if isinstance(action, End | Void | Adopt):
        return (type(action).__name__, action.at)
    if isinstance(action, Orphan):
        return ("Orphan", action.policy.value)
    if isinstance(action, Wait):
        return ("Wait", action.reason.value)
    if isinstance(action, Conflict):
        return ("Conflict", action.reason.value)
    if isinstance(action, Refuse):
        return ("Refuse", action.error.field)
    assert isinstance(action, Noop)
    return ("Noop", action.reason)


# --- a catalogue -----------------------------------------------------------------------------

METER_RAW = {"eventType": "prompt", "aggregation": "SUM", "valueProperty": "$.tokens",
             "groupBy": {"model": "$.model"}}  # fmt: skip
FEATURE_RAW = {"meterSlug": "tokens", "meterGroupByFilters": {"model": "gpt-4"}}
CUSTOMER_RAW = {"usageAttribution": {"subjectKeys": ["user-1"]}}
ENT_RAW = {"customer": "customer-1", "featureKey": "gpt_4_tokens", "type": "metered",
           "usagePeriod": {"interval": "MONTH"}, "issueAfterReset": 100}  # fmt: skip
GRANT_RAW = {"entitlement": "customer-1-gpt-4", "amount": 50}

METER = make("Meter", "tokens", METER_RAW)
FEATURE = make("Feature", "gpt-4-tokens", FEATURE_RAW)
CUSTOMER = make("Customer", "customer-1", CUSTOMER_RAW)
ENT = make("Entitlement", "customer-1-gpt-4", ENT_RAW)
GRANT = make("Grant", "bonus", GRANT_RAW, t=at(days=3))
BASE = (METER, FEATURE, CUSTOMER, ENT)
FEB = datetime(2026, 2, 1, tzinfo=UTC)
MAR = datetime(2026, 3, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Case:
    setup: tuple[Resource | tuple[Resource, datetime], ...]
    desired: Resource
    now: datetime
    expected: list[tuple[object, ...]]
    force_orphan: bool = False


def run(case: Case) -> tuple[Ledger, tuple[Action, ...]]:
    ledger = Ledger()
    for step in case.setup:
        resource, now = step if isinstance(step, tuple) else (step, step.created_at or T0)
        ledger.settle(resource, now)
    actions = ledger.reconcile(case.desired, case.now, force_orphan=case.force_orphan)
    return ledger, actions


CASES = [
    # --- creation and D2: the instant of an action ---
    pytest.param(Case((), METER, at(days=9), [("Record", T0)]), id="D2-create-acts-at-creation-timestamp"),
    pytest.param(Case((METER,), FEATURE, T0, [("Record", T0)]), id="feature-with-meter"),
    pytest.param(Case((), CUSTOMER, T0, [("Record", T0)]), id="customer"),
    pytest.param(Case(BASE[:3], ENT, T0, [("Record", T0)]), id="entitlement"),
    pytest.param(Case(BASE, GRANT, at(days=40), [("Record", at(days=3))]),
                 id="D2-grant-validated-at-its-instant-not-now"),
    pytest.param(Case(BASE, make("Grant", "g", {**GRANT_RAW, "effectiveAt": "2025-12-31T00:00:00Z"}, t=at(days=3)),
                      at(days=3), [("Refuse", "spec.effectiveAt")]),
                 id="grant-effective-before-current-period"),
    pytest.param(Case(BASE, make("Grant", "g", GRANT_RAW, t=at(days=40)), at(days=40), [("Record", at(days=40))]),
                 id="grant-in-a-later-period"),
    pytest.param(Case(BASE, make("Grant", "g", {**GRANT_RAW, "effectiveAt": "2026-01-15T00:00:00Z"}, t=at(days=40)),
                      at(days=40), [("Refuse", "spec.effectiveAt")]),
                 id="grant-effective-in-an-earlier-period"),
    pytest.param(Case(BASE, make("Grant", "g", {**GRANT_RAW, "effectiveAt": "2026-06-01T00:00:00Z"}, t=at(days=3)),
                      at(days=3), [("Record", at(days=3))]),
                 id="grant-effective-in-the-future"),
    # --- D6: references resolved by the operator, waits ---
    pytest.param(Case((), FEATURE, T0, [("Wait", "MeterNotFound")]), id="D6-feature-waits-for-meter"),
    pytest.param(Case((METER, CUSTOMER), ENT, T0, [("Wait", "FeatureNotFound")]), id="D6-entitlement-waits-for-feature"),
    pytest.param(Case((METER, FEATURE), ENT, T0, [("Wait", "CustomerNotFound")]), id="D6-entitlement-waits-for-customer"),
    pytest.param(Case(BASE[:3], GRANT, at(days=3), [("Wait", "EntitlementNotFound")]),
                 id="D6-grant-waits-for-entitlement"),
    pytest.param(Case(BASE[:3], make("Grant", "g", {"customer": "customer-1", "featureKey": "gpt_4_tokens",
                                                    "amount": 5}), T0, [("Wait", "EntitlementNotFound")]),
                 id="D6-grant-by-customer-waits-for-entitlement"),
    pytest.param(Case((METER, FEATURE), make("Grant", "g", {"customer": "nobody", "featureKey": "gpt_4_tokens",
                                                            "amount": 5}), T0, [("Wait", "CustomerNotFound")]),
                 id="D6-grant-by-customer-waits-for-customer"),
    pytest.param(Case(((METER, T0), (make("Feature", "gpt-4-tokens", FEATURE_RAW, t=at(days=2)), at(days=2)),
                       CUSTOMER), ENT, at(days=2), [("Record", at(days=2))]),
                 id="D2-waited-entitlement-acts-when-feature-recorded"),
    pytest.param(Case((*BASE[:3], (make("Entitlement", "customer-1-gpt-4", ENT_RAW, t=at(days=5)), at(days=5))),
                      GRANT, at(days=5), [("Record", at(days=5))]),
                 id="D2-waited-grant-acts-when-entitlement-recorded"),
    pytest.param(Case((FEATURE, (make("Meter", "tokens", METER_RAW, t=at(days=2)), at(days=2))), FEATURE,
                      at(days=3), [("Record", at(days=2))]), id="D2-waited-feature-acts-when-meter-recorded"),
    # --- validation that needs context ---
    pytest.param(Case((METER,), make("Feature", "f", {"meterSlug": "tokens", "meterGroupByFilters": {"region": "eu"}}),
                      T0, [("Refuse", "spec.meterGroupByFilters")]), id="feature-filter-not-a-meter-column"),
    pytest.param(Case((make("Feature", "plain", {}), CUSTOMER),
                      make("Entitlement", "e", {**ENT_RAW, "featureKey": "plain"}), T0, [("Refuse", "spec.featureKey")]),
                 id="metered-entitlement-on-meterless-feature"),
    pytest.param(Case((make("Feature", "plain", {}), CUSTOMER),
                      make("Entitlement", "e", {"customer": "customer-1", "featureKey": "plain", "type": "boolean"}),
                      T0, [("Record", T0)]), id="boolean-entitlement-on-meterless-feature"),
    pytest.param(Case((make("Feature", "plain", {}), CUSTOMER,
                       make("Entitlement", "e", {"customer": "customer-1", "featureKey": "plain", "type": "boolean"})),
                      make("Grant", "g", {"entitlement": "e", "amount": 1}), T0, [("Refuse", "spec.entitlement")]),
                 id="grant-on-boolean-entitlement"),
    pytest.param(Case((), make("Grant", "g", {"entitlement": "e", "amount": 0}), T0, [("Refuse", "spec.amount")]),
                 id="self-contained-rule-refused"),
    # --- D5: subjects, keys, uniqueness ---
    pytest.param(Case((METER, FEATURE, CUSTOMER), make("Entitlement", "e", {**ENT_RAW, "customer": None,
                                                                             "subject": "user-1"}), T0,
                      [("Record", T0)]), id="D5-subject-resolves-to-customer-by-subject-key"),
    pytest.param(Case((METER, FEATURE, CUSTOMER), make("Entitlement", "e", {**ENT_RAW, "customer": None,
                                                                             "subject": "customer-1"}), T0,
                      [("Record", T0)]), id="D5-subject-resolves-to-customer-by-key"),
    pytest.param(Case((METER, FEATURE), make("Entitlement", "e", {**ENT_RAW, "customer": None, "subject": "anon"}),
                      T0, [("ImplyCustomer", "anon", T0), ("Record", T0)]), id="D5-unknown-subject-implies-customer"),
    pytest.param(Case((METER, FEATURE, make("Entitlement", "e", {**ENT_RAW, "customer": None, "subject": "anon"})),
                      make("Customer", "anon", {}, t=at(days=1)), at(days=1),
                      [("Absorb", "anon", "anon"), ("Record", at(days=1))]),
                 id="D5-customer-absorbs-the-implicit-customer-of-its-key"),
    pytest.param(Case((METER, FEATURE, make("Entitlement", "e", {**ENT_RAW, "customer": None, "subject": "anon"})),
                      make("Customer", "acme", {"usageAttribution": {"subjectKeys": ["anon"]}}, t=at(days=1)),
                      at(days=1), [("Absorb", "anon", "acme"), ("Record", at(days=1))]),
                 id="D5-customer-absorbs-the-implicit-customer-of-a-subject-key"),
    pytest.param(Case((METER, FEATURE, CUSTOMER, make("Entitlement", "e", {**ENT_RAW, "customer": None,
                                                                           "subject": "anon"})),
                      edited(CUSTOMER, {"usageAttribution": {"subjectKeys": ["user-1", "anon"]}}), at(days=2),
                      [("Absorb", "anon", "customer-1"),
                       ("Amend", ("spec.usageAttribution.subjectKeys", at(days=2)))]),
                 id="D5-subject-key-edit-absorbs-the-implicit-customer"),
    pytest.param(Case((METER, FEATURE, make("Entitlement", "e", {**ENT_RAW, "customer": None, "subject": "anon"})),
                      make("Entitlement", "e2", {**ENT_RAW, "customer": "anon"}), T0, [("Wait", "CustomerNotFound")]),
                 id="D5-customer-names-declared-customers-only"),
    pytest.param(Case((CUSTOMER,), make("Customer", "other", {"usageAttribution": {"subjectKeys": ["user-1"]}}),
                      T0, [("Conflict", "KeyConflict")]), id="D5-subject-key-of-two-customers"),
    pytest.param(Case((CUSTOMER,), make("Customer", "other", {"key": "customer-1"}), T0, [("Conflict", "KeyConflict")]),
                 id="D5-customer-key-taken"),
    pytest.param(Case((METER,), make("Meter", "tokens-2", {**METER_RAW, "slug": "tokens"}), T0,
                      [("Conflict", "KeyConflict")]), id="D5-meter-slug-taken"),
    pytest.param(Case((METER, FEATURE), make("Feature", "other", {**FEATURE_RAW, "key": "gpt_4_tokens"}), T0,
                      [("Conflict", "KeyConflict")]), id="D5-feature-key-taken"),
    pytest.param(Case(BASE, make("Entitlement", "second", ENT_RAW, t=at(days=1)), at(days=1),
                      [("Conflict", "EntitlementConflict")]), id="D6-second-active-entitlement-conflicts"),
    pytest.param(Case((*BASE, edited(ENT, ENT_RAW, activeTo="2026-03-01T00:00:00Z")),
                      make("Entitlement", "second", ENT_RAW, t=at(days=1)), at(days=1), [("Record", MAR)]),
                 id="D2-second-entitlement-starts-when-the-first-ends"),
    pytest.param(Case(BASE, make("Entitlement", "later", {**ENT_RAW, "activeFrom": "2026-05-01T00:00:00Z"},
                                 t=at(days=1)), at(days=1), [("Conflict", "EntitlementConflict")]),
                 id="scheduled-entitlement-overlapping-an-open-one"),
    pytest.param(Case((*BASE, edited(ENT, ENT_RAW, activeTo="2026-03-01T00:00:00Z")),
                      make("Entitlement", "second", {**ENT_RAW, "activeTo": "2026-02-15T00:00:00Z"}, t=at(days=1)),
                      at(days=1), [("Conflict", "EntitlementConflict")]),
                 id="second-entitlement-ending-before-the-first-ends-conflicts"),
    pytest.param(Case((*BASE, edited(ENT, ENT_RAW, activeTo="2026-03-01T00:00:00Z")),
                      make("Entitlement", "second", {**ENT_RAW, "activeFrom": "2026-02-01T00:00:00Z"}, t=at(days=1)),
                      at(days=1), [("Conflict", "EntitlementConflict")]),
                 id="second-entitlement-explicit-start-inside-the-first-conflicts"),
    pytest.param(Case((*BASE, edited(ENT, ENT_RAW, activeTo="2026-03-01T00:00:00Z")),
                      make("Entitlement", "second", {**ENT_RAW, "activeFrom": "2026-03-01T00:00:00Z"}, t=at(days=1)),
                      at(days=1), [("Record", at(days=1))]),
                 id="second-entitlement-scheduled-after-the-first"),
    # --- D1: identity ---
    pytest.param(Case(BASE, ENT, at(days=1), []), id="D1-same-object-nothing-to-do"),
    pytest.param(Case(BASE, make("Entitlement", "customer-1-gpt-4", ENT_RAW, t=at(days=7), uid="new-uid"),
                      at(days=7), [("Adopt", at(days=7))]), id="D1-recreated-same-spec-adopts"),
    pytest.param(Case((*BASE, GRANT, (deleted(GRANT, at(days=4)), at(days=4))),
                      make("Grant", "bonus", GRANT_RAW, t=at(days=6), uid="restored"), at(days=6),
                      [("Adopt", at(days=6))]), id="D1-restored-grant-readopts-never-duplicates"),
    pytest.param(Case((*BASE, GRANT), make("Grant", "bonus", {**GRANT_RAW, "amount": 500}, t=at(days=6), uid="u2"),
                      at(days=6), [("Conflict", "IdentityConflict")]), id="D1-recreated-different-amount"),
    pytest.param(Case((*BASE, GRANT), make("Grant", "bonus", {**GRANT_RAW, "priority": 0}, t=at(days=6), uid="u2"),
                      at(days=6), [("Conflict", "IdentityConflict")]),
                 id="D1-explicit-default-is-a-different-spec"),
    pytest.param(Case((*BASE, GRANT), make("Grant", "bonus", {**GRANT_RAW, "metadata": {"a": "b"}}, t=at(days=6),
                                           uid="u2"), at(days=6),
                      [("Adopt", at(days=6)), ("Amend", ("spec.metadata", at(days=6)))]),
                 id="D1-recreated-mutable-difference-is-an-edit-at-recreation"),
    pytest.param(Case((*BASE, edited(ENT, ENT_RAW, activeTo="2026-03-01T00:00:00Z")),
                      make("Entitlement", "customer-1-gpt-4", ENT_RAW, t=at(days=7), uid="u2"), at(days=7),
                      [("Conflict", "IdentityConflict")]), id="D1-recreated-without-recorded-active-to"),
    # --- D4: edits ---
    pytest.param(Case(BASE, edited(ENT, ENT_RAW, usagePeriod={"interval": "WEEK"}), at(days=10),
                      [("Amend", ("spec.usagePeriod.interval", FEB))]), id="D4-interval-from-next-boundary"),
    pytest.param(Case(BASE, edited(ENT, ENT_RAW, issueAfterReset=200), at(days=10),
                      [("Amend", ("spec.issueAfterReset", FEB))]), id="D4-issue-after-reset-from-next-boundary"),
    pytest.param(Case(BASE, edited(ENT, ENT_RAW, isSoftLimit=True), at(days=10),
                      [("Amend", ("spec.isSoftLimit", at(days=10)))]), id="D4-soft-limit-from-edit-instant"),
    pytest.param(Case(BASE, edited(ENT, ENT_RAW, preserveOverageAtReset=True), at(days=10),
                      [("Amend", ("spec.preserveOverageAtReset", at(days=10)))]),
                 id="D4-preserve-overage-for-later-resets"),
    pytest.param(Case(BASE, edited(ENT, ENT_RAW, metadata={"tier": "pro"}, deletionPolicy="Apply"), at(days=10),
                      [("Amend", ("spec.metadata", at(days=10)), ("spec.deletionPolicy", at(days=10)))]),
                 id="D4-metadata-and-deletion-policy"),
    pytest.param(Case(BASE, edited(ENT, ENT_RAW, usagePeriod={"interval": "P1M"}), at(days=10), [("Amend",)]),
                 id="D4-same-interval-written-differently-moves-nothing"),
    pytest.param(Case(BASE, edited(ENT, ENT_RAW, customer="other"), at(days=10), [("Refuse", "spec.customer")]),
                 id="D4-immutable-field-refused"),
    pytest.param(Case(BASE, edited(ENT, ENT_RAW, activeTo="2026-03-01T00:00:00Z"), at(days=10),
                      [("Amend",), ("End", MAR)]), id="D4-future-active-to-recorded-now"),
    pytest.param(Case(BASE, edited(ENT, ENT_RAW, activeTo="2026-01-15T00:00:00Z"), at(days=40),
                      [("Amend",), ("End", FEB)]), id="D4-past-active-to-takes-effect-at-period-start"),
    pytest.param(Case((*BASE, GRANT), edited(GRANT, GRANT_RAW, voidAt="2026-01-20T00:00:00Z"), at(days=40),
                      [("Amend",), ("Void", FEB)]), id="D4-past-void-takes-effect-at-period-start"),
    pytest.param(Case((*BASE, GRANT), edited(GRANT, GRANT_RAW, voidAt="2026-01-20T00:00:30Z"), at(days=10),
                      [("Amend",), ("Void", at(days=19))]), id="D4-void-in-current-period-truncated"),
    pytest.param(Case((*BASE, GRANT), edited(GRANT, GRANT_RAW, voidAt="2026-06-01T00:00:00Z"), at(days=10),
                      [("Amend",), ("Void", datetime(2026, 6, 1, tzinfo=UTC))]),
                 id="D4-future-void-recorded-takes-effect-when-it-arrives"),
    pytest.param(Case(BASE, make("Grant", "g", {**GRANT_RAW, "voidAt": "2025-12-01T00:00:00Z"}, t=at(days=40)),
                      at(days=40), [("Record", at(days=40))]), id="D4-grant-created-voided-in-the-past"),
    pytest.param(Case((make("Feature", "plain", {}), CUSTOMER,
                       make("Entitlement", "e", {"customer": "customer-1", "featureKey": "plain", "type": "boolean"})),
                      make("Entitlement", "e", {"customer": "customer-1", "featureKey": "plain", "type": "boolean",
                                                "usagePeriod": {"interval": "DAY"}}, generation=2),
                      at(days=1), [("Amend", ("spec.usagePeriod", at(days=1)))]),
                 id="D4-informational-usage-period-of-boolean"),
    pytest.param(Case((*BASE, GRANT), edited(GRANT, GRANT_RAW, amount=10), at(days=10), [("Refuse", "spec.amount")]),
                 id="D4-grant-amount-immutable"),
    pytest.param(Case((CUSTOMER,), edited(CUSTOMER, {"usageAttribution": {"subjectKeys": ["user-1", "user-2"]}}),
                      at(days=2), [("Amend", ("spec.usageAttribution.subjectKeys", at(days=2)))]),
                 id="D4-subject-keys-from-edit-instant"),
    pytest.param(Case((CUSTOMER, make("Customer", "other", {})),
                      edited(CUSTOMER, {"usageAttribution": {"subjectKeys": ["other"]}}), at(days=2),
                      [("Conflict", "KeyConflict")]), id="D5-subject-key-edit-taken"),
    pytest.param(Case((METER,), edited(METER, {**METER_RAW, "groupBy": {"model": "$.model", "tier": "$.tier"}}),
                      at(days=2), [("Amend", ("spec.groupBy.tier", at(days=2)))]), id="D4-new-group-by-key"),
    pytest.param(Case((METER,), edited(METER, {**METER_RAW, "groupBy": {}}), at(days=2),
                      [("Refuse", "spec.groupBy.model")]), id="D4-existing-group-by-key-immutable"),
    pytest.param(Case((METER, FEATURE), edited(FEATURE, {**FEATURE_RAW, "name": "GPT-4", "whenStale": "Deny"}),
                      at(days=2), [("Amend", ("spec.name", at(days=2)), ("spec.whenStale", at(days=2)))]),
                 id="D4-feature-names-and-policy"),
    # --- D3: deletion ---
    pytest.param(Case(BASE, deleted(ENT, at(days=5)), at(days=5), [("Orphan", "Orphan")]),
                 id="D3-delete-orphans-by-default"),
    pytest.param(Case((*BASE[:3], make("Entitlement", "customer-1-gpt-4", {**ENT_RAW, "deletionPolicy": "Apply"})),
                      deleted(ENT, at(days=5, minutes=0.5), {**ENT_RAW, "deletionPolicy": "Apply"}), at(days=5),
                      [("End", at(days=5)), ("Orphan", "Apply")]), id="D3-apply-ends-entitlement-at-deletion"),
    pytest.param(Case((*BASE[:3], (make("Entitlement", "customer-1-gpt-4", {**ENT_RAW, "deletionPolicy": "Apply"},
                                        t=at(days=5, minutes=0.5)), at(days=5, minutes=0.5))),
                      deleted(make("Entitlement", "customer-1-gpt-4", {**ENT_RAW, "deletionPolicy": "Apply"},
                                   t=at(days=5, minutes=0.5)), at(days=5, minutes=0.75)), at(days=5, minutes=0.75),
                      [("End", at(days=5, minutes=0.5)), ("Orphan", "Apply")]),
                 id="D3-apply-deletion-in-the-creation-minute-ends-at-the-start-not-before"),
    pytest.param(Case((*BASE, make("Grant", "bonus", {**GRANT_RAW, "deletionPolicy": "Apply"}, t=at(days=3))),
                      deleted(GRANT, at(days=5), {**GRANT_RAW, "deletionPolicy": "Apply"}), at(days=5),
                      [("Void", at(days=5)), ("Orphan", "Apply")]), id="D3-apply-voids-grant-at-deletion"),
    pytest.param(Case((*BASE, make("Grant", "bonus", {**GRANT_RAW, "deletionPolicy": "Apply",
                                                      "voidAt": "2026-01-04T00:00:00Z"}, t=at(days=3))),
                      deleted(GRANT, at(days=5), {**GRANT_RAW, "deletionPolicy": "Apply",
                                                  "voidAt": "2026-01-04T00:00:00Z"}), at(days=5),
                      [("Orphan", "Apply")]), id="D3-apply-keeps-an-earlier-void"),
    pytest.param(Case((*BASE, make("Grant", "bonus", {**GRANT_RAW, "deletionPolicy": "Apply"}, t=at(days=3))),
                      deleted(GRANT, at(days=5), {**GRANT_RAW, "deletionPolicy": "Apply"}), at(days=5),
                      [("Orphan", "Orphan")], force_orphan=True), id="D3-namespace-deletion-always-orphans"),
    pytest.param(Case(BASE, deleted(CUSTOMER, at(days=5)), at(days=5), [("Orphan", "Orphan")]),
                 id="D3-other-kinds-never-change-the-ledger"),
    pytest.param(Case((), deleted(GRANT, at(days=5)), at(days=5), []), id="D3-never-recorded-nothing-to-do"),
    # --- EntitlementReset: scheduled, no-op, refused ---
    pytest.param(Case(BASE, make("EntitlementReset", "r", {"entitlement": "customer-1-gpt-4",
                                                            "effectiveAt": "2026-01-20T00:00:00Z"}, t=at(days=10)),
                      at(days=10), [("Wait", "Scheduled")]), id="reset-in-the-future-waits"),
    pytest.param(Case(BASE, make("EntitlementReset", "r", {"entitlement": "customer-1-gpt-4",
                                                            "effectiveAt": "2026-01-20T00:00:00Z"}, t=at(days=10)),
                      at(days=25), [("Reset", at(days=19))]), id="scheduled-reset-applies-at-its-instant"),
    pytest.param(Case(BASE, make("EntitlementReset", "r", {"customer": "customer-1", "featureKey": "gpt_4_tokens"},
                                 t=at(days=10, minutes=0.5)), at(days=10, minutes=1), [("Reset", at(days=10))]),
                 id="reset-defaults-to-its-creation-minute"),
    pytest.param(Case((*BASE, make("EntitlementReset", "r1", {"entitlement": "customer-1-gpt-4"}, t=at(days=10))),
                      make("EntitlementReset", "r2", {"entitlement": "customer-1-gpt-4",
                                                      "effectiveAt": "2026-01-11T00:00:00Z"}, t=at(days=12)),
                      at(days=12), [("Noop", "NothingToReset")]), id="reset-not-after-last-reset-is-a-no-op"),
    pytest.param(Case(BASE, make("EntitlementReset", "r", {"entitlement": "customer-1-gpt-4",
                                                            "effectiveAt": "2026-01-10T00:00:00Z"}, t=at(days=40)),
                      at(days=40), [("Refuse", "spec.effectiveAt")]), id="reset-before-current-period-refused"),
    pytest.param(Case((make("Feature", "plain", {}), CUSTOMER,
                       make("Entitlement", "e", {"customer": "customer-1", "featureKey": "plain", "type": "boolean"})),
                      make("EntitlementReset", "r", {"entitlement": "e"}), T0, [("Refuse", "spec.entitlement")]),
                 id="reset-of-boolean-refused"),
    pytest.param(Case(BASE, make("EntitlementReset", "r", {"entitlement": "missing"}), T0,
                      [("Wait", "EntitlementNotFound")]), id="reset-waits-for-entitlement"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_reconcile(case: Case) -> None:
    _, actions = run(case)
    got = [summary(a) for a in actions]
    assert [
        g[: len(e)] if e == ("Amend",) else g for g, e in zip(got, case.expected, strict=False)
    ] == case.expected
    assert len(got) == len(case.expected), got


@pytest.mark.parametrize("case", CASES)
def test_reconcile_is_idempotent(case: Case) -> None:
    ledger, actions = run(case)
    ledger.apply(actions)
    before = ledger.snapshot()
    again = ledger.reconcile(case.desired, case.now, force_orphan=case.force_orphan)
    assert [a for a in again if is_write(a)] == []
    assert [summary(a) for a in again] == [summary(a) for a in actions if not is_write(a)]
    assert ledger.snapshot() == before


# --- what the records hold -------------------------------------------------------------------


def test_defaults_meaning_now_resolve_to_the_acting_instant() -> None:
    ledger = Ledger()
    for resource in (METER, FEATURE, CUSTOMER):
        ledger.settle(resource)
    created = at(days=2, hours=3, minutes=17.5)
    ledger.settle(make("Entitlement", "customer-1-gpt-4", ENT_RAW, t=created), at(days=9))
    (entitlement,) = ledger.entitlements.values()
    minute = at(days=2, hours=3, minutes=17)
    assert entitlement.created_at == created
    assert entitlement.measure_usage_from == minute
    assert entitlement.usage_period[0].recurrence.anchor == minute
    assert entitlement.issue_after_reset[0].value == IssueAfterReset(Decimal(100), 1)
    ledger.settle(make("Grant", "g", GRANT_RAW, t=at(days=4, minutes=0.5)), at(days=9))
    (grant,) = ledger.grants.values()
    assert (grant.effective_at, grant.priority, grant.max_rollover_amount) == (at(days=4), 0, None)
    assert grant.rollover_cap == Decimal(50)
    assert grant.entitlement_id == entitlement.id


def test_scheduled_entitlement_measures_usage_from_its_start() -> None:
    ledger = Ledger()
    for resource in BASE[:3]:
        ledger.settle(resource)
    ledger.settle(make("Entitlement", "e", {**ENT_RAW, "activeFrom": "2026-03-01T00:00:00Z"}))
    (entitlement,) = ledger.entitlements.values()
    assert (entitlement.created_at, entitlement.start) == (T0, MAR)
    assert entitlement.measure_usage_from == MAR
    assert entitlement.usage_period[0].recurrence.anchor == MAR


def test_current_period_start_measures_from_the_anchor_boundary() -> None:
    ledger = Ledger()
    for resource in (METER, FEATURE, CUSTOMER):
        ledger.settle(resource)
    raw = {**ENT_RAW, "measureUsageFrom": "CURRENT_PERIOD_START",
           "usagePeriod": {"interval": "MONTH", "anchor": "2025-11-01T00:00:00Z"}}  # fmt: skip
    ledger.settle(make("Entitlement", "e", raw, t=at(days=9)))
    (entitlement,) = ledger.entitlements.values()
    assert entitlement.measure_usage_from == T0


def test_edit_acts_at_the_instant_its_generation_was_first_seen() -> None:
    ledger = Ledger()
    for resource in BASE:
        ledger.settle(resource)
    edit = edited(ENT, ENT_RAW, isSoftLimit=True)
    first_seen = at(days=10)
    ledger.own[ENT.ref] = replace(ledger.own[ENT.ref], seen=(edit.generation, first_seen))
    (amend,) = ledger.reconcile(edit, at(days=30))
    assert isinstance(amend, Amend)
    assert amend.at == first_seen
    assert amend.record is not None and isinstance(amend.record, Entitlement)
    assert amend.record.soft_limit_at(at(days=9)) is False
    assert amend.record.soft_limit_at(first_seen) is True


def test_interval_edit_becomes_a_timeline_entry_not_an_override() -> None:
    ledger = Ledger()
    for resource in (*BASE, GRANT):
        ledger.settle(resource)
    ledger.settle(edited(ENT, ENT_RAW, usagePeriod={"interval": "WEEK"}), at(days=10))
    (entitlement,) = ledger.entitlements.values()
    assert [e.start for e in entitlement.usage_period] == [T0, FEB]
    assert entitlement.usage_period[-1].recurrence.interval == CalendarDuration(weeks=1)
    assert entitlement.active_to is None
    assert all(g.void_at is None for g in ledger.grants.values())


def test_grant_created_with_a_past_void_is_voided_from_the_current_period() -> None:
    ledger = Ledger()
    for resource in BASE:
        ledger.settle(resource)
    ledger.settle(
        make("Grant", "g", {**GRANT_RAW, "voidAt": "2025-12-01T00:00:00Z"}, t=at(days=40))
    )
    (grant,) = ledger.grants.values()
    assert (grant.effective_at, grant.void_at) == (at(days=40), FEB)


def test_orphaned_record_keeps_its_money() -> None:
    ledger = Ledger()
    for resource in (*BASE, GRANT):
        ledger.settle(resource)
    before = (dict(ledger.entitlements), dict(ledger.grants))
    ledger.settle(deleted(GRANT, at(days=5)))
    ledger.settle(deleted(ENT, at(days=5)))
    assert (dict(ledger.entitlements), dict(ledger.grants)) == before
    assert all(ledger.own[r.ref].deleted for r in (GRANT, ENT))


def test_readoption_keeps_id_and_recorded_instants() -> None:
    ledger = Ledger()
    for resource in (*BASE, GRANT):
        ledger.settle(resource)
    original = ledger.own[GRANT.ref]
    ledger.settle(deleted(GRANT, at(days=4)))
    ledger.settle(make("Grant", "bonus", GRANT_RAW, t=at(days=6), uid="restored"))
    adopted = ledger.own[GRANT.ref]
    assert (adopted.id, adopted.created_at, adopted.uid, adopted.deleted) == (
        original.id, original.created_at, "restored", False)  # fmt: skip
    assert len(ledger.grants) == 1
    (grant,) = ledger.grants.values()
    assert grant.effective_at == at(days=3)


def test_implicit_customer_is_shared_by_later_entitlements() -> None:
    ledger = Ledger()
    other = make("Feature", "other", {})
    for resource in (METER, FEATURE, other):
        ledger.settle(resource)
    ledger.settle(make("Entitlement", "a", {**ENT_RAW, "customer": None, "subject": "anon"}))
    actions = ledger.settle(make("Entitlement", "b", {"subject": "anon", "featureKey": "other", "type": "boolean"},
                                 t=at(days=1)))  # fmt: skip
    assert [type(a) for a in actions] == [Record]
    assert len(ledger.customers) == 1
    assert {e.customer_key for e in ledger.entitlements.values()} == {"anon"}


def test_resolve_subject_prefers_the_customer_whose_key_it_is() -> None:
    by_subject = RecordedCustomer("A", "a", T0, Customer("a", "a", ("x",)))
    by_key = RecordedCustomer("B", "x", at(days=1), Customer("x", "x"))
    assert resolve_subject("x", [by_subject, by_key]) is by_key
    assert resolve_subject("a", [by_subject, by_key]) is by_subject
    assert resolve_subject("nobody", [by_subject, by_key]) is None


def test_refusal_carries_every_error_and_the_first_one() -> None:
    (refuse,) = Ledger().reconcile(make("Grant", "g", {"amount": 0}), T0)
    assert isinstance(refuse, Refuse)
    assert {e.field for e in refuse.errors} >= {"spec.entitlement", "spec.amount"}
    assert refuse.error == refuse.errors[0]


def test_conflict_names_the_conflicting_entitlement() -> None:
    ledger = Ledger()
    for resource in BASE:
        ledger.settle(resource)
    (conflict,) = ledger.reconcile(make("Entitlement", "second", ENT_RAW, t=at(days=1)), at(days=1))
    assert isinstance(conflict, Conflict)
    first = next(iter(ledger.entitlements))
    assert conflict.conflicting_id == first
    assert conflict.message.startswith(
        f"entitlement with id {first} already exists for feature gpt_4_tokens and customer customer-1"
    )


# --- properties: idempotence for every kind, and any apply order converges (D6) ---------------

HORIZON = at(days=120)
MINUTES = st.integers(min_value=0, max_value=90 * 24 * 60)


def instant(minutes: int, seconds: int = 0) -> datetime:
    return T0 + timedelta(minutes=minutes, seconds=seconds)


@st.composite
def catalogues(draw: st.DrawFn, *, safe_instants: bool) -> list[Resource]:
    """Draw a namespace's objects: meters, features, customers, entitlements, grants, resets.

    At most one entitlement per customer and feature and one reset per entitlement (those are
    first come, first served by design). With ``safe_instants`` every grant's effectiveAt and
    voidAt lie after its creation, so no cross-object check depends on what was applied first.
    """
    when = lambda: instant(draw(MINUTES), draw(st.integers(0, 59)))  # noqa: E731
    resources = [
        make("Meter", "tokens", METER_RAW, t=when()),
        make("Feature", "gpt-4-tokens", FEATURE_RAW, t=when()),
        make("Feature", "plain", {}, t=when()),
        make("Customer", "customer-1", CUSTOMER_RAW, t=when()),
    ]
    holders = {"customer-1": [{"customer": "customer-1"}, {"subject": "user-1"}, {"subject": "customer-1"}],
               "anon": [{"subject": "anon"}]}  # fmt: skip
    metered: list[tuple[str, str]] = []
    for customer, forms in holders.items():
        for feature in ("gpt_4_tokens", "plain"):
            if not draw(st.booleans()):
                continue
            name = f"{customer}-{feature}".replace("_", "-")
            raw: dict[str, Any] = {**draw(st.sampled_from(forms)), "featureKey": feature}
            if feature == "plain":
                raw["type"] = "boolean"
            else:
                raw |= {
                    "type": "metered",
                    "usagePeriod": {"interval": draw(st.sampled_from(["DAY", "WEEK", "MONTH"]))},
                }
                if draw(st.booleans()):
                    raw["issueAfterReset"] = draw(st.integers(1, 500))
                metered.append((name, customer))
            if draw(st.booleans()):
                raw["activeTo"] = format_rfc3339(instant(draw(MINUTES) + 30 * 24 * 60))
            resources.append(make("Entitlement", name, raw, t=when()))
    for i in range(draw(st.integers(0, 4))):
        if not metered:
            break
        name, customer = draw(st.sampled_from(metered))
        t = when()
        target = draw(
            st.sampled_from(
                [{"entitlement": name}, {**holders[customer][-1], "featureKey": "gpt_4_tokens"}]
            )
        )
        raw = {**target, "amount": draw(st.integers(1, 1000))}
        if draw(st.booleans()):
            raw["priority"] = draw(st.integers(0, 5))
        low = 0 if safe_instants else -40 * 24 * 60
        if draw(st.booleans()):
            raw["effectiveAt"] = format_rfc3339(
                t + timedelta(minutes=draw(st.integers(low, 40 * 24 * 60)))
            )
        if draw(st.booleans()):
            raw["voidAt"] = format_rfc3339(
                t + timedelta(minutes=draw(st.integers(low, 40 * 24 * 60)))
            )
        resources.append(make("Grant", f"grant-{i}", raw, t=t))
    for name, _ in metered:
        if draw(st.booleans()):
            t = when()
            offset = draw(st.integers(-20 * 24 * 60, 20 * 24 * 60))
            resources.append(
                make(
                    "EntitlementReset",
                    f"reset-{name}",
                    {
                        "entitlement": name,
                        "effectiveAt": format_rfc3339(t + timedelta(minutes=offset)),
                    },
                    t=t,
                )
            )
    return resources


def converge(resources: Sequence[Resource]) -> Ledger:
    """Reconcile every object in ``resources`` order, pass after pass, until nothing is written."""
    ledger = Ledger()
    for _ in range(len(resources) + 1):
        wrote = False
        for resource in resources:
            actions = ledger.reconcile(resource, HORIZON)
            if any(is_write(a) for a in actions):
                ledger.apply(actions)
                wrote = True
        if not wrote:
            return ledger
    raise AssertionError("reconciliation did not converge")


def canonical(ledger: Ledger) -> object:
    """Return the ledger with generated ids replaced by the identities they were given to."""
    names = {own.id: f"{ref.kind.value}/{ref.name}" for ref, own in ledger.own.items()}
    names |= {
        i: f"implicit/{c.customer.key}" for i, c in ledger.customers.items() if c.name is None
    }
    return (
        {ref: replace(own, id="") for ref, own in ledger.own.items()},
        sorted((m.name, m.created_at, repr(m.meter)) for m in ledger.meters.values()),
        sorted((f.name, f.created_at, repr(f.feature)) for f in ledger.features.values()),
        # An implicit customer is recorded by whichever entitlement names its subject first, so
        # only its instant may depend on the order (nothing waits for it, no amount uses it).
        sorted(
            (str(c.name), c.created_at if c.name else None, repr(c.customer))
            for c in ledger.customers.values()
        ),
        {names[i]: replace(e, id="") for i, e in ledger.entitlements.items()},
        {
            names[i]: replace(g, id="", entitlement_id=names[g.entitlement_id])
            for i, g in ledger.grants.items()
        },
    )


@given(catalogues(safe_instants=False))
def test_every_kind_is_idempotent_once_converged(resources: list[Resource]) -> None:
    ledger = converge(resources)
    before = ledger.snapshot()
    for resource in resources:
        assert [a for a in ledger.reconcile(resource, HORIZON) if is_write(a)] == []
    deletions = [replace(r, deleted_at=HORIZON) for r in resources]
    for resource in deletions:
        ledger.apply(ledger.reconcile(resource, HORIZON))
    money = (dict(ledger.entitlements), dict(ledger.grants))
    assert money == (before[4], before[5]), "deleting with the default Orphan policy moved money"
    for resource in deletions:
        assert ledger.reconcile(resource, HORIZON) == ()


@given(st.data())
def test_any_apply_order_converges_to_the_same_ledger(data: st.DataObject) -> None:
    resources = data.draw(catalogues(safe_instants=True))
    first = converge(resources)
    second = converge(data.draw(st.permutations(resources)))
    assert canonical(first) == canonical(second)
