"""apply_resource on both databases: what the operator and ``allotment dev`` drive (D1-D5)."""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from allotment.cli.manifests import Document, manifest_files, read_documents
from allotment.ledger.apply import Outcome, apply_resource
from allotment.ledger.core.model import Entitlement, Grant
from allotment.ledger.core.resources import parse_resource
from allotment.ledger.storage import catalogue
from allotment.ledger.storage.codec import CustomerRecord
from allotment.ledger.storage.engine import Ledger

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def stamp(body: dict[str, Any], at: datetime = T0, **metadata: Any) -> dict[str, Any]:
    """Return ``body`` as an apiserver hands it over: uid, generation, creation instant."""
    stamped = copy.deepcopy(body)
    meta = stamped.setdefault("metadata", {})
    meta.setdefault("namespace", "default")
    meta.setdefault("uid", str(uuid.uuid4()))
    meta.setdefault("generation", 1)
    meta.setdefault("creationTimestamp", at.isoformat())
    meta.update(metadata)
    return stamped


def apply(ledger: Ledger, body: dict[str, Any], now: datetime = T0) -> Outcome:
    with ledger.write() as connection:
        return apply_resource(connection, parse_resource(body), now)


def converge(ledger: Ledger, bodies: list[dict[str, Any]]) -> dict[str, Outcome]:
    """Apply in name order, as Argo CD does, re-applying what waits until nothing moves."""
    outcomes: dict[str, Outcome] = {}
    pending = sorted(bodies, key=lambda b: b["metadata"]["name"])
    while pending:
        waiting = []
        for body in pending:
            outcome = apply(ledger, body)
            outcomes[f"{body['kind']}/{body['metadata']['name']}"] = outcome
            if not outcome.ready:
                waiting.append(body)
        if len(waiting) == len(pending):
            break
        pending = waiting
    return outcomes


def example_bodies() -> list[dict[str, Any]]:
    return [
        stamp(item.body)
        for path in manifest_files([EXAMPLES])
        for item in read_documents(path)
        if isinstance(item, Document)
    ]


SEED = [
    {
        "apiVersion": "allotment.dev/v1alpha1",
        "kind": "Meter",
        "metadata": {"name": "tokens-total"},
        "spec": {"eventType": "prompt", "aggregation": "SUM", "valueProperty": "$.tokens"},
    },
    {
        "apiVersion": "allotment.dev/v1alpha1",
        "kind": "Feature",
        "metadata": {"name": "gpt-4-tokens"},
        "spec": {"meterSlug": "tokens_total"},
    },
    {
        "apiVersion": "allotment.dev/v1alpha1",
        "kind": "Customer",
        "metadata": {"name": "customer-1"},
        "spec": {},
    },
    {
        "apiVersion": "allotment.dev/v1alpha1",
        "kind": "Entitlement",
        "metadata": {"name": "customer-1-gpt-4-tokens"},
        "spec": {
            "customer": "customer-1",
            "featureKey": "gpt_4_tokens",
            "type": "metered",
            "usagePeriod": {"interval": "MONTH"},
            "issueAfterReset": 1000000,
        },
    },
]
BONUS = {
    "apiVersion": "allotment.dev/v1alpha1",
    "kind": "Grant",
    "metadata": {"name": "customer-1-bonus"},
    "spec": {"entitlement": "customer-1-gpt-4-tokens", "amount": 500},
}


def grants(ledger: Ledger) -> list[Grant]:
    with ledger.read() as connection:
        return [r for r in catalogue.current_records(connection, "default") if isinstance(r, Grant)]


def test_the_examples_converge_in_name_order_and_a_second_pass_changes_nothing(
    ledger: Ledger,
) -> None:
    bodies = example_bodies()
    first = converge(ledger, bodies)
    assert {k: o.reason for k, o in first.items() if not o.ready} == {}
    again = {f"{b['kind']}/{b['metadata']['name']}": apply(ledger, b) for b in bodies}
    assert {k: o.action for k, o in again.items()} == {
        k: ("Noop" if o.action == "Noop" else "Unchanged") for k, o in again.items()
    }


def test_an_entitlement_waits_for_its_feature_then_acts_at_the_feature_instant(
    ledger: Ledger,
) -> None:
    meter, _feature, customer, entitlement = (stamp(b) for b in SEED)
    apply(ledger, meter)
    apply(ledger, customer)
    waiting = apply(ledger, entitlement)
    assert (waiting.action, waiting.reason) == ("Wait", "FeatureNotFound")
    later = T0 + timedelta(minutes=5)
    apply(ledger, stamp(SEED[1], at=later), now=later)
    recorded = apply(ledger, entitlement, now=later)
    assert recorded.action == "Record"
    assert recorded.status["measureUsageFrom"] == "2026-11-24T12:05:00Z"


def test_a_grant_deleted_and_re_created_with_the_same_spec_is_one_ledger_grant(
    ledger: Ledger,
) -> None:
    converge(ledger, [stamp(b) for b in SEED])
    created = stamp(BONUS)
    first = apply(ledger, created)
    gone = stamp(BONUS, uid=created["metadata"]["uid"], deletionTimestamp="2026-11-24T12:10:00Z")
    assert apply(ledger, gone).action == "Orphan"
    again = apply(ledger, stamp(BONUS, at=T0 + timedelta(hours=1)), now=T0 + timedelta(hours=1))
    assert again.action == "Adopt"
    assert again.status["id"] == first.status["id"]
    assert [(g.amount, g.effective_at, g.void_at) for g in grants(ledger)] == [(500, T0, None)]


def test_a_re_created_grant_with_another_amount_is_an_identity_conflict(ledger: Ledger) -> None:
    converge(ledger, [stamp(b) for b in SEED])
    created = stamp(BONUS)
    apply(ledger, created)
    apply(ledger, stamp(BONUS, uid=created["metadata"]["uid"], deletionTimestamp=T0.isoformat()))
    different = copy.deepcopy(BONUS)
    different["spec"]["amount"] = 900
    conflict = apply(ledger, stamp(different))
    assert (conflict.action, conflict.reason) == ("Conflict", "IdentityConflict")
    assert [g.amount for g in grants(ledger)] == [500]


def test_deleting_a_grant_with_policy_apply_voids_it_at_the_deletion_instant(
    ledger: Ledger,
) -> None:
    converge(ledger, [stamp(b) for b in SEED])
    body = copy.deepcopy(BONUS)
    body["spec"]["deletionPolicy"] = "Apply"
    created = stamp(body)
    apply(ledger, created)
    deleted_at = T0 + timedelta(minutes=30)
    apply(
        ledger,
        stamp(body, uid=created["metadata"]["uid"], deletionTimestamp=deleted_at.isoformat()),
        now=deleted_at,
    )
    assert [g.void_at for g in grants(ledger)] == [deleted_at]


def test_an_edit_acts_at_the_instant_its_generation_was_first_seen(ledger: Ledger) -> None:
    bodies = [stamp(b) for b in SEED]
    converge(ledger, bodies)
    edited = copy.deepcopy(bodies[3])
    edited["metadata"]["generation"] = 2
    edited["spec"]["isSoftLimit"] = True
    edited["spec"]["usagePeriod"]["interval"] = "PT30M"  # refused: under an hour
    seen = T0 + timedelta(minutes=7)
    assert apply(ledger, edited, now=seen).action == "Refuse"
    edited["metadata"]["generation"] = 3
    edited["spec"]["usagePeriod"]["interval"] = "MONTH"
    first_seen = T0 + timedelta(minutes=9)
    assert apply(ledger, edited, now=first_seen).action == "Amend"
    assert apply(ledger, edited, now=T0 + timedelta(hours=2)).action == "Unchanged"
    with ledger.read() as connection:
        (entitlement,) = [
            r
            for r in catalogue.current_records(connection, "default")
            if isinstance(r, Entitlement)
        ]
    assert [(v.since, v.value) for v in entitlement.is_soft_limit][-1] == (first_seen, True)


def test_a_customer_declared_after_an_entitlement_by_subject_absorbs_the_implicit_customer(
    ledger: Ledger,
) -> None:
    meter, feature = stamp(SEED[0]), stamp(SEED[1])
    by_subject = copy.deepcopy(SEED[3])
    del by_subject["spec"]["customer"]
    by_subject["spec"]["subject"] = "acme-prod"
    customer = {
        "apiVersion": "allotment.dev/v1alpha1",
        "kind": "Customer",
        "metadata": {"name": "acme"},
        "spec": {"usageAttribution": {"subjectKeys": ["acme-prod", "acme-staging"]}},
    }
    bodies = [meter, feature, stamp(by_subject), stamp(customer)]
    for body in bodies:
        assert apply(ledger, body).ready
    with ledger.read() as connection:
        records = catalogue.current_records(connection, "default")
    customers = [r.customer.key for r in records if isinstance(r, CustomerRecord)]
    entitlements = [(r.name, r.customer_key) for r in records if isinstance(r, Entitlement)]
    assert customers == ["acme"]
    assert entitlements == [("customer-1-gpt-4-tokens", "acme")]
    assert {apply(ledger, body).action for body in bodies} == {"Unchanged"}
