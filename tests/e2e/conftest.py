"""Fixtures for the e2e tier: one real etcd + kube-apiserver per session, a namespace per test.

Role: start the control plane through the same harness code as ``python -m tests.harness.cluster
up`` (in a temporary folder, so a developer's running cluster is left alone), and stop it at the
end of the session. Without the binaries the tier skips with what to run; under ``CI=true`` it
fails instead, and builds the binaries on demand (a fresh CI machine has no cache).

Must not: depend on controllers (kube-apiserver alone runs none: no garbage collection, no
namespace finalisation), or stop any process the harness did not start.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.cluster import ControlPlane, ControlPlaneError
from tests.harness.cluster_build import BinariesUnavailable, cache_dir, cached
from tests.harness.tls import TLSError

IN_CI = os.environ.get("CI", "").lower() == "true"
BUILD_ON_DEMAND = IN_CI or os.environ.get("ALLOTMENT_KUBE_BUILD", "") == "1"

HOW_TO_GET = (
    "run `python -m tests.harness.cluster build` once (Go >= 1.26; 5-18 min, ~3.5 GiB Go cache), "
    "or set ALLOTMENT_KUBE_BUILD=1 to build on demand, "
    "or set KUBEBUILDER_ASSETS to a folder holding etcd, kube-apiserver and kubectl"
)


def _announce(config: pytest.Config, line: str) -> None:
    """Write a line to the terminal now, past output capturing (a long build should say so)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    if capture is None:
        reporter.write_line(line)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(line)


@pytest.fixture(scope="session")
def control_plane(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[ControlPlane]:
    state_dir = tmp_path_factory.mktemp("control-plane")
    will_build = BUILD_ON_DEMAND and not os.environ.get("KUBEBUILDER_ASSETS") and cached() is None
    if will_build:
        _announce(
            pytestconfig,
            f"e2e: building etcd and kube-apiserver into {cache_dir()} (once; 5 min on 2 idle "
            "cores with a cold Go cache, 18 min on a loaded one)",
        )
    try:
        plane = ControlPlane.start(state_dir, build=BUILD_ON_DEMAND, tie_to_parent=True)
    except (BinariesUnavailable, ControlPlaneError, TLSError) as exc:
        message = f"e2e: no control plane: {exc}"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(f"{message}\n  -> {HOW_TO_GET}")
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test (deleted afterwards; with no controllers it may linger)."""
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name.lower()).strip("-")[:40]
    name = f"t-{stem.strip('-')}-{secrets.token_hex(3)}"
    created = control_plane.kubectl("create", "namespace", name)
    assert created.returncode == 0, created.stderr
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]
