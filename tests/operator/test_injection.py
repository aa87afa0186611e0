"""The sidecar injection: a table of Pods and what a user finds in them after admission."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import pytest

from allotment.operator.injection import CONTAINER_NAME, inject_sidecar, skip_reason
from allotment.operator.settings import SidecarSettings

SETTINGS = SidecarSettings(image="registry.example/allotment:1.2.3")


def pod(
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    init: list[dict[str, Any]] | None = None,
    ports: list[int] | None = None,
    host_network: bool = False,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "app", "namespace": "shop"}
    metadata["labels"] = {"allotment.dev/inject": "true"} if labels is None else labels
    if annotations is not None:
        metadata["annotations"] = annotations
    app: dict[str, Any] = {"name": "app", "image": "shop:1"}
    if ports:
        app["ports"] = [{"containerPort": p} for p in ports]
    spec: dict[str, Any] = {"containers": [app]}
    if init is not None:
        spec["initContainers"] = init
    if host_network:
        spec["hostNetwork"] = True
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def admitted(original: dict[str, Any]) -> dict[str, Any]:
    ops = inject_sidecar(original, SETTINGS)
    result: dict[str, Any] = jsonpatch.apply_patch(copy.deepcopy(original), ops)
    return result


def sidecar_of(result: dict[str, Any]) -> dict[str, Any]:
    (found,) = [c for c in result["spec"]["initContainers"] if c["name"] == CONTAINER_NAME]
    return found


@pytest.mark.parametrize(
    "original",
    [
        pytest.param(pod(), id="no-init-containers"),
        pytest.param(pod(init=[{"name": "setup", "image": "busybox"}]), id="with-init-containers"),
        pytest.param(pod(annotations={"team": "shop"}), id="with-annotations"),
    ],
)
def test_a_labelled_pod_gets_a_native_sidecar_first(original: dict[str, Any]) -> None:
    result = admitted(original)
    sidecar = result["spec"]["initContainers"][0]
    assert sidecar["name"] == CONTAINER_NAME
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["command"] == ["allotment", "sidecar"]
    assert sidecar["args"] == ["--listen", "127.0.0.1:8888"]
    assert sidecar["image"] == "registry.example/allotment:1.2.3"
    assert sidecar["startupProbe"]["httpGet"] == {"path": "/readyz", "port": 8889, "scheme": "HTTP"}
    env = {e["name"]: e["valueFrom"] for e in sidecar["env"]}
    assert env["ALLOTMENT_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["ALLOTMENT_DATABASE_URL"] == {
        "secretKeyRef": {"name": "allotment-sidecar-ledger", "key": "url"}
    }
    assert sidecar["securityContext"]["runAsNonRoot"] is True
    assert result["spec"]["containers"] == original["spec"]["containers"]
    assert result["spec"]["initContainers"][1:] == original["spec"].get("initContainers", [])
    assert result["metadata"]["annotations"]["allotment.dev/sidecar-injected"] == SETTINGS.image
    for key, value in (original["metadata"].get("annotations") or {}).items():
        assert result["metadata"]["annotations"][key] == value


def test_annotations_tune_image_and_resources() -> None:
    tuned = pod(
        annotations={
            "allotment.dev/sidecar-image": "mirror.local/allotment:1.2.3",
            "allotment.dev/sidecar-cpu": "200m",
            "allotment.dev/sidecar-memory": "512Mi",
        }
    )
    sidecar = sidecar_of(admitted(tuned))
    assert sidecar["image"] == "mirror.local/allotment:1.2.3"
    assert sidecar["resources"]["requests"] == {"cpu": "200m", "memory": "512Mi"}
    assert sidecar["resources"]["limits"] == {"memory": "512Mi"}


def test_default_resources_have_a_memory_limit() -> None:
    sidecar = sidecar_of(admitted(pod()))
    assert sidecar["resources"] == {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"memory": "256Mi"},
    }


@pytest.mark.parametrize(
    ("original", "reason"),
    [
        pytest.param(pod(labels={}), "not labelled", id="unlabelled"),
        pytest.param(pod(labels={"allotment.dev/inject": "false"}), "not labelled", id="false"),
        pytest.param(
            pod(init=[{"name": CONTAINER_NAME, "image": "x", "restartPolicy": "Always"}]),
            "already has a container",
            id="already-injected",
        ),
        pytest.param(pod(host_network=True), "host network", id="host-network"),
        pytest.param(pod(ports=[8888]), "port 8888", id="listen-port-taken"),
        pytest.param(pod(ports=[8889]), "port 8889", id="probe-port-taken"),
    ],
)
def test_pods_left_alone_say_why(original: dict[str, Any], reason: str) -> None:
    found = skip_reason(original, SETTINGS)
    assert found is not None and reason in found
    assert inject_sidecar(original, SETTINGS) == []


def test_injecting_twice_adds_one_sidecar() -> None:
    once = admitted(pod())
    assert inject_sidecar(once, SETTINGS) == []
