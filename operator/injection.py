"""Sidecar injection: a native sidecar added to Pods labelled ``allotment.dev/inject: "true"``.

Role: ``inject_sidecar`` is a pure function from a Pod to the JSON patch (RFC 6902) adding the
sidecar as an init container with ``restartPolicy: Always`` (a Kubernetes native sidecar: started
before the app, probed on ``/readyz`` at the probe port, stopped after it). ``skip_reason`` says
why a labelled Pod is left alone; the webhook turns that into an admission warning, a log line and
a metric, never a refusal (DESIGN D6: ``failurePolicy: Ignore``). The label selects; annotations
only tune (image, CPU, memory).

The ledger URL comes from the Secret ``allotment-sidecar-ledger`` (key ``url``) in the Pod's own
namespace, holding that namespace's least-privileged ledger role (D12); the platform team creates
it (see ``manifests/README.md``). The operator never reads it.

Must not: change the app's containers, refuse a Pod, or read the ledger.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from allotment.operator.settings import SidecarSettings

CONTAINER_NAME = "allotment-sidecar"
INJECT_LABEL = "allotment.dev/inject"
INJECTED_ANNOTATION = "allotment.dev/sidecar-injected"
IMAGE_ANNOTATION = "allotment.dev/sidecar-image"
CPU_ANNOTATION = "allotment.dev/sidecar-cpu"
MEMORY_ANNOTATION = "allotment.dev/sidecar-memory"

JsonPatch = list[dict[str, Any]]


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _ports_in_use(spec: Mapping[str, Any]) -> set[int]:
    used: set[int] = set()
    for group in ("containers", "initContainers"):
        for container in spec.get(group) or ():
            for port in container.get("ports") or ():
                if isinstance(port.get("containerPort"), int):
                    used.add(port["containerPort"])
    return used


def skip_reason(pod: Mapping[str, Any], settings: SidecarSettings) -> str | None:
    """Return why ``pod`` gets no sidecar, or None when it should get one."""
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    if (metadata.get("labels") or {}).get(INJECT_LABEL) != "true":
        return f'the Pod is not labelled {INJECT_LABEL}: "true"'
    names = {c.get("name") for g in ("containers", "initContainers") for c in spec.get(g) or ()}
    if CONTAINER_NAME in names:
        return f"the Pod already has a container named {CONTAINER_NAME}"
    if spec.get("hostNetwork"):
        return "the Pod uses the host network, where 127.0.0.1:8888 would be shared by every Pod"
    clash = _ports_in_use(spec) & {settings.listen_port, settings.probe_port}
    if clash:
        return f"the Pod already uses port {min(clash)}, which the sidecar listens on"
    return None


def sidecar_container(pod: Mapping[str, Any], settings: SidecarSettings) -> dict[str, Any]:
    """Return the native sidecar container for ``pod`` (annotations tune image and resources)."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    image = annotations.get(IMAGE_ANNOTATION) or settings.image
    cpu = annotations.get(CPU_ANNOTATION) or settings.cpu_request
    memory = annotations.get(MEMORY_ANNOTATION) or settings.memory_request
    probe = {"path": "/readyz", "port": settings.probe_port, "scheme": "HTTP"}
    return {
        "name": CONTAINER_NAME,
        "image": image,
        "restartPolicy": "Always",
        "command": ["allotment", "sidecar"],
        "args": ["--listen", f"127.0.0.1:{settings.listen_port}"],
        "env": [
            {
                "name": "ALLOTMENT_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
            {
                "name": "ALLOTMENT_DATABASE_URL",
                "valueFrom": {
                    "secretKeyRef": {
                        "name": settings.ledger_secret,
                        "key": settings.ledger_secret_key,
                    }
                },
            },
        ],
        "ports": [{"name": "allotment-probe", "containerPort": settings.probe_port}],
        "startupProbe": {"httpGet": probe, "periodSeconds": 1, "failureThreshold": 120},
        "livenessProbe": {
            "httpGet": {**probe, "path": "/livez"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "resources": {
            "requests": {"cpu": cpu, "memory": memory},
            "limits": {"memory": max(memory, settings.memory_limit, key=_mebibytes)},
        },
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }


def _mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1.0, "Gi": 1024.0, "K": 1 / 1000, "M": 1.0, "G": 1000.0}
    for unit, factor in units.items():
        if quantity.endswith(unit) and quantity[: -len(unit)].replace(".", "", 1).isdigit():
            return float(quantity[: -len(unit)]) * factor
    try:
        return float(quantity) / (1024 * 1024)
    except ValueError:
        return 0.0


def inject_sidecar(pod: Mapping[str, Any], settings: SidecarSettings) -> JsonPatch:
    """Return the JSON patch adding the sidecar to ``pod``; empty when ``skip_reason`` says so."""
    if skip_reason(pod, settings) is not None:
        return []
    spec = pod.get("spec") or {}
    container = sidecar_container(pod, settings)
    ops: JsonPatch = []
    if spec.get("initContainers"):
        ops.append({"op": "add", "path": "/spec/initContainers/0", "value": container})
    else:
        ops.append({"op": "add", "path": "/spec/initContainers", "value": [container]})
    annotations = (pod.get("metadata") or {}).get("annotations")
    if annotations is None:
        ops.append({"op": "add", "path": "/metadata/annotations", "value": {}})
    ops.append(
        {
            "op": "add",
            "path": f"/metadata/annotations/{_escape(INJECTED_ANNOTATION)}",
            "value": container["image"],
        }
    )
    return ops
