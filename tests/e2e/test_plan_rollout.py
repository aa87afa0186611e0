"""A Plan edit on a real control plane: the operator rolls it out and every status says so.

Role: example 08 applied with ``kubectl``, the operator running with the manifests' identity;
then ``kubectl patch`` raises a plan's ``issueAfterReset``. What a user checks: the Plan's
``status.rollout`` (generation, subscribers reached, finished), each subscriber's
``status.plan.generation``, a subscriber of another plan left alone, and the ledger's timeline.

Must not: sleep for fixed times (it polls with deadlines) or touch other tests' namespaces.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from allotment.ledger import values
from allotment.ledger.core.model import Entitlement
from allotment.ledger.storage import catalogue
from allotment.ledger.storage.engine import open_ledger
from tests.e2e.test_operator_examples import describe, example_objects, get_all, operator_ledger
from tests.harness.cluster import ControlPlane
from tests.operator.running import (
    allotment,
    install_crds,
    kubectl_ok,
    operator_kubeconfig,
    running_operator,
    wait_until,
)

__all__ = ["operator_ledger"]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "08-plans"
TIMEOUT = 90.0


def ready(obj: dict[str, Any]) -> bool:
    """Ready=True for the object's current generation."""
    status = obj.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    current = status.get("observedGeneration") == obj["metadata"].get("generation")
    return current and conditions.get("Ready", {}).get("status") == "True"


def _get(plane: ControlPlane, kind: str, name: str, namespace: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(
        kubectl_ok(plane, "get", kind, name, "-n", namespace, "-o", "json")
    )
    return found


@pytest.fixture(scope="module")
def applied(
    control_plane: ControlPlane, operator_ledger: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ControlPlane, str, str]]:
    """Example 08 Ready in a namespace of its own, the operator running; (plane, ns, ledger)."""
    folder = tmp_path_factory.mktemp("plan-rollout")
    install_crds(control_plane)
    kubeconfig = operator_kubeconfig(control_plane, folder)
    migrated = allotment("migrate", "--db", operator_ledger)
    assert migrated.returncode == 0, migrated.stderr
    namespace = f"rollout-{secrets.token_hex(3)}"
    kubectl_ok(control_plane, "create", "namespace", namespace)
    objects = example_objects(EXAMPLE)
    with running_operator(operator_ledger, kubeconfig, folder, [namespace]) as operator:
        for obj in objects:
            kubectl_ok(control_plane, "apply", "-n", namespace, "-f", "-", input=json.dumps(obj))

        def all_ready() -> bool:
            found = get_all(control_plane, namespace)
            return len(found) == len(objects) and all(ready(o) for o in found)

        try:
            wait_until(all_ready, timeout=TIMEOUT, what="example 08 to be Ready")
        except AssertionError:
            pytest.fail(
                f"not Ready:\n{describe(get_all(control_plane, namespace))}\n{operator.tail(30)}"
            )
        yield control_plane, namespace, operator_ledger
    control_plane.kubectl("delete", "namespace", namespace, "--wait=false")


def test_a_plan_edit_reaches_every_subscriber_and_each_status_says_so(
    applied: tuple[ControlPlane, str, str],
) -> None:
    plane, namespace, db_url = applied
    before = _get(plane, "subscription", "acme-corp-pro", namespace)["status"]
    assert before["plan"] == {**before["plan"], "key": "pro", "generation": 1}
    raise_ = [{"op": "replace", "path": "/spec/features/0/issueAfterReset", "value": 2000}]
    kubectl_ok(plane, "patch", "plan", "pro", "-n", namespace, "--type", "json",
               "-p", json.dumps(raise_))  # fmt: skip

    def finished() -> dict[str, Any] | None:
        plan = _get(plane, "plan", "pro", namespace)
        rollout = (plan.get("status") or {}).get("rollout") or {}
        done = rollout.get("observedGeneration") == 2 and "finishedAt" in rollout
        return plan if done and ready(plan) else None

    plan = wait_until(finished, timeout=TIMEOUT, what="the Plan's rollout to finish")
    rollout = plan["status"]["rollout"]
    assert (rollout["total"], rollout["done"], rollout["changed"]) == (2, 2, 2)

    def followed() -> dict[str, int] | None:
        generations = {
            name: int(_get(plane, "subscription", name, namespace)["status"]["plan"]["generation"])
            for name in ("acme-corp-pro", "globex-pro", "hooli-starter")
        }
        return (
            generations if generations["acme-corp-pro"] == generations["globex-pro"] == 2 else None
        )

    generations = wait_until(followed, timeout=TIMEOUT, what="the subscribers' status.plan")
    assert generations["hooli-starter"] == 1  # another plan's subscriber is left alone

    ledger = open_ledger(db_url)
    try:
        with ledger.read() as connection:
            [metered] = [
                r
                for r in catalogue.current_records(connection, namespace, kinds=["entitlement"])
                if isinstance(r, Entitlement)
                and r.customer_key == "acme-corp"
                and r.feature_key == "ai_requests"
            ]
    finally:
        ledger.dispose()
    # D4: the raise is a new timeline entry from the next boundary, the current period keeps 1000
    amounts = [v.value.amount if v.value else None for v in metered.issue_after_reset]
    assert amounts == [Decimal(1000), Decimal(2000)]
    assert metered.issue_after_reset[1].since > metered.issue_after_reset[0].since


def _entitlements(db_url: str, namespace: str, customer: str) -> dict[str, Entitlement]:
    """The customer's ledger entitlements active now, by feature key."""
    ledger = open_ledger(db_url)
    try:
        with ledger.read() as connection:
            records = catalogue.current_records(connection, namespace, kinds=["entitlement"])
    finally:
        ledger.dispose()
    now = datetime.now(UTC)
    return {
        r.feature_key: r
        for r in records
        if isinstance(r, Entitlement) and r.customer_key == customer and r.is_active_at(now)
    }


def _balance(db_url: str, namespace: str, entitlement: Entitlement) -> Decimal:
    ledger = open_ledger(db_url)
    try:
        with ledger.read() as connection:
            records = values.load_records(connection, namespace)
            value = values.value_of(connection, records, entitlement, datetime.now(UTC))
    finally:
        ledger.dispose()
    assert value is not None and value.balance is not None
    return value.balance


def _subscriber_follows(plane: ControlPlane, namespace: str, name: str, key: str, gen: int) -> bool:
    status = _get(plane, "subscription", name, namespace).get("status") or {}
    plan = status.get("plan") or {}
    return plan.get("key") == key and int(plan.get("generation", 0)) == gen


def test_an_immediate_plan_edit_funds_the_raise_in_the_current_period(
    applied: tuple[ControlPlane, str, str],
) -> None:
    plane, namespace, db_url = applied
    [hooli] = [_entitlements(db_url, namespace, "hooli")["ai_requests"]]
    assert _balance(db_url, namespace, hooli) == 100
    raise_ = [{"op": "replace", "path": "/spec/features/0/issueAfterReset", "value": 300}]
    kubectl_ok(plane, "patch", "plan", "starter", "-n", namespace, "--type", "json",
               "-p", json.dumps(raise_))  # fmt: skip
    wait_until(
        lambda: _subscriber_follows(plane, namespace, "hooli-starter", "starter", 2),
        timeout=TIMEOUT,
        what="hooli-starter to follow starter generation 2",
    )
    # Immediately: the difference is granted now, in the current period (README decisions)
    assert _balance(db_url, namespace, hooli) == 300


def test_an_upgrade_moves_the_subscriber_to_the_new_plans_features(
    applied: tuple[ControlPlane, str, str],
) -> None:
    plane, namespace, db_url = applied
    before = _entitlements(db_url, namespace, "hooli")
    assert set(before) == {"ai_requests"}
    upgrade = [{"op": "replace", "path": "/spec/planKey", "value": "pro"}]
    kubectl_ok(plane, "patch", "subscription", "hooli-starter", "-n", namespace, "--type",
               "json", "-p", json.dumps(upgrade))  # fmt: skip
    wait_until(
        lambda: (
            set(_entitlements(db_url, namespace, "hooli")) == {"ai_requests", "priority_support"}
            and _subscriber_follows(plane, namespace, "hooli-starter", "pro", 2)
        ),
        timeout=TIMEOUT,
        what="hooli to hold pro's features",
    )
    after = _entitlements(db_url, namespace, "hooli")
    assert after["ai_requests"].id == before["ai_requests"].id  # a kept feature keeps its usage


def test_deleting_a_subscription_with_policy_apply_ends_its_entitlements(
    applied: tuple[ControlPlane, str, str],
) -> None:
    plane, namespace, db_url = applied
    assert set(_entitlements(db_url, namespace, "globex")) == {"ai_requests", "priority_support"}
    kubectl_ok(plane, "delete", "subscription", "globex-pro", "-n", namespace, "--wait=true")
    held = _entitlements(db_url, namespace, "globex")
    # Apply: ended at the deletion instant, never before the current period; the boolean now
    assert "priority_support" not in held
    assert set(_entitlements(db_url, namespace, "acme-corp")) == {"ai_requests", "priority_support"}
