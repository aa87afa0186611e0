"""apply_resource for Plans and Subscriptions on both databases: example 08 end to end.

What a user checks: the balances and access the ledger answers for each subscriber, how a
Plan edit and an upgrade reach them, top-ups, deletion, and the collision rule.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from allotment.cli.manifests import Document, manifest_files, read_documents
from allotment.ledger import apply as apply_module
from allotment.ledger.apply import Outcome, continue_rollout
from allotment.ledger.core.model import Entitlement, EntitlementValue, Grant
from allotment.ledger.core.plans import SUBSCRIPTION_ID
from allotment.ledger.storage import catalogue
from allotment.ledger.storage.engine import Ledger
from allotment.ledger.values import entitlement_values
from tests.ledger.test_apply import EXAMPLES, T0, apply, converge, stamp

LATER = T0 + timedelta(days=10)
NEXT_PERIOD = T0 + timedelta(days=31)  # the example's periods are monthly from T0


def bodies() -> dict[str, dict[str, Any]]:
    return {
        f"{item.body['kind']}/{item.body['metadata']['name']}": stamp(item.body)
        for path in manifest_files([EXAMPLES / "08-plans"])
        for item in read_documents(path)
        if isinstance(item, Document)
    }


def values(ledger: Ledger, at: datetime) -> dict[tuple[str, str], EntitlementValue]:
    """Return, per customer and feature, the value at ``at`` of the entitlement started last."""
    with ledger.read() as connection:
        records = {
            r.id: r
            for r in catalogue.current_records(connection, "default", kinds=["entitlement"])
            if isinstance(r, Entitlement)
        }
        found = entitlement_values(connection, "default", at)
    latest: dict[tuple[str, str], Entitlement] = {}
    for record in sorted(records.values(), key=lambda r: r.start):
        if record.start <= at:
            latest[(record.customer_key, record.feature_key)] = record
    return {key: found[record.id] for key, record in latest.items() if record.id in found}


def held(ledger: Ledger) -> list[Entitlement]:
    with ledger.read() as connection:
        return [
            r
            for r in catalogue.current_records(connection, "default", kinds=["entitlement"])
            if isinstance(r, Entitlement) and SUBSCRIPTION_ID in r.metadata
        ]


@pytest.fixture
def example(ledger: Ledger) -> dict[str, dict[str, Any]]:
    objects = bodies()
    outcomes = converge(ledger, list(objects.values()))
    assert {k: o.reason for k, o in outcomes.items() if not o.ready} == {}
    return objects


def test_the_example_gives_each_subscriber_its_plan(
    ledger: Ledger, example: dict[str, dict[str, Any]]
) -> None:
    found = values(ledger, LATER)
    assert found[("acme-corp", "ai_requests")].balance == Decimal(1000)
    assert found[("acme-corp", "priority_support")].has_access
    assert found[("globex", "ai_requests")].balance == Decimal(1500)  # 1000 + the top-up
    assert found[("hooli", "ai_requests")].balance == Decimal(100)
    assert ("hooli", "priority_support") not in found
    assert len(held(ledger)) == 5


def test_subscription_status_lists_its_entitlements(
    ledger: Ledger, example: dict[str, dict[str, Any]]
) -> None:
    outcome = apply(ledger, example["Subscription/globex-pro"], LATER)
    assert outcome.action == "Unchanged"
    assert outcome.status["customerKey"] == "globex"
    assert sorted(e["featureKey"] for e in outcome.status["entitlements"]) == [
        "ai_requests",
        "priority_support",
    ]


def _edited(body: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    edited = {**body, "spec": {**body["spec"], **spec}}
    edited["metadata"] = {**body["metadata"], "generation": body["metadata"]["generation"] + 1}
    return edited


def test_a_plan_edit_rolls_out_to_subscribers_at_their_next_period(
    ledger: Ledger, example: dict[str, dict[str, Any]]
) -> None:
    pro = example["Plan/pro"]
    features = [dict(f) for f in pro["spec"]["features"]]
    features[0]["issueAfterReset"] = 2000
    outcome = apply(ledger, _edited(pro, {"features": features}), LATER)
    assert outcome.action == "Amend"
    assert "rolled out to 2 of 2 subscriptions" in outcome.message
    assert values(ledger, LATER)[("acme-corp", "ai_requests")].balance == Decimal(1000)
    after = values(ledger, NEXT_PERIOD)
    assert after[("acme-corp", "ai_requests")].balance == Decimal(2000)
    assert after[("hooli", "ai_requests")].balance == Decimal(100)


def test_an_immediate_raise_adds_the_difference_now(
    ledger: Ledger, example: dict[str, dict[str, Any]]
) -> None:
    starter = example["Plan/starter"]
    features = [{**starter["spec"]["features"][0], "issueAfterReset": 250}]
    apply(ledger, _edited(starter, {"features": features}), LATER)
    apply(ledger, _edited(starter, {"features": features}), LATER + timedelta(hours=1))
    assert values(ledger, LATER)[("hooli", "ai_requests")].balance == Decimal(250)
    assert values(ledger, NEXT_PERIOD)[("hooli", "ai_requests")].balance == Decimal(250)


def test_a_downgrade_keeps_the_entitlement_and_the_top_up(
    ledger: Ledger, example: dict[str, dict[str, Any]]
) -> None:
    before = {e.feature_key: e.id for e in held(ledger) if e.customer_key == "globex"}
    outcome = apply(
        ledger, _edited(example["Subscription/globex-pro"], {"planKey": "starter"}), LATER
    )
    assert outcome.ready
    after = values(ledger, LATER + timedelta(minutes=1))
    assert after[("globex", "ai_requests")].balance == Decimal(1500)  # until the boundary
    assert not after[("globex", "priority_support")].has_access  # no period: at once
    kept = {e.feature_key: e.id for e in held(ledger) if e.customer_key == "globex"}
    assert kept["ai_requests"] == before["ai_requests"]
    # starter is Immediately but lowers 1000 to 100: from the next period; the top-up stays
    assert values(ledger, NEXT_PERIOD)[("globex", "ai_requests")].balance == Decimal(600)


def test_deleting_a_plan_changes_no_subscriber(
    ledger: Ledger, example: dict[str, dict[str, Any]]
) -> None:
    pro = stamp(example["Plan/pro"], deletionTimestamp=LATER.isoformat())
    deleted = apply(ledger, pro, LATER)
    assert deleted.action == "Orphan"
    assert "2 subscriptions keep their entitlements as last applied" in deleted.message
    outcome = apply(ledger, example["Subscription/acme-corp-pro"], LATER)
    assert (outcome.ready, outcome.reason) == (False, "PlanNotFound")
    assert values(ledger, NEXT_PERIOD)[("acme-corp", "ai_requests")].balance == Decimal(1000)


@pytest.mark.parametrize(
    ("name", "access_after"),
    [
        pytest.param("acme-corp-pro", True, id="orphan"),
        pytest.param("globex-pro", False, id="apply"),
    ],
)
def test_deleting_a_subscription_follows_its_policy(
    ledger: Ledger, example: dict[str, dict[str, Any]], name: str, access_after: bool
) -> None:
    body = stamp(example[f"Subscription/{name}"], deletionTimestamp=LATER.isoformat())
    outcome: Outcome = apply(ledger, body, LATER)
    assert outcome.action == "Orphan"
    customer = body["spec"]["customer"]
    found = values(ledger, LATER + timedelta(minutes=1))
    assert (customer, "priority_support") in found
    assert found[(customer, "priority_support")].has_access is access_after


def test_an_entitlement_colliding_with_a_subscription_is_not_recorded(
    ledger: Ledger, example: dict[str, dict[str, Any]]
) -> None:
    hand = stamp(
        {
            "apiVersion": "allotment.dev/v1alpha1",
            "kind": "Entitlement",
            "metadata": {"name": "acme-corp-support"},
            "spec": {"customer": "acme-corp", "featureKey": "priority_support", "type": "boolean"},
        },
        LATER,
    )
    outcome = apply(ledger, hand, LATER)
    assert (outcome.ready, outcome.reason) == (False, "EntitlementConflict")
    assert all(e.active_to is None for e in held(ledger))


def test_a_subscription_colliding_with_an_entitlement_records_its_other_features(
    ledger: Ledger,
) -> None:
    objects = bodies()
    hand = stamp(
        {
            "apiVersion": "allotment.dev/v1alpha1",
            "kind": "Entitlement",
            "metadata": {"name": "acme-corp-support"},
            "spec": {"customer": "acme-corp", "featureKey": "priority_support", "type": "boolean"},
        }
    )
    subscription = objects.pop("Subscription/acme-corp-pro")
    outcomes = converge(ledger, [*objects.values(), hand])
    assert outcomes["Entitlement/acme-corp-support"].ready
    outcome = apply(ledger, subscription)
    assert (outcome.ready, outcome.reason) == (False, "EntitlementConflict")
    assert "Entitlement default/acme-corp-support" in outcome.message
    mine = [e.feature_key for e in held(ledger) if e.customer_key == "acme-corp"]
    assert mine == ["ai_requests"]
    assert values(ledger, LATER)[("acme-corp", "priority_support")].has_access


def test_a_re_created_subscription_re_adopts_its_entitlements(
    ledger: Ledger, example: dict[str, dict[str, Any]]
) -> None:
    before = sorted(e.id for e in held(ledger))
    body = example["Subscription/acme-corp-pro"]
    apply(ledger, stamp(body, deletionTimestamp=LATER.isoformat()), LATER)
    again = stamp(body, LATER + timedelta(hours=1), uid="another-uid")
    outcome = apply(ledger, again, LATER + timedelta(hours=1))
    assert outcome.action == "Adopt"
    assert sorted(e.id for e in held(ledger)) == before


# --- rollouts in chunks ------------------------------------------------------------------------


def _namespaced(objects: dict[str, dict[str, Any]], namespace: str) -> list[dict[str, Any]]:
    placed = []
    for body in objects.values():
        copied = {**body, "metadata": {**body["metadata"], "namespace": namespace}}
        placed.append(copied)
    return placed


def _starter_team(namespace: str, count: int) -> list[dict[str, Any]]:
    return [
        stamp(
            {
                "apiVersion": "allotment.dev/v1alpha1",
                "kind": "Subscription",
                "metadata": {"name": f"team-{i}-starter", "namespace": namespace},
                "spec": {"subject": f"team-{i}", "planKey": "starter"},
            }
        )
        for i in range(count)
    ]


def _shape(ledger: Ledger, namespace: str) -> list[tuple[str, Any]]:
    """Return the namespace's entitlements and grants with the random subscription ids (and
    the ids derived from them) left out: what two ledgers built alike must hold alike."""
    with ledger.read() as connection:
        records = catalogue.current_records(connection, namespace, kinds=["entitlement", "grant"])
    names = {r.id: r.name for r in records if isinstance(r, Entitlement)}
    shaped: list[tuple[str, Any]] = []
    for record in records:
        if isinstance(record, Entitlement):
            metadata = {k: v for k, v in record.metadata.items() if k != SUBSCRIPTION_ID}
            shaped.append((record.name, replace(record, id="", namespace="", metadata=metadata)))
        elif isinstance(record, Grant):
            annotations = {k: v for k, v in record.annotations.items() if k != SUBSCRIPTION_ID}
            owner = names[record.entitlement_id]
            shaped.append(
                (
                    owner,
                    replace(
                        record,
                        id="",
                        namespace="",
                        name=record.name.split("/")[-1],
                        entitlement_id="",
                        annotations=annotations,
                    ),
                )
            )
    return sorted(shaped, key=lambda item: (item[0], repr(item[1])))


class _Crash(Exception):
    """The operator dies in the middle of a chunk."""


def _raise_starter(namespace: str, objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    starter = {**objects["Plan/starter"]}
    starter["metadata"] = {**starter["metadata"], "namespace": namespace}
    features = [{**starter["spec"]["features"][0], "issueAfterReset": 300}]
    return _edited(starter, {"features": features})


def _until_rolled_out(ledger: Ledger, body: dict[str, Any], now: datetime) -> list[Outcome]:
    outcomes = [apply(ledger, body, now)]
    while outcomes[-1].reason == "RollingOut" and len(outcomes) < 50:
        now += timedelta(seconds=1)
        outcomes.append(apply(ledger, body, now))
    return outcomes


def test_a_plan_edit_rolls_out_a_chunk_per_transaction_with_progress_in_status(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(apply_module, "ROLLOUT_CHUNK", 2)
    objects = bodies()
    converge(ledger, [*objects.values(), *_starter_team("default", 5)])
    outcomes = _until_rolled_out(ledger, _raise_starter("default", objects), LATER)
    first, last = outcomes[0], outcomes[-1]
    assert (first.action, first.ready, first.reason) == ("Wait", False, "RollingOut")
    assert first.retry_at == LATER  # due at once: applying the Plan again takes the next chunk
    assert first.status["rollout"]["total"] == 6  # hooli and team-0..4
    assert first.status["rollout"]["finishedAt"] is None  # clears the last rollout's in a patch
    assert first.status["rollout"]["done"] < 6  # the first chunk read two pro subscribers
    assert [o.status["rollout"]["done"] for o in outcomes] == sorted(
        o.status["rollout"]["done"] for o in outcomes
    )
    assert last.ready
    assert {k: last.status["rollout"][k] for k in ("observedGeneration", "total", "done")} == {
        "observedGeneration": 2,
        "total": 6,
        "done": 6,
    }
    assert "finishedAt" in last.status["rollout"]
    reached = [ref.name for o in outcomes for ref, _ in o.rolled]
    assert sorted(reached) == sorted(["hooli-starter", *(f"team-{i}-starter" for i in range(5))])
    assert all(o.status["plan"]["generation"] == 2 for o in outcomes for _, o in o.rolled)
    # every subscriber got the raise at the edit instant, whichever chunk reached it
    found = values(ledger, LATER + timedelta(minutes=1))
    assert {c: v.balance for (c, f), v in found.items() if f == "ai_requests" and "team" in c} == {
        f"team-{i}": Decimal(300) for i in range(5)
    }


def test_a_rollout_resumed_after_a_crash_writes_what_an_uninterrupted_one_writes(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(apply_module, "ROLLOUT_CHUNK", 2)
    objects = bodies()
    for namespace in ("calm", "crash"):
        converge(ledger, [*_namespaced(objects, namespace), *_starter_team(namespace, 5)])
    _until_rolled_out(ledger, _raise_starter("calm", objects), LATER)

    crash = _raise_starter("crash", objects)
    assert apply(ledger, crash, LATER).reason == "RollingOut"
    before = _shape(ledger, "crash")
    with pytest.raises(_Crash), ledger.write() as connection:
        progress, rolled = continue_rollout(connection, "crash", "starter", LATER)
        assert rolled and progress is not None
        raise _Crash
    assert _shape(ledger, "crash") == before  # the chunk in flight left nothing behind
    outcomes = _until_rolled_out(ledger, crash, LATER + timedelta(hours=2))
    assert outcomes[-1].status["rollout"]["done"] == 6
    assert _shape(ledger, "crash") == _shape(ledger, "calm")
    with ledger.read() as connection:
        assert continue_rollout(connection, "crash", "starter", LATER)[1] == []  # finished
