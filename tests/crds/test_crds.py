"""The CRDs explain themselves and follow DESIGN.md's shape (STYLE.md rule 9)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import celpy
import pytest
import yaml

from allotment.cli.admission import cel_violations
from allotment.cli.manifests import load_crds

from .cli import REPO

CRD_FILES = sorted((REPO / "crds").glob("*.yaml"))
KINDS = {
    "meters.yaml": "Meter",
    "features.yaml": "Feature",
    "customers.yaml": "Customer",
    "entitlements.yaml": "Entitlement",
    "grants.yaml": "Grant",
    "entitlementresets.yaml": "EntitlementReset",
    "plans.yaml": "Plan",
    "subscriptions.yaml": "Subscription",
}
FREE_FORM_FIELDS = {"config"}  # a static entitlement's JSON config, wherever it is declared


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


ALL = sorted(path.name for path in CRD_FILES)


def test_one_file_per_kind() -> None:
    assert set(KINDS) <= set(ALL)
    kinds = [_crd(name)["spec"]["names"]["kind"] for name in ALL]
    assert len(kinds) == len(set(kinds))


@pytest.mark.parametrize("name", [pytest.param(name, id=name) for name in ALL])
def test_names_group_scope_and_discovery(name: str) -> None:
    spec = _crd(name)["spec"]
    assert spec["group"] == "allotment.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == KINDS.get(name, spec["names"]["kind"])
    assert "allotment" in spec["names"]["categories"]
    assert spec["names"]["shortNames"]
    [version] = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    ready = [column for column in version["additionalPrinterColumns"] if column["name"] == "Ready"]
    assert ready[0]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'


@pytest.mark.parametrize("name", [pytest.param(name, id=name) for name in ALL])
def test_every_field_has_a_type_and_a_description(name: str) -> None:
    for here, node in _nodes(_schema(name)):
        if here in ((), ("metadata",)):
            continue
        assert node.get("type"), f"{name}: {'.'.join(here)} has no type"
        assert node.get("description"), f"{name}: {'.'.join(here)} has no description"


@pytest.mark.parametrize("name", [pytest.param(name, id=name) for name in ALL])
def test_no_preserve_unknown_fields_outside_free_form_maps(name: str) -> None:
    for here, node in _nodes(_schema(name)):
        if node.get("x-kubernetes-preserve-unknown-fields"):
            assert here[:1] == ("spec",) and here[-1] in FREE_FORM_FIELDS, (
                f"{name}: {'.'.join(here)} preserves unknown fields"
            )


@pytest.mark.parametrize("name", [pytest.param(name, id=name) for name in ALL])
def test_status_follows_kstatus(name: str) -> None:
    status = _schema(name)["properties"]["status"]["properties"]
    assert status["observedGeneration"]["type"] == "integer"
    conditions = status["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert set(item["properties"]) == {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    }
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]


@pytest.mark.parametrize(
    ("name", "has_policy"),
    [
        pytest.param(
            name, name in ("entitlements.yaml", "grants.yaml", "subscriptions.yaml"), id=name
        )
        for name in sorted(KINDS)
    ],
)
def test_deletion_policy_only_where_deletion_can_move_money(name: str, has_policy: bool) -> None:
    properties = _schema(name)["properties"]["spec"]["properties"]
    if has_policy:
        assert properties["deletionPolicy"]["enum"] == ["Orphan", "Apply"]
        assert properties["deletionPolicy"]["default"] == "Orphan"
    else:
        assert "deletionPolicy" not in properties


def test_entitlement_printer_columns_show_customer_feature_balance_usage() -> None:
    columns = _crd("entitlements.yaml")["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [column["name"] for column in columns if not column.get("priority")] == [
        "Customer",
        "Feature",
        "Balance",
        "Usage",
        "Ready",
        "Age",
    ]


@pytest.mark.parametrize("name", [pytest.param(name, id=name) for name in ALL])
def test_every_rule_has_a_message_and_compiles_in_cel_python(name: str) -> None:
    environment = celpy.Environment()
    for here, node in _nodes(_schema(name)):
        for rule in node.get("x-kubernetes-validations", []):
            assert rule["message"].strip(), f"{name}: {'.'.join(here)}: {rule['rule']}"
            environment.compile(rule["rule"])


def test_rules_evaluate_over_every_example_without_errors() -> None:
    catalog = load_crds()
    assert {kind for _, kind in catalog} >= set(KINDS.values())
    for path in sorted((REPO / "examples").rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            crd = catalog[(document["apiVersion"], document["kind"])]
            assert list(cel_violations(document, crd.schema, document)) == [], path
