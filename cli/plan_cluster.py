"""``allotment plan --cluster``: the current state, read from a cluster with kubectl.

Role: export the allotment objects a cluster holds (every kind in ``crds/``) in the namespaces the
desired manifests name, as YAML documents carrying what a manifest carries (apiVersion, kind,
name, namespace, spec), so the plan treats them exactly as ``--current DIR``. Namespaces the
desired manifests do not name are not the change's business and are left out. kubectl is the user's own (``--kubeconfig``
or ``KUBECONFIG``, its current context); nothing is written to the cluster.

It must not read status, uids or instants: the plan decides from specs, as for files.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from allotment.cli.manifests import load_crds

__all__ = ["ClusterReadError", "export_cluster"]


class ClusterReadError(RuntimeError):
    """kubectl could not list the allotment objects of the cluster."""


Key = tuple[str, str, str]


def _spec_defaults(kind: str) -> dict[str, object]:
    """Return the defaults the CRD schema puts into a kind's spec (top-level fields)."""
    for crd in load_crds().values():
        if crd.kind == kind:
            spec = crd.schema.get("properties", {}).get("spec", {}).get("properties", {})
            return {name: field["default"] for name, field in spec.items() if "default" in field}
    return {}


def _manifest(item: dict[str, Any], written: dict[Key, dict[str, Any]]) -> dict[str, Any]:
    """Return the object as a manifest; a default the apiserver filled in, which the desired
    manifest leaves out too, is left out, so an unchanged file plans as unchanged."""
    meta = item.get("metadata") or {}
    kind, namespace, name = str(item.get("kind")), meta.get("namespace"), meta.get("name")
    spec = dict(item.get("spec") or {})
    desired_spec = (written.get((kind, str(namespace), str(name))) or {}).get("spec") or {}
    for field, default in _spec_defaults(kind).items():
        if field not in desired_spec and spec.get(field) == default:
            del spec[field]
    return {
        "apiVersion": item.get("apiVersion"),
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def export_cluster(
    destination: Path, written: dict[Key, dict[str, Any]], *, kubeconfig: str | None = None
) -> int:
    """Write the cluster's objects in the namespaces of ``written`` (the desired manifests by
    (kind, namespace, name)) to ``destination/cluster.yaml``; return how many were written."""
    namespaces = {key[1] for key in written}
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise ClusterReadError("kubectl is not on PATH: install it, or plan with --current DIR")
    plurals = sorted({f"{crd.plural}.{crd.group}" for crd in load_crds().values()})
    command = [kubectl, "get", ",".join(plurals), "--all-namespaces", "-o", "json"]
    if kubeconfig:
        command[1:1] = ["--kubeconfig", kubeconfig]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no output"
        raise ClusterReadError(f"kubectl get {','.join(plurals)} failed: {reason}")
    items = json.loads(done.stdout).get("items", [])
    documents = [
        _manifest(item, written)
        for item in items
        if isinstance(item.get("metadata"), dict)
        and item["metadata"].get("namespace") in namespaces
    ]
    destination.mkdir(parents=True, exist_ok=True)
    (destination / "cluster.yaml").write_text(
        yaml.safe_dump_all(documents, sort_keys=False), encoding="utf-8"
    )
    return len(documents)
