"""Support for the e2e tier: the operator as a real subprocess, and its service-account identity.

Role: start ``allotment operator`` the way a user would (a subprocess, its own process group),
wait for Kopf's liveness endpoint, and stop exactly that process by PID. ``operator_kubeconfig``
installs the manifests' namespace, ServiceAccount and RBAC and writes a kubeconfig holding a
token for ``system:serviceaccount:allotment-system:allotment-operator``, so the e2e operator
runs with the manifests' least privilege rather than as cluster admin.

Must not: stop processes it did not start, or bind anything but 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tests.harness.cluster import ControlPlane

ROOT = Path(__file__).resolve().parents[2]
PLURALS = {
    "Meter": "meters",
    "Feature": "features",
    "Customer": "customers",
    "Entitlement": "entitlements",
    "Grant": "grants",
    "EntitlementReset": "entitlementresets",
    "Plan": "plans",
    "Subscription": "subscriptions",
}
MANIFESTS = ROOT / "manifests"
SERVICE_ACCOUNT = "system:serviceaccount:allotment-system:allotment-operator"
T = TypeVar("T")


def ready(obj: dict[str, Any]) -> bool:
    """Tell whether an object is Ready at its current generation (what ``kubectl wait`` checks)."""
    status = obj.get("status") or {}
    conditions = {c["type"]: c for c in status.get("conditions") or []}
    current = status.get("observedGeneration") == obj["metadata"]["generation"]
    return current and conditions.get("Ready", {}).get("status") == "True"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(check: Callable[[], T | None], *, timeout: float, what: str) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


def allotment(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the ``allotment`` command of this checkout."""
    return subprocess.run(
        [sys.executable, "-m", "allotment.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def kubectl_ok(plane: ControlPlane, *args: str, input: str | None = None) -> str:
    done = plane.kubectl(*args, input=input)
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done.stdout


def install_crds(plane: ControlPlane) -> None:
    """Apply the CRDs as the manifests ship them and wait until they are Established.

    Another test may have just deleted one (``--wait=false``): wait for it to be gone first.
    """
    crds = json.loads(kubectl_ok(plane, "get", "crd", "-o", "json"))["items"]
    for crd in crds:
        name = crd["metadata"]["name"]
        if name.endswith(".allotment.dev") and crd["metadata"].get("deletionTimestamp"):
            plane.kubectl("wait", "--for=delete", f"crd/{name}", "--timeout=60s")
    kubectl_ok(plane, "apply", "--server-side", "--force-conflicts", "-k", str(MANIFESTS / "crds"))
    kubectl_ok(plane, "wait", "--for=condition=Established", "--timeout=60s",
               "crd", "--all")  # fmt: skip


def install_identity(plane: ControlPlane) -> None:
    """Apply the manifests' namespace, ServiceAccount and RBAC (idempotent)."""
    for name in ("namespace.yaml", "serviceaccount.yaml", "rbac.yaml"):
        kubectl_ok(plane, "apply", "--server-side", "-f", str(MANIFESTS / name))


def operator_kubeconfig(plane: ControlPlane, folder: Path) -> Path:
    """Write a kubeconfig authenticating as the operator's ServiceAccount."""
    install_identity(plane)
    token = kubectl_ok(
        plane, "create", "token", "allotment-operator", "-n", "allotment-system",
        "--duration=2h",
    ).strip()  # fmt: skip
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "e2e",
                "cluster": {"server": plane.url, "certificate-authority": str(plane.ca_cert)},
            }
        ],
        "users": [{"name": "allotment-operator", "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "allotment-operator"}}],
        "current-context": "e2e",
    }
    path = folder / "operator-kubeconfig"
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


@dataclass
class OperatorProcess:
    """A running ``allotment operator``."""

    popen: subprocess.Popen[bytes]
    log: Path
    liveness: str
    started_in: float = 0.0

    def tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """Kill the operator's process group with SIGKILL (a crash: no cleanup runs)."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=15)

    def __enter__(self) -> OperatorProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=5)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _start(
    db_url: str,
    kubeconfig: Path,
    folder: Path,
    namespaces: Sequence[str],
    extra: Sequence[str],
    startup_timeout: float,
) -> OperatorProcess:
    port = free_port()
    liveness = f"http://127.0.0.1:{port}/healthz"
    args = [sys.executable, "-m", "allotment.cli.main", "operator", "--db", db_url,
            "--liveness", liveness, "--value-refresh", "1", "--verbose"]  # fmt: skip
    for namespace in namespaces:
        args += ["--namespace", namespace]
    args += list(extra)
    log = folder / f"operator-{port}.log"
    env: dict[str, Any] = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    env.pop("ALLOTMENT_DATABASE_URL", None)
    started = time.monotonic()
    with log.open("wb") as sink:
        popen = subprocess.Popen(
            args, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    process = OperatorProcess(popen=popen, log=log, liveness=liveness)
    deadline = started + startup_timeout
    while not _healthy(liveness):
        if not process.alive() or time.monotonic() > deadline:
            process.stop()
            raise OperatorStartError(process.tail())
        time.sleep(0.05)
    process.started_in = time.monotonic() - started
    return process


class OperatorStartError(AssertionError):
    """The operator did not become alive; the message is its log's tail."""


def start_operator(
    db_url: str,
    kubeconfig: Path,
    folder: Path,
    namespaces: Sequence[str],
    extra: Sequence[str] = (),
    startup_timeout: float = 60.0,
) -> OperatorProcess:
    """Start ``allotment operator`` and wait until Kopf reports it alive; the caller stops it
    (or uses it as a context manager).

    A port taken between choosing it and binding it (a busy machine) is retried with another.
    """
    for attempt in range(3):
        try:
            return _start(db_url, kubeconfig, folder, namespaces, extra, startup_timeout)
        except OperatorStartError as error:
            if "address already in use" not in str(error) or attempt == 2:
                raise AssertionError(f"the operator did not start:\n{error}") from None
    raise AssertionError("unreachable: three start attempts neither returned nor raised")


#: ``with running_operator(...) as operator:`` stops it when the block ends.
running_operator = start_operator
