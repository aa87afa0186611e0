"""The view's compact layout answers as the records it was loaded from (ids, grants, v2 bodies)."""

from __future__ import annotations

import json
from dataclasses import replace
from decimal import Decimal

import pytest

from allotment.ledger.core.model import Aggregation, Feature, Meter
from allotment.sidecar.compute import CoreValueEngine
from allotment.sidecar.source import (
    CustomerRecord,
    FeatureRecord,
    FeedBatch,
    LoadedNamespace,
    MeterRecord,
    RecordRemoved,
)
from allotment.sidecar.view import View, looks_like_ulid, micros

from .test_view_changes import NOW, NS, T0, balance, loaded_view, records


@pytest.mark.parametrize(
    ("customer_id", "entitlement_id", "other_form"),
    [
        pytest.param("01C" + "0" * 23, "01E" + "0" * 23, "01e" + "0" * 23, id="ledger-ulid"),
        pytest.param("01c" + "0" * 23, "01e" + "0" * 23, "01E" + "0" * 23, id="lower-case-ulid"),
        pytest.param("customer-one", "entitlement-one", "ENTITLEMENT-ONE", id="not-a-ulid"),
        pytest.param("81C" + "0" * 23, "81E" + "0" * 23, "81e" + "0" * 23, id="past-128-bits"),
    ],
)
def test_ids_resolve_by_their_exact_text_only(
    customer_id: str, entitlement_id: str, other_form: str
) -> None:
    customer, entitlement, grant = records(0)
    customer = replace(customer, id=customer_id)
    entitlement = replace(entitlement, id=entitlement_id)
    grant = replace(grant, entitlement_id=entitlement_id)
    view = View(NS, CoreValueEngine(), freeze_gc=False)
    view.load(
        LoadedNamespace(
            NS,
            "epoch",
            1,
            1,
            customers=[customer],
            features=[FeatureRecord("01F", Feature("tokens", "Tokens", meter_slug="tokens"), T0)],
            meters=[MeterRecord("01M", Meter("tokens", "p", Aggregation.SUM, "$.tokens"), T0)],
            entitlements=[entitlement],
            grants=[grant],
        ),
        NOW,
    )
    # A customer is found by id where the id looks like a ULID (OpenMeter tries ids first).
    assert view.customer(customer_id) == (customer if looks_like_ulid(customer_id) else None)
    assert view.customer("customer-0") == customer
    assert view.entitlement(entitlement_id) == entitlement
    assert view.grants_of(entitlement_id) == [grant]
    assert view.entitlement(other_form) is None
    # An entitlement reference is tried as an id where it looks like a ULID (spec 4.6).
    found_by_ref = view.hot_body(
        "customer-0", entitlement_id, micros(NOW), by_subject=False, v2=False
    )
    assert (found_by_ref is not None) == looks_like_ulid(entitlement_id)
    found_by_id = view.hot_body(customer_id, "tokens", micros(NOW), by_subject=False, v2=False)
    assert (found_by_id is not None) == looks_like_ulid(customer_id)
    assert view.hot_body("customer-0", other_form, micros(NOW), by_subject=False, v2=False) is None


def test_an_entitlement_edit_keeps_its_grants_and_grants_come_and_go() -> None:
    view = loaded_view()
    _, entitlement, grant = records(1)
    renamed = replace(entitlement, name="renamed")
    second = replace(grant, id="01H" + "1" * 23, amount=Decimal(5))
    assert view.apply(FeedBatch("epoch", 2, 1, [renamed, second]), NOW)
    assert view.entitlement(entitlement.id) == renamed
    assert view.grants_of(entitlement.id) == [grant, second]
    assert balance(view, "sub-1") == 205
    assert view.apply(FeedBatch("epoch", 3, 1, [RecordRemoved("grant", grant.id)]), NOW)
    assert view.grants_of(entitlement.id) == [second]
    assert view.apply(FeedBatch("epoch", 4, 1, [replace(renamed, name="again")]), NOW)
    assert view.grants_of(entitlement.id) == [second]
    assert balance(view, "sub-1") == 5
    assert view.counts().grants == 3


def test_a_v2_read_after_v1_reads_has_the_grant_balances() -> None:
    view = loaded_view()
    _, entitlement, grant = records(2)
    v1 = view.hot_body("sub-2", "tokens", micros(NOW), by_subject=True, v2=False)
    v2 = view.hot_body("sub-2", "tokens", micros(NOW), by_subject=True, v2=True)
    assert v1 is not None and v2 is not None
    assert "grantBalances" not in json.loads(v1)
    assert json.loads(v2)["grantBalances"] == {grant.id: 300}
    assert view.value(entitlement, NOW).grant_balances == {grant.id: Decimal(300)}
    assert json.loads(view.body(entitlement, NOW, v2=False)) == json.loads(v1)


def test_a_customer_record_rebuilds_with_its_id_text() -> None:
    view = loaded_view()
    customer: CustomerRecord = records(0)[0]
    assert view.customer_by_subject("sub-0") == customer
    assert view.customer_of(records(0)[1]) == customer
