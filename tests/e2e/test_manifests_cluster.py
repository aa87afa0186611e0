"""The install manifests against a real kube-apiserver: they apply, and RBAC is least privilege.

Role: ``kubectl apply --dry-run=server -k manifests/`` passes; the operator's ServiceAccount can
do what Kopf needs and nothing it must not (``kubectl auth can-i --as``); the ledger Secret
refuses a ``sqlite:`` URL. Only the namespace, ServiceAccount, RBAC and the admission policy are
applied for real (the webhook configurations would point this shared apiserver at a Service that
does not exist here).

Must not: depend on controllers, or leave the admission policy behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.cluster import ControlPlane
from tests.operator.running import (
    MANIFESTS,
    SERVICE_ACCOUNT,
    install_crds,
    install_identity,
    wait_until,
)


@pytest.fixture(scope="module")
def identity(control_plane: ControlPlane) -> ControlPlane:
    install_crds(control_plane)
    install_identity(control_plane)
    return control_plane


def test_the_base_applies_with_server_side_dry_run(identity: ControlPlane) -> None:
    done = identity.kubectl("apply", "--dry-run=server", "-k", str(MANIFESTS))
    assert done.returncode == 0, done.stderr
    for expected in (
        "customresourcedefinition.apiextensions.k8s.io/grants.allotment.dev",
        "deployment.apps/allotment-operator",
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/allotment-sidecar-injector",
        "validatingwebhookconfiguration.admissionregistration.k8s.io/allotment-warnings",
        "clusterrole.rbac.authorization.k8s.io/allotment-operator",
    ):
        assert expected in done.stdout


@pytest.mark.parametrize(
    ("verb", "resource", "allowed"),
    [
        pytest.param("watch", "grants.allotment.dev", True, id="watch-grants"),
        pytest.param("list", "entitlementresets.allotment.dev", True, id="list-resets"),
        pytest.param("watch", "subscriptions.allotment.dev", True, id="watch-subscriptions"),
        pytest.param("patch", "plans.allotment.dev/status", True, id="patch-plan-status"),
        pytest.param("patch", "entitlements.allotment.dev", True, id="patch-finalizer"),
        pytest.param("patch", "entitlements.allotment.dev/status", True, id="patch-status"),
        pytest.param("create", "events", True, id="post-events"),
        pytest.param("watch", "customresourcedefinitions.apiextensions.k8s.io", True,
                     id="watch-crds"),
        pytest.param("get", "namespaces", True, id="get-namespaces"),
        pytest.param("delete", "grants.allotment.dev", False, id="no-delete-grants"),
        pytest.param("create", "meters.allotment.dev", False, id="no-create-meters"),
        pytest.param("update", "features.allotment.dev", False, id="no-update-features"),
        pytest.param("get", "pods", False, id="no-read-pods"),
        pytest.param("create", "pods", False, id="no-create-pods"),
        pytest.param("patch", "deployments.apps", False, id="no-patch-deployments"),
        pytest.param("get", "secrets", False, id="no-read-secrets"),
        pytest.param("delete", "customresourcedefinitions.apiextensions.k8s.io", False,
                     id="no-delete-crds"),
        pytest.param("create", "customresourcedefinitions.apiextensions.k8s.io", False,
                     id="no-create-crds"),
        pytest.param("create", "mutatingwebhookconfigurations.admissionregistration.k8s.io",
                     False, id="no-admission-registration"),
        pytest.param("create", "configmaps", False, id="no-configmaps"),
        pytest.param("create", "leases.coordination.k8s.io", False, id="no-leases"),
        pytest.param("create", "kopfpeerings.kopf.dev", False, id="standalone-no-peering"),
    ],
)  # fmt: skip
def test_the_operator_can_do_exactly_what_it_needs(
    identity: ControlPlane, verb: str, resource: str, allowed: bool
) -> None:
    done = identity.kubectl(
        "auth", "can-i", verb, resource, "--all-namespaces", f"--as={SERVICE_ACCOUNT}"
    )
    assert done.stdout.strip() == ("yes" if allowed else "no"), done.stderr


@pytest.fixture
def ledger_url_policy(identity: ControlPlane) -> Iterator[None]:
    path = MANIFESTS / "ledger-url-policy.yaml"
    applied = identity.kubectl("apply", "--server-side", "-f", str(path))
    assert applied.returncode == 0, applied.stderr
    yield
    identity.kubectl("delete", "-f", str(path), "--wait=false")


def test_a_sqlite_ledger_url_is_refused(
    identity: ControlPlane, ledger_url_policy: None, namespace: str, tmp_path: Path
) -> None:
    def refused() -> str | None:
        done = identity.kubectl(
            "create", "secret", "generic", "allotment-sidecar-ledger", "-n", namespace,
            "--from-literal=url=sqlite:///ledger.db",
        )  # fmt: skip
        if done.returncode == 0:  # the policy is not active yet: try again
            identity.kubectl("delete", "secret", "allotment-sidecar-ledger", "-n", namespace)
            return None
        return done.stderr

    message = wait_until(refused, timeout=30, what="the sqlite: URL to be refused")
    assert "cannot be SQLite" in message
    accepted = identity.kubectl(
        "create", "secret", "generic", "allotment-sidecar-ledger", "-n", namespace,
        "--from-literal=url=postgresql://allotment_shop@db.example/allotment",
    )  # fmt: skip
    assert accepted.returncode == 0, accepted.stderr
