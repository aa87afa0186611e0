"""The shared YAML scalar table: `validate` reads plain scalars as kubectl does."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from allotment.cli.admission import admit
from allotment.cli.manifests import load_crds, load_yaml

from .cli import CASES

ROWS: list[dict[str, str]] = yaml.safe_load((CASES / "yaml_scalars.yaml").read_text())


@pytest.mark.parametrize("row", [pytest.param(row, id=row["id"]) for row in ROWS])
def test_a_plain_scalar_reads_as_kubectl_reads_it(row: dict[str, str]) -> None:
    got: Any = load_yaml(f"value: {row['yaml']}\n")["value"]
    expected: Any = json.loads(row["json"])
    assert got == expected
    assert type(got) is type(expected)


def test_an_unquoted_timestamp_passes_a_date_time_field() -> None:
    body = load_yaml("activeTo: 2099-12-31T00:00:00Z\nissueAfterReset: 1e6\n")
    assert body == {"activeTo": "2099-12-31T00:00:00Z", "issueAfterReset": 1000000.0}


@pytest.mark.parametrize(
    "row", [pytest.param(row, id=row["id"]) for row in ROWS if row.get("applied") == "absent"]
)
def test_a_null_field_is_dropped_as_kubectl_apply_drops_it(row: dict[str, str]) -> None:
    schema = load_crds()[("allotment.dev/v1alpha1", "Entitlement")].schema
    body = load_yaml(
        "apiVersion: allotment.dev/v1alpha1\nkind: Entitlement\nmetadata: {name: scalar-null}\n"
        "spec:\n  customer: c\n  featureKey: f\n  type: boolean\n"
        f"  activeTo: {row['yaml']}\n"
    )
    violations, stored = admit(body, schema)
    assert violations == []
    assert "activeTo" not in stored["spec"]
