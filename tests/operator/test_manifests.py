"""The install manifests, offline: what a reviewer would check by reading them.

The e2e tier (tests/e2e/test_manifests_*.py) applies them to a real apiserver.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from allotment.operator.injection import sidecar_container
from allotment.operator.settings import SidecarSettings
from allotment.operator.startup import build_registry

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]


def test_crd_copies_match_the_source_of_truth() -> None:
    sources = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    copies = sorted(
        p.name for p in (MANIFESTS / "crds").glob("*.yaml") if p.name != "kustomization.yaml"
    )
    assert copies == sources
    for name in sources:
        assert (MANIFESTS / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), (
            f"manifests/crds/{name} drifted: cp crds/*.yaml manifests/crds/"
        )
    (kustomization,) = documents("crds/kustomization.yaml")
    assert sorted(kustomization["resources"]) == sources


def test_every_rbac_rule_says_why() -> None:
    lines = (MANIFESTS / "rbac.yaml").read_text().splitlines()
    rule_lines = [i for i, line in enumerate(lines) if re.match(r"\s*- apiGroups:", line)]
    assert rule_lines
    for i in rule_lines:
        assert lines[i - 1].strip().startswith("#"), f"rbac.yaml line {i + 1} has no comment"


def test_rbac_verbs_are_least_privilege() -> None:
    (role, _binding) = documents("rbac.yaml")
    verbs = {
        (group, resource): set(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert all("delete" not in v and "update" not in v and "*" not in v for v in verbs.values())
    assert not any(g.startswith("admissionregistration") for g, _ in verbs)
    assert not any(r in ("pods", "secrets", "deployments") for _, r in verbs)
    assert verbs[("allotment.dev", "grants")] == {"get", "list", "watch", "patch"}
    assert verbs[("allotment.dev", "grants/status")] == {"patch"}


def test_webhook_paths_are_kopf_handler_ids_and_never_refuse() -> None:
    registered = {handler.id for handler in build_registry()._webhooks.get_all_handlers()}
    configured = documents("webhooks.yaml")
    paths = set()
    for configuration in configured:
        for hook in configuration["webhooks"]:
            assert hook["failurePolicy"] == "Ignore", hook["name"]
            assert hook["sideEffects"] == "None"
            paths.add(hook["clientConfig"]["service"]["path"].lstrip("/"))
    assert paths == registered


def test_injection_selects_by_label_only() -> None:
    (_validating, mutating) = documents("webhooks.yaml")
    (hook,) = mutating["webhooks"]
    assert hook["objectSelector"] == {"matchLabels": {"allotment.dev/inject": "true"}}
    assert hook["rules"][0]["resources"] == ["pods"]


def test_the_operator_deployment_runs_one_non_root_replica_after_migrating() -> None:
    (deployment,) = documents("deployment.yaml")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert [c["command"] for c in pod["initContainers"]] == [["allotment", "migrate"]]
    (operator,) = pod["containers"]
    assert operator["command"] == ["allotment", "operator"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in operator["env"] if "valueFrom" in e}
    assert env["ALLOTMENT_DATABASE_URL"] == {"name": "allotment-ledger", "key": "url"}


def test_the_manual_snippet_is_what_the_webhook_injects() -> None:
    (pod,) = documents("sidecar-snippet.yaml")
    (snippet,) = pod["spec"]["initContainers"]
    settings = SidecarSettings(image=snippet["image"])
    assert snippet == sidecar_container({"metadata": {}}, settings)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not on PATH")
def test_kustomize_builds_every_concern() -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(MANIFESTS)], capture_output=True, text=True, check=True
    )
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(built.stdout) if d)
    crds = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    assert kinds.count("CustomResourceDefinition") == len(crds)
    for kind in ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                 "Deployment", "Service", "ValidatingWebhookConfiguration",
                 "MutatingWebhookConfiguration", "ValidatingAdmissionPolicy"):  # fmt: skip
        assert kind in kinds
