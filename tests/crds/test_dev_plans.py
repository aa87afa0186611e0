"""Plans and Subscriptions: their CRDs' shape, and ``allotment dev`` serving example 08.

The dev cases run a real ``allotment dev`` over a copy of ``examples/`` and ask its sidecar API
over HTTP, as the example's README does.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml

from allotment.cli.admission import cel_violations
from allotment.cli.manifests import load_crds

from .cli import REPO
from .test_dev import Dev, start_dev

CRDS = {"plans.yaml": "Plan", "subscriptions.yaml": "Subscription"}
FREE_FORM = {("spec", "features", "<items>", "config")}


def _crd(name: str) -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load((REPO / "crds" / name).read_text())
    return crd


def _schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = _crd(name)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _nodes(
    schema: dict[str, Any], here: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    yield here, schema
    for name, child in schema.get("properties", {}).items():
        yield from _nodes(child, (*here, name))
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _nodes(schema[key], (*here, f"<{key}>"))


NAMES = [pytest.param(name, id=name) for name in sorted(CRDS)]


@pytest.mark.parametrize("name", NAMES)
def test_names_discovery_and_status_follow_the_other_kinds(name: str) -> None:
    spec = _crd(name)["spec"]
    assert spec["group"] == "allotment.dev" and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == CRDS[name]
    assert "allotment" in spec["names"]["categories"] and spec["names"]["shortNames"]
    [version] = spec["versions"]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    ready = [c for c in version["additionalPrinterColumns"] if c["name"] == "Ready"]
    assert ready[0]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    status = _schema(name)["properties"]["status"]["properties"]
    assert status["observedGeneration"]["type"] == "integer"
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]


@pytest.mark.parametrize("name", NAMES)
def test_every_field_has_a_type_and_a_description(name: str) -> None:
    for here, node in _nodes(_schema(name)):
        if here in ((), ("metadata",)):
            continue
        assert node.get("type"), f"{name}: {'.'.join(here)} has no type"
        assert node.get("description"), f"{name}: {'.'.join(here)} has no description"
        if node.get("x-kubernetes-preserve-unknown-fields"):
            assert here in FREE_FORM, f"{name}: {'.'.join(here)} preserves unknown fields"


@pytest.mark.parametrize("name", NAMES)
def test_every_rule_has_a_message_and_compiles(name: str) -> None:
    environment = celpy.Environment()
    for here, node in _nodes(_schema(name)):
        for rule in node.get("x-kubernetes-validations", []):
            assert rule["message"].strip(), f"{name}: {'.'.join(here)}: {rule['rule']}"
            environment.compile(rule["rule"])


@pytest.mark.parametrize(
    ("name", "has_policy"),
    [
        pytest.param("plans.yaml", False, id="plan"),
        pytest.param("subscriptions.yaml", True, id="sub"),
    ],
)
def test_deletion_policy_only_on_subscriptions(name: str, has_policy: bool) -> None:
    properties = _schema(name)["properties"]["spec"]["properties"]
    assert ("deletionPolicy" in properties) is has_policy
    if has_policy:
        assert properties["deletionPolicy"]["enum"] == ["Orphan", "Apply"]
        assert properties["deletionPolicy"]["default"] == "Orphan"


@pytest.mark.parametrize("name", NAMES)
def test_the_manifests_carry_an_identical_copy(name: str) -> None:
    assert (REPO / "manifests" / "crds" / name).read_bytes() == (REPO / "crds" / name).read_bytes()
    listed = yaml.safe_load((REPO / "manifests" / "crds" / "kustomization.yaml").read_text())
    assert name in listed["resources"]


def _subscription(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "allotment.dev/v1alpha1",
        "kind": "Subscription",
        "metadata": {"name": "s"},
        "spec": {"planKey": "pro", **spec},
    }


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        pytest.param(None, _subscription(), "set exactly one of customer or subject", id="none"),
        pytest.param(
            _subscription(customer="a"),
            _subscription(customer="b"),
            "customer is immutable",
            id="customer-immutable",
        ),
        pytest.param(
            _subscription(customer="a"),
            _subscription(customer="a", activeFrom="2026-01-01T00:00:00Z"),
            "activeFrom can only be set at creation",
            id="active-from-at-creation",
        ),
        pytest.param(
            None,
            {
                "apiVersion": "allotment.dev/v1alpha1",
                "kind": "Plan",
                "metadata": {"name": "p"},
                "spec": {"features": [{"featureKey": "f", "type": "metered"}]},
            },
            "usagePeriod is required for metered features",
            id="plan-metered-period",
        ),
    ],
)
def test_cel_refuses_with_a_message_naming_the_fix(
    old: dict[str, Any] | None, new: dict[str, Any], message: str
) -> None:
    crd = load_crds()[(new["apiVersion"], new["kind"])]
    found = [v.message for v in cel_violations(new, crd.schema, old)]
    assert any(message in text for text in found), found


# --- allotment dev over example 08 -----------------------------------------------------------


@pytest.fixture
def examples_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "examples"
    shutil.copytree(REPO / "examples", copy)
    return copy


@pytest.fixture
def dev(examples_copy: Path) -> Iterator[Dev]:
    yield from start_dev(examples_copy)


def _access(dev: Dev, customer: str) -> dict[str, Any]:
    body = dev.get(f"/api/v1/customers/{customer}/access")
    entitlements: dict[str, Any] = body["entitlements"]  # type: ignore[assignment]
    return entitlements


def test_dev_serves_each_subscriber_its_plan(dev: Dev) -> None:
    assert not [line for line in dev.lines if line.startswith(("Waiting ", "Refused "))]
    acme = _access(dev, "acme-corp")
    assert acme["ai_requests"]["balance"] == 1000 and acme["priority_support"]["hasAccess"]
    assert _access(dev, "globex")["ai_requests"]["balance"] == 1500  # with the top-up
    hooli = _access(dev, "hooli")
    assert hooli["ai_requests"]["balance"] == 100 and "priority_support" not in hooli


def test_an_immediate_plan_edit_reaches_the_subscriber_without_touching_it(
    dev: Dev, examples_copy: Path
) -> None:
    plans = examples_copy / "08-plans" / "plans.yaml"
    plans.write_text(plans.read_text().replace("issueAfterReset: 100", "issueAfterReset: 300"))
    line = dev.wait_for_line("Amended Plan default/starter")
    assert "rolled out to 1 of 1 subscriptions" in line
    _wait(lambda: _access(dev, "hooli")["ai_requests"]["balance"] == 300)


def test_removing_a_subscription_with_policy_apply_ends_its_access(
    dev: Dev, examples_copy: Path
) -> None:
    subscriptions = examples_copy / "08-plans" / "subscriptions.yaml"
    documents = [d for d in yaml.safe_load_all(subscriptions.read_text()) if d]
    kept = [d for d in documents if d["metadata"]["name"] != "globex-pro"]
    subscriptions.write_text(yaml.safe_dump_all(kept))
    dev.wait_for_line("Orphaned Subscription default/globex-pro")
    _wait(lambda: not _access(dev, "globex").get("priority_support", {}).get("hasAccess"))
    assert _access(dev, "acme-corp")["priority_support"]["hasAccess"]


def _wait(condition: Any, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("the sidecar's answer did not change in time")
