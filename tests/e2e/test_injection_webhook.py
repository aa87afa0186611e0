"""Admission on a real apiserver: sidecar injection into labelled Pods, and warnings only.

Role: run ``allotment operator`` with its Kopf webhook server on 127.0.0.1 (a certificate from
the harness CA), register ``clientConfig.url`` webhook configurations scoped to this test's
namespace (the operator never writes admission registration), and check what a user sees: a
labelled Pod comes back with the native sidecar, an unlabelled one unchanged, one that cannot
take it is created anyway with a warning, and an Entitlement naming a missing Feature is created
with a warning, never refused.

Must not: leave webhook configurations behind, or rely on controllers (Pods are only stored).
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.harness.cluster import ControlPlane
from tests.operator.running import (
    OperatorProcess,
    allotment,
    free_port,
    install_crds,
    kubectl_ok,
    operator_kubeconfig,
    running_operator,
    wait_until,
)


@dataclass(frozen=True)
class Admission:
    plane: ControlPlane
    namespace: str
    operator: OperatorProcess


def _configurations(namespace: str, port: int, ca_bundle: str) -> list[dict[str, Any]]:
    scope = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    common = {"sideEffects": "None", "admissionReviewVersions": ["v1"], "failurePolicy": "Ignore",
              "namespaceSelector": scope, "timeoutSeconds": 5}  # fmt: skip
    url = f"https://127.0.0.1:{port}"
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": f"inject-{namespace}"},
            "webhooks": [
                {
                    "name": "sidecar.inject.allotment.dev",
                    "clientConfig": {"url": f"{url}/inject-sidecar", "caBundle": ca_bundle},
                    "rules": [{"apiGroups": [""], "apiVersions": ["v1"],
                               "operations": ["CREATE"], "resources": ["pods"]}],
                    "objectSelector": {"matchLabels": {"allotment.dev/inject": "true"}},
                    **common,
                }
            ],
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": f"warn-{namespace}"},
            "webhooks": [
                {
                    "name": "entitlements.warnings.allotment.dev",
                    "clientConfig": {"url": f"{url}/warn-entitlements", "caBundle": ca_bundle},
                    "rules": [{"apiGroups": ["allotment.dev"], "apiVersions": ["v1alpha1"],
                               "operations": ["CREATE", "UPDATE"],
                               "resources": ["entitlements"]}],
                    **common,
                }
            ],
        },
    ]  # fmt: skip


@pytest.fixture(scope="module")
def admission(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Admission]:
    folder = tmp_path_factory.mktemp("admission-e2e")
    install_crds(control_plane)
    kubeconfig = operator_kubeconfig(control_plane, folder)
    db_url = f"sqlite:///{folder / 'ledger.db'}"
    assert allotment("migrate", "--db", db_url).returncode == 0
    namespace = f"inject-{secrets.token_hex(3)}"
    kubectl_ok(control_plane, "create", "namespace", namespace)
    serving = control_plane.issue_serving_cert("allotment-webhook")
    port = free_port()
    extra = ["--webhook-listen", f"127.0.0.1:{port}", "--webhook-cert", str(serving.cert),
             "--webhook-key", str(serving.key), "--sidecar-image", "registry.test/allotment:e2e"]  # fmt: skip
    ca_bundle = base64.b64encode(control_plane.ca_cert.read_bytes()).decode()
    configurations = _configurations(namespace, port, ca_bundle)
    with running_operator(db_url, kubeconfig, folder, [namespace], extra) as operator:
        for configuration in configurations:
            kubectl_ok(control_plane, "apply", "-f", "-", input=json.dumps(configuration))
        try:
            ready = Admission(control_plane, namespace, operator)
            _wait_for_injection(ready)
            yield ready
        finally:
            for configuration in configurations:
                control_plane.kubectl(
                    "delete", configuration["kind"].lower(), configuration["metadata"]["name"]
                )
    control_plane.kubectl("delete", "namespace", namespace, "--wait=false")


def _pod(name: str, labels: dict[str, str], ports: list[int] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "app", "image": "registry.test/shop:1"}
    if ports:
        container["ports"] = [{"containerPort": p} for p in ports]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [container]}}  # fmt: skip


def _create(admission: Admission, obj: dict[str, Any]) -> tuple[dict[str, Any], str]:
    done = admission.plane.kubectl(
        "create", "-n", admission.namespace, "-o", "json", "-f", "-", input=json.dumps(obj)
    )
    assert done.returncode == 0, done.stderr
    created: dict[str, Any] = json.loads(done.stdout)
    return created, done.stderr


def _init_names(pod: dict[str, Any]) -> list[str]:
    return [c["name"] for c in pod["spec"].get("initContainers") or []]


def _wait_for_injection(admission: Admission) -> None:
    """Wait until the apiserver calls the webhook (it loads configurations asynchronously)."""
    attempts = iter(range(10_000))

    def injected() -> bool:
        name = f"probe-{next(attempts)}"
        pod, _ = _create(admission, _pod(name, {"allotment.dev/inject": "true"}))
        admission.plane.kubectl("delete", "pod", name, "-n", admission.namespace, "--wait=false")
        return "allotment-sidecar" in _init_names(pod)

    wait_until(injected, timeout=30, what="the injection webhook to be called")


def test_a_labelled_pod_comes_back_with_the_native_sidecar(admission: Admission) -> None:
    pod, warnings = _create(admission, _pod("app", {"allotment.dev/inject": "true"}))
    assert "allotment" not in warnings
    (sidecar,) = [c for c in pod["spec"]["initContainers"] if c["name"] == "allotment-sidecar"]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == "registry.test/allotment:e2e"
    assert sidecar["command"] == ["allotment", "sidecar"]
    assert sidecar["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert sidecar["startupProbe"]["httpGet"]["port"] == 8889
    env = {e["name"]: e.get("valueFrom") for e in sidecar["env"]}
    assert env["ALLOTMENT_NAMESPACE"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["ALLOTMENT_DATABASE_URL"]["secretKeyRef"]["name"] == "allotment-sidecar-ledger"
    assert [c["name"] for c in pod["spec"]["containers"]] == ["app"]


def test_pods_without_the_label_are_never_touched(admission: Admission) -> None:
    pod, warnings = _create(admission, _pod("plain", {"app": "shop"}))
    assert _init_names(pod) == []
    assert "allotment" not in warnings


def test_a_pod_that_cannot_take_the_sidecar_is_created_with_a_warning(
    admission: Admission,
) -> None:
    pod, warnings = _create(
        admission, _pod("clash", {"allotment.dev/inject": "true"}, ports=[8888])
    )
    assert _init_names(pod) == []
    assert "no sidecar injected: the Pod already uses port 8888" in warnings


def test_a_missing_feature_is_a_warning_not_a_refusal(admission: Admission) -> None:
    entitlement = {
        "apiVersion": "allotment.dev/v1alpha1",
        "kind": "Entitlement",
        "metadata": {"name": "early"},
        "spec": {"customer": "customer-1", "featureKey": "not_yet", "type": "boolean"},
    }

    def warned() -> str | None:
        done = admission.plane.kubectl(
            "apply", "-n", admission.namespace, "-f", "-", input=json.dumps(entitlement)
        )
        assert done.returncode == 0, done.stderr
        return done.stderr if "no Feature with key 'not_yet'" in done.stderr else None

    warnings = wait_until(warned, timeout=30, what="an admission warning")
    assert "it will wait (Ready=False) until one is applied" in warnings
