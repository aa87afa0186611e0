"""The compact view applies feed changes to packed records: removals, edits, new grants."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from allotment.ledger.core.model import (
    Aggregation,
    CalendarDuration,
    Customer,
    Entitlement,
    EntitlementType,
    Feature,
    Grant,
    Meter,
)
from allotment.ledger.core.periods import new_usage_period
from allotment.sidecar.compute import CoreValueEngine
from allotment.sidecar.source import (
    CustomerRecord,
    FeatureRecord,
    FeedBatch,
    LoadedNamespace,
    MeterRecord,
    RecordRemoved,
)
from allotment.sidecar.view import View, micros

T0 = datetime(2026, 11, 1, tzinfo=UTC)
NOW = T0 + timedelta(days=3)
NS = "team-a"


def records(i: int) -> tuple[CustomerRecord, Entitlement, Grant]:
    key = f"customer-{i}"
    customer = CustomerRecord(f"01C{i:023d}", Customer(key, key, (f"sub-{i}",)), T0)
    entitlement = Entitlement(
        id=f"01E{i:023d}",
        namespace=NS,
        name=f"{key}-tokens",
        customer_key=key,
        feature_key="tokens",
        type=EntitlementType.METERED,
        created_at=T0,
        usage_period=new_usage_period(CalendarDuration.parse("MONTH"), T0, T0),
        measure_usage_from=T0,
    )
    grant = Grant(
        id=f"01G{i:023d}",
        namespace=NS,
        name=f"{key}-grant",
        entitlement_id=entitlement.id,
        amount=Decimal(100 * (i + 1)),
        effective_at=T0,
        created_at=T0,
    )
    return customer, entitlement, grant


def loaded_view(n: int = 3) -> View:
    made = [records(i) for i in range(n)]
    view = View(NS, CoreValueEngine(), freeze_gc=False)
    meter = MeterRecord("01METER", Meter("tokens", "prompt", Aggregation.SUM, "$.tokens"), T0)
    feature = FeatureRecord("01FEATURE", Feature("tokens", "Tokens", meter_slug="tokens"), T0)
    view.load(
        LoadedNamespace(
            NS,
            "epoch",
            1,
            1,
            customers=[c for c, _, _ in made],
            features=[feature],
            meters=[meter],
            entitlements=[e for _, e, _ in made],
            grants=[g for _, _, g in made],
        ),
        NOW,
    )
    return view


def balance(view: View, subject: str) -> object:
    body = view.hot_body(subject, "tokens", micros(NOW), by_subject=True, v2=False)
    assert body is not None
    return json.loads(body)["balance"]


def test_records_rebuild_as_loaded() -> None:
    view = loaded_view()
    for i in range(3):
        customer, entitlement, grant = records(i)
        assert view.customer(customer.customer.key) == customer
        assert view.customer(customer.id) == customer
        assert view.entitlement(entitlement.id) == entitlement
        assert view.grants_of(entitlement.id) == [grant]
        assert balance(view, f"sub-{i}") == 100 * (i + 1)


def test_removing_the_first_grant_loaded_removes_it_only() -> None:
    view = loaded_view()
    first = records(0)[2]  # its document is the template the others are packed against
    assert view.apply(FeedBatch("epoch", 2, 1, [RecordRemoved("grant", first.id)]), NOW)
    assert view.grants_of(first.entitlement_id) == []
    assert balance(view, "sub-0") == 0
    assert [balance(view, f"sub-{i}") for i in (1, 2)] == [200, 300]
    assert view.counts().grants == 2


def test_a_grant_edit_replaces_the_held_one() -> None:
    view = loaded_view()
    grant = records(1)[2]
    balance(view, "sub-1")  # cached first
    edited = replace(grant, amount=Decimal(999))
    assert view.apply(FeedBatch("epoch", 2, 1, [edited]), NOW)
    assert view.grants_of(grant.entitlement_id) == [edited]
    assert balance(view, "sub-1") == 999
    assert view.counts().grants == 3


def test_an_ended_entitlement_is_not_found_by_feature_key() -> None:
    view = loaded_view()
    entitlement = records(2)[1]
    ended = replace(entitlement, active_to=NOW - timedelta(hours=1))
    assert view.apply(FeedBatch("epoch", 2, 1, [ended]), NOW)
    assert view.hot_body("sub-2", "tokens", micros(NOW), by_subject=True, v2=False) is None
    assert (
        view.hot_body("customer-2", entitlement.id, micros(NOW), by_subject=False, v2=True)
        is not None
    )
    assert view.entitlement(entitlement.id) == ended


def test_a_customer_gaining_a_subject_key_is_found_by_it() -> None:
    view = loaded_view()
    customer = records(0)[0]
    widened = replace(customer, customer=replace(customer.customer, subject_keys=("sub-0", "x")))
    assert view.apply(FeedBatch("epoch", 2, 1, [widened]), NOW)
    assert view.customer_by_subject("x") == widened
    assert balance(view, "x") == 100
