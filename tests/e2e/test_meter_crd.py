"""The Meter CRD against a real kube-apiserver through the real kubectl.

Role: install ``crds/meters.yaml``, wait for it to be Established, create a valid Meter and read
it back unchanged, and see the apiserver refuse invalid ones with the schema's own message.

Must not: rely on controllers (there are none) or on the operator (not running in this test).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.cluster import ControlPlane

CRD_NAME = "meters.allotment.dev"
API_VERSION = "allotment.dev/v1alpha1"


def _crd_path(repo_root: Path) -> Path:
    return repo_root / "crds" / "meters.yaml"


@pytest.fixture(scope="module")
def meter_crd(control_plane: ControlPlane, repo_root: Path) -> Iterator[None]:
    path = _crd_path(repo_root)
    if not path.is_file():
        pytest.fail(f"{path} is missing: the Meter CRD is part of the product")
    applied = control_plane.kubectl("apply", "--server-side", "-f", str(path))
    assert applied.returncode == 0, applied.stderr
    established = control_plane.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}"
    )
    assert established.returncode == 0, established.stderr
    yield
    control_plane.kubectl("delete", "-f", str(path), "--wait=false")


def _meter(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Meter",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


VALID_SPEC: dict[str, Any] = {
    "slug": "gpt_4_tokens",
    "eventType": "prompt",
    "aggregation": "SUM",
    "valueProperty": "$.tokens",
    "groupBy": {"model": "$.model", "type": "$.type"},
}


def test_crd_is_established_and_served(control_plane: ControlPlane, meter_crd: None) -> None:
    resources = control_plane.kubectl("api-resources", "--api-group=allotment.dev", "-o", "name")
    assert resources.returncode == 0, resources.stderr
    assert "meters.allotment.dev" in resources.stdout.split()


def test_valid_meter_round_trips(
    control_plane: ControlPlane, meter_crd: None, namespace: str
) -> None:
    manifest = _meter("gpt-4-tokens", namespace, **VALID_SPEC)
    created = control_plane.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    assert created.returncode == 0, created.stderr

    got = control_plane.kubectl("get", "meter", "gpt-4-tokens", "-n", namespace, "-o", "json")
    assert got.returncode == 0, got.stderr
    stored = json.loads(got.stdout)
    assert stored["apiVersion"] == API_VERSION
    assert stored["kind"] == "Meter"
    # Defaults the schema may add are allowed; every field we wrote must come back as written.
    assert {k: stored["spec"].get(k) for k in VALID_SPEC} == VALID_SPEC


COUNT_WITH_VALUE = {k: v for k, v in VALID_SPEC.items() if k != "aggregation"} | {
    "aggregation": "COUNT"
}
SUM_WITHOUT_VALUE = {k: v for k, v in VALID_SPEC.items() if k != "valueProperty"}

INVALID_CASES = [
    pytest.param(
        VALID_SPEC | {"aggregation": "AVERAGE"},
        [
            'spec.aggregation: Unsupported value: "AVERAGE": supported values: '
            '"SUM", "COUNT", "UNIQUE_COUNT", "LATEST"'
        ],
        id="aggregation-not-in-enum",
    ),
    pytest.param(
        VALID_SPEC | {"slug": "Bad-Slug!"},
        [
            'spec.slug: Invalid value: "Bad-Slug!": '
            "spec.slug in body should match '^[a-z0-9]+(?:_[a-z0-9]+)*$'"
        ],
        id="slug-not-a-key",
    ),
    pytest.param(
        VALID_SPEC | {"valueProperty": "tokens"},
        ["spec.valueProperty in body should match '^\\$'"],
        id="value-property-not-a-jsonpath",
    ),
    pytest.param(
        COUNT_WITH_VALUE,
        ["valueProperty is not allowed when aggregation is COUNT"],
        id="count-with-value-property",
    ),
    pytest.param(
        SUM_WITHOUT_VALUE,
        ["valueProperty is required unless aggregation is COUNT"],
        id="sum-without-value-property",
    ),
]


@pytest.mark.parametrize(("spec", "messages"), INVALID_CASES)
def test_apiserver_refuses_invalid_meter(
    control_plane: ControlPlane,
    meter_crd: None,
    namespace: str,
    spec: dict[str, Any],
    messages: list[str],
) -> None:
    manifest = _meter("refused", namespace, **spec)
    result = control_plane.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    assert result.returncode != 0, f"apiserver accepted {spec}: {result.stdout}"
    assert 'The Meter "refused" is invalid' in result.stderr
    for message in messages:
        assert message in result.stderr
    missing = control_plane.kubectl(
        "get", "meter", "refused", "-n", namespace, "--ignore-not-found"
    )
    assert missing.returncode == 0, missing.stderr
    assert missing.stdout.strip() == ""


IMMUTABLE_EDITS = [
    pytest.param(
        {"aggregation": "LATEST"},
        "aggregation is immutable: create a new Meter with the new aggregation",
        id="aggregation",
    ),
    pytest.param(
        {"eventType": "completion"},
        "eventType is immutable: create a new Meter for the new event type",
        id="event-type",
    ),
    pytest.param(
        {"groupBy": {"model": "$.other", "type": "$.type"}},
        "existing groupBy keys are immutable",
        id="existing-group-by-key",
    ),
]


@pytest.mark.parametrize(("change", "message"), IMMUTABLE_EDITS)
def test_apiserver_refuses_editing_an_immutable_field(
    control_plane: ControlPlane,
    meter_crd: None,
    namespace: str,
    change: dict[str, Any],
    message: str,
) -> None:
    created = control_plane.kubectl(
        "apply", "-f", "-", input=json.dumps(_meter("tokens", namespace, **VALID_SPEC))
    )
    assert created.returncode == 0, created.stderr
    edited = control_plane.kubectl(
        "apply", "-f", "-", input=json.dumps(_meter("tokens", namespace, **(VALID_SPEC | change)))
    )
    assert edited.returncode != 0, f"apiserver accepted the edit {change}"
    assert message in edited.stderr
    got = control_plane.kubectl("get", "meter", "tokens", "-n", namespace, "-o", "json")
    assert got.returncode == 0, got.stderr
    assert {k: json.loads(got.stdout)["spec"].get(k) for k in VALID_SPEC} == VALID_SPEC


def test_adding_a_group_by_key_is_allowed(
    control_plane: ControlPlane, meter_crd: None, namespace: str
) -> None:
    created = control_plane.kubectl(
        "apply", "-f", "-", input=json.dumps(_meter("tokens", namespace, **VALID_SPEC))
    )
    assert created.returncode == 0, created.stderr
    wider = VALID_SPEC | {"groupBy": VALID_SPEC["groupBy"] | {"region": "$.region"}}
    edited = control_plane.kubectl(
        "apply", "-f", "-", input=json.dumps(_meter("tokens", namespace, **wider))
    )
    assert edited.returncode == 0, edited.stderr
    got = control_plane.kubectl("get", "meter", "tokens", "-n", namespace, "-o", "json")
    assert json.loads(got.stdout)["spec"]["groupBy"] == wider["groupBy"]
