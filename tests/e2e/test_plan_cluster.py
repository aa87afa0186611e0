"""``allotment plan --cluster`` reads the current objects from a real apiserver with kubectl."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.harness.cluster import ControlPlane

NOW = "2026-11-24T12:00:00Z"


def install_crds(plane: ControlPlane, root: Path) -> None:
    applied = plane.kubectl("apply", "--server-side", "-f", str(root / "crds"))
    assert applied.returncode == 0, applied.stderr
    established = plane.kubectl(
        "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"
    )
    assert established.returncode == 0, established.stderr


def in_namespace(source: Path, target: Path, namespace: str) -> Path:
    """Copy example 01 with every document put in ``namespace``."""
    target.mkdir(parents=True)
    for path in sorted(source.glob("*.yaml")):
        text = path.read_text().replace("metadata:\n", f"metadata:\n  namespace: {namespace}\n")
        (target / path.name).write_text(text)
    return target


def test_plan_against_the_cluster_shows_only_what_the_branch_changes(
    control_plane: ControlPlane, namespace: str, repo_root: Path, tmp_path: Path
) -> None:
    install_crds(control_plane, repo_root)
    current = in_namespace(
        repo_root / "examples" / "01-gpt-4-tokens", tmp_path / "current", namespace
    )
    applied = control_plane.kubectl("apply", "-f", str(current))
    assert applied.returncode == 0, applied.stderr
    desired = tmp_path / "desired"
    shutil.copytree(current, desired)
    (desired / "bonus.yaml").write_text(
        "apiVersion: allotment.dev/v1alpha1\nkind: Grant\nmetadata:\n"
        f"  name: customer-1-bonus\n  namespace: {namespace}\n"
        "spec:\n  entitlement: customer-1-gpt-4-tokens\n  amount: 500000\n"
    )
    kubectl_dir = str(Path(control_plane.binaries.kubectl).parent)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "allotment.cli.main", "plan", "--cluster"),
            *("--kubeconfig", str(control_plane.kubeconfig), "--desired", str(desired)),
            *("--now", NOW, "--format", "json"),
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PATH": f"{kubectl_dir}{os.pathsep}{os.environ['PATH']}"},
    )
    assert done.returncode == 0, done.stderr
    assert f"4 allotment objects read from the cluster (namespaces {namespace})" in done.stderr
    body = json.loads(done.stdout)
    assert [(r["kind"], r["name"], r["change"]) for r in body["resources"]] == [
        ("Grant", "customer-1-bonus", "create")
    ]
