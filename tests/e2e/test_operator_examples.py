"""The operator on a real control plane: every example converges, in any apply order.

Role: run ``allotment operator`` as a subprocess with the manifests' ServiceAccount (so RBAC is
exercised for real) against a migrated ledger, apply each example's objects one at a time in
``metadata.name`` order (references usually come *after* what needs them), and check what a user
checks: every object Ready with ``observedGeneration`` current and no retry by the user, Events
saying what was recorded, and the ledger holding one identity per object with the id shown in
status. Also: the operator refuses an unmigrated ledger, and deletion follows deletionPolicy.

Must not: sleep for fixed times (it polls with deadlines) or touch other tests' namespaces.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
import yaml

from tests.harness.cluster import ControlPlane
from tests.harness.postgres import server_url
from tests.operator.running import (
    PLURALS,
    OperatorProcess,
    allotment,
    install_crds,
    kubectl_ok,
    operator_kubeconfig,
    ready,
    running_operator,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (ROOT / "examples").iterdir() if p.is_dir())
READY_TIMEOUT = 60.0


def example_objects(folder: Path) -> list[dict[str, Any]]:
    """The example's objects (top-level files only, as `kubectl apply -f DIR`), by name."""
    docs: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return sorted(docs, key=lambda d: (d["metadata"]["name"], d["kind"]))


@dataclass(frozen=True)
class Setup:
    plane: ControlPlane
    operator: OperatorProcess
    db_url: str
    namespaces: dict[str, str]  # example folder name -> namespace


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ],
)
def operator_ledger(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A fresh ledger: a SQLite file, or a new database on the session's PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('ledger') / 'ledger.db'}"
        return
    base: str = request.getfixturevalue("postgres_url")
    name = f"allotment_operator_e2e_{secrets.token_hex(4)}"
    admin = f"postgresql://{base.split('://', 1)[1]}"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    yield server_url(base, name)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def setup(
    control_plane: ControlPlane, operator_ledger: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    folder = tmp_path_factory.mktemp("operator-e2e")
    install_crds(control_plane)
    kubeconfig = operator_kubeconfig(control_plane, folder)
    db_url = operator_ledger
    migrated = allotment("migrate", "--db", db_url)
    assert migrated.returncode == 0, migrated.stderr
    suffix = secrets.token_hex(3)
    namespaces = {ex.name: f"ex{ex.name[:2]}-{suffix}" for ex in EXAMPLES}
    namespaces["deletion"] = f"deletion-{suffix}"
    for namespace in namespaces.values():
        kubectl_ok(control_plane, "create", "namespace", namespace)
    with running_operator(db_url, kubeconfig, folder, list(namespaces.values())) as operator:
        print(json.dumps({"operator_start_seconds": round(operator.started_in, 3)}))
        yield Setup(control_plane, operator, db_url, namespaces)
    for namespace in namespaces.values():
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false")


def get_all(plane: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    out = kubectl_ok(plane, "get", ",".join(PLURALS.values()), "-n", namespace, "-o", "json")
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def describe(objs: list[dict[str, Any]]) -> str:
    lines = []
    for obj in objs:
        conditions = {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}
        ready_condition = conditions.get("Ready", {})
        lines.append(
            f"{obj['kind']} {obj['metadata']['name']}: Ready={ready_condition.get('status')} "
            f"{ready_condition.get('reason')}: {ready_condition.get('message')}"
        )
    return "\n".join(lines)


def ledger_identities(db_url: str, namespace: str) -> dict[tuple[str, str], str]:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text("SELECT kind, name, id FROM resources WHERE namespace = :ns"),
                {"ns": namespace},
            ).all()
    finally:
        engine.dispose()
    return {(row.kind, row.name): row.id for row in rows}


def apply_until_ready(setup: Setup, example: Path) -> list[dict[str, Any]]:
    """Apply the example one object at a time in name order; return them once all are Ready."""
    namespace = setup.namespaces[example.name]
    objects = example_objects(example)
    assert objects, f"{example} holds no objects"
    for obj in objects:
        applied = setup.plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))
        assert applied.returncode == 0, applied.stderr

    def all_ready() -> list[dict[str, Any]] | None:
        found = get_all(setup.plane, namespace)
        return found if len(found) == len(objects) and all(ready(o) for o in found) else None

    try:
        found = wait_until(all_ready, timeout=READY_TIMEOUT, what=f"{example.name} to be Ready")
    except AssertionError:
        pytest.fail(
            f"not Ready:\n{describe(get_all(setup.plane, namespace))}\n"
            f"operator log:\n{setup.operator.tail(30)}"
        )
    return found


@pytest.mark.parametrize("example", [pytest.param(ex, id=ex.name) for ex in EXAMPLES])
def test_an_example_applied_in_name_order_becomes_ready(setup: Setup, example: Path) -> None:
    namespace = setup.namespaces[example.name]
    objects = example_objects(example)
    found = apply_until_ready(setup, example)

    identities = ledger_identities(setup.db_url, namespace)
    for obj in found:
        key = (obj["kind"], obj["metadata"]["name"])
        assert key in identities, f"no ledger identity for {key}"
        if obj["kind"] != "Customer":  # a Customer may re-use an implied customer's id
            assert obj["status"]["id"] == identities[key]
        for kind in ("Ready", "Reconciling", "Stalled"):
            assert kind in {c["type"] for c in obj["status"]["conditions"]}
    events = kubectl_ok(setup.plane, "get", "events", "-n", namespace, "-o", "json")
    messages = {e["message"].split(":")[0] for e in json.loads(events)["items"]}
    for obj in objects:
        assert any(
            m.startswith("Recorded ") and m.endswith(f"{namespace}/{obj['metadata']['name']}")
            for m in messages
        ), f"no Recorded event for {obj['kind']} {obj['metadata']['name']}"


def test_the_walkthrough_entitlement_shows_its_value(setup: Setup) -> None:
    """`kubectl get entitlements` shows BALANCE 1000000 and USAGE 0 (examples/01 README), and
    the usage period the value is in."""
    apply_until_ready(setup, EXAMPLES[0])
    namespace = setup.namespaces[EXAMPLES[0].name]

    def value() -> dict[str, Any] | None:
        obj = json.loads(
            kubectl_ok(setup.plane, "get", "entitlement", "customer-1-gpt-4-tokens",
                       "-n", namespace, "-o", "json")
        )  # fmt: skip
        found: dict[str, Any] | None = (obj.get("status") or {}).get("value")
        return found

    shown = wait_until(value, timeout=30, what="status.value to be written")
    assert shown["hasAccess"] is True
    assert (shown["balance"], shown["usage"], shown["overage"]) == (1000000, 0, 0)
    status = json.loads(
        kubectl_ok(setup.plane, "get", "entitlement", "customer-1-gpt-4-tokens",
                   "-n", namespace, "-o", "json")
    )["status"]  # fmt: skip
    period = status["currentUsagePeriod"]  # written with the value, by the same loop
    assert period["from"] == status["measureUsageFrom"]  # the first monthly period
    start, end, as_of = (datetime.fromisoformat(t) for t in (period["from"], period["to"],
                                                              shown["asOf"]))  # fmt: skip
    assert start <= as_of < end
    table = kubectl_ok(setup.plane, "get", "entitlements", "-n", namespace)
    assert "1000000" in table.splitlines()[1]


def test_deleting_a_grant_with_policy_apply_voids_it_and_lets_it_go(setup: Setup) -> None:
    namespace = setup.namespaces["deletion"]
    objects = [
        {"kind": "Meter", "metadata": {"name": "seat-events"},
         "spec": {"eventType": "seat", "aggregation": "COUNT"}},
        {"kind": "Feature", "metadata": {"name": "seats"}, "spec": {"meterSlug": "seat_events"}},
        {"kind": "Entitlement", "metadata": {"name": "acme-seats"},
         "spec": {"subject": "acme", "featureKey": "seats", "type": "metered",
                  "usagePeriod": {"interval": "MONTH"}}},
        {"kind": "Grant", "metadata": {"name": "acme-seats-pack"},
         "spec": {"entitlement": "acme-seats", "amount": 10, "deletionPolicy": "Apply"}},
        {"kind": "Grant", "metadata": {"name": "acme-seats-kept"},
         "spec": {"entitlement": "acme-seats", "amount": 5}},
    ]  # fmt: skip
    for obj in objects:
        obj["apiVersion"] = "allotment.dev/v1alpha1"
        applied = setup.plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))
        assert applied.returncode == 0, applied.stderr

    def all_ready() -> bool:
        found = get_all(setup.plane, namespace)
        return len(found) == len(objects) and all(ready(o) for o in found)

    try:
        wait_until(all_ready, timeout=READY_TIMEOUT, what="the deletion fixtures to be Ready")
    except AssertionError:
        pytest.fail(f"not Ready:\n{describe(get_all(setup.plane, namespace))}")
    pack = json.loads(kubectl_ok(setup.plane, "get", "grant", "acme-seats-pack", "-n", namespace,
                                 "-o", "json"))  # fmt: skip
    kept = json.loads(kubectl_ok(setup.plane, "get", "grant", "acme-seats-kept", "-n", namespace,
                                 "-o", "json"))  # fmt: skip
    assert pack["metadata"].get("finalizers") == ["allotment.dev/finalizer"]
    assert not kept["metadata"].get("finalizers")

    for name in ("acme-seats-pack", "acme-seats-kept"):
        deleted = setup.plane.kubectl("delete", "grant", name, "-n", namespace, "--timeout=60s")
        assert deleted.returncode == 0, deleted.stderr

    def voided_event() -> bool:
        events = json.loads(kubectl_ok(setup.plane, "get", "events", "-n", namespace, "-o", "json"))
        return any(
            e["reason"] == "Voided" and "acme-seats-pack" in e["message"] for e in events["items"]
        )

    wait_until(voided_event, timeout=30, what="a Voided event for the Apply grant")
    identities = ledger_identities(setup.db_url, namespace)
    assert ("Grant", "acme-seats-pack") in identities  # voided, never erased
    assert ("Grant", "acme-seats-kept") in identities  # orphaned: the ledger keeps it


def test_the_operator_refuses_an_unmigrated_ledger(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    refused = allotment(
        "operator", "--db", f"sqlite:///{tmp_path / 'empty.db'}", "--namespace", "nowhere",
        env={**control_plane.env()},
    )  # fmt: skip
    assert refused.returncode == 1
    assert "run `allotment migrate --db URL`" in refused.stderr
