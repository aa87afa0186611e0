"""Benchmark: the operator's start time and memory with N Entitlements (default 10^4).

Prints one JSON line. On a real etcd + kube-apiserver (``tests/harness/cluster.py``, cached
binaries) with the CRDs of ``manifests/crds``, one namespace and a fresh SQLite ledger (or
``--db``):

- ``cold``: start ``allotment operator`` (no ``--verbose``), then create a Meter, a Feature and N
  metered Entitlements (one implied customer each, by ``subject``) with ``kubectl create`` of
  ``List`` documents of ``--batch`` objects. Reports the seconds from the process start to
  Kopf's liveness answering (``alive_s``), to the last create returning (``created_s``) and to
  every Entitlement Ready at its generation (``all_ready_s``), and the operator's RSS at alive
  and once all are Ready (MiB, from ``/proc/PID/status``).
- ``restart``: stop it (SIGTERM) and start it again over the N Ready objects: seconds to alive
  and until Kopf logged every object's resume (``resumed_s``), RSS at both points.
- ``per_entitlement_ms``: ``all_ready_s`` over N, the operator's whole cost per object (API
  round trips, Kopf, the ledger apply, status patches).

The box's load average is printed beside the numbers: benchmarks on a shared machine are noisy.

Usage::

    python -m bench.operator                     # 10^4 Entitlements
    python -m bench.operator --entitlements 2500 --batch 500
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NS = "bench-operator"
API = "allotment.dev/v1alpha1"


def _mib(pid: int) -> float:
    """Return the resident set size of ``pid`` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _poll(what: str, check: Callable[[], bool], timeout: float, every: float) -> float:
    """Poll ``check`` until true; return the seconds it took."""
    began = time.monotonic()
    while not check():
        if time.monotonic() - began > timeout:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)
    return time.monotonic() - began


class Operator:
    """One ``allotment operator`` process, started the way a Deployment would run it."""

    def __init__(self, db: str, kubeconfig: Path, log: Path, port: int) -> None:
        self.liveness = f"http://127.0.0.1:{port}/healthz"
        self.log = log
        args = [sys.executable, "-m", "allotment.cli.main", "operator", "--db", db,
                "--namespace", NS, "--liveness", self.liveness]  # fmt: skip
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        env.pop("ALLOTMENT_DATABASE_URL", None)
        self.began = time.monotonic()
        with log.open("ab") as sink:
            self.popen = subprocess.Popen(
                args, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def wait_alive(self) -> float:
        """Wait for Kopf's liveness endpoint; return the seconds since the process started."""

        def alive() -> bool:
            if self.popen.poll() is not None:
                raise RuntimeError(f"the operator exited:\n{self.log.read_text()[-3000:]}")
            return _healthy(self.liveness)

        _poll("the operator to be alive", alive, 300, 0.05)
        return time.monotonic() - self.began

    def rss(self) -> float:
        return _mib(self.popen.pid)

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)


def catalogue() -> list[dict[str, Any]]:
    return [
        {"apiVersion": API, "kind": "Meter", "metadata": {"name": "tokens-total", "namespace": NS},
         "spec": {"eventType": "prompt", "aggregation": "SUM", "valueProperty": "$.tokens"}},
        {"apiVersion": API, "kind": "Feature", "metadata": {"name": "gpt-tokens", "namespace": NS},
         "spec": {"meterSlug": "tokens_total"}},
    ]  # fmt: skip


def entitlement(i: int) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "Entitlement",
        "metadata": {"name": f"e-{i:06d}", "namespace": NS},
        "spec": {
            "subject": f"s-{i:06d}",
            "featureKey": "gpt_tokens",
            "type": "metered",
            "usagePeriod": {"interval": "MONTH"},
            "issueAfterReset": 1000,
        },
    }


def _kubectl(plane: Any, *args: str, input: str | None = None) -> str:
    done = plane.kubectl(*args, input=input, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {done.stderr}")
    text: str = done.stdout
    return text


def _ready_count(plane: Any) -> int:
    path = '{range .items[*]}{.metadata.generation}={.status.observedGeneration}/' \
           '{.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}'  # fmt: skip
    out = _kubectl(plane, "get", "entitlements", "-n", NS, "-o", f"jsonpath={path}")
    return sum(1 for line in out.splitlines() if line.endswith("/True") and
               line.split("/")[0].split("=")[0] == line.split("/")[0].split("=")[1])  # fmt: skip


def _resumed(log: Path, since: int) -> int:
    text = log.read_text(errors="replace")[since:]
    return text.count("Resuming is processed")


def run(count: int, batch: int, db: str | None) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from allotment.ledger.storage import migrate
    from tests.harness.cluster import ControlPlane
    from tests.operator.running import free_port, install_crds

    with tempfile.TemporaryDirectory(prefix="bench-operator-") as scratch:
        folder = Path(scratch)
        url = db or f"sqlite:///{folder / 'ledger.db'}"
        migrate.upgrade(url)
        log = folder / "operator.log"
        with ControlPlane.start(folder / "plane", tie_to_parent=True) as plane:
            install_crds(plane)
            _kubectl(plane, "create", "namespace", NS)
            operator = Operator(url, plane.kubeconfig, log, free_port())
            try:
                cold: dict[str, Any] = {"alive_s": round(operator.wait_alive(), 2)}
                cold["rss_alive_mib"] = operator.rss()
                _kubectl(plane, "create", "-f", "-",
                         input=json.dumps({"apiVersion": "v1", "kind": "List",
                                           "items": catalogue()}))  # fmt: skip
                for start in range(0, count, batch):
                    items = [entitlement(i) for i in range(start, min(count, start + batch))]
                    _kubectl(plane, "create", "-f", "-",
                             input=json.dumps({"apiVersion": "v1", "kind": "List",
                                               "items": items}))  # fmt: skip
                cold["created_s"] = round(time.monotonic() - operator.began, 1)
                _poll("every Entitlement Ready", lambda: _ready_count(plane) == count, 7200, 5)
                cold["all_ready_s"] = round(time.monotonic() - operator.began, 1)
                cold["rss_ready_mib"] = operator.rss()
            finally:
                operator.stop()
            offset = len(log.read_text(errors="replace"))
            operator = Operator(url, plane.kubeconfig, log, free_port())
            try:
                restart: dict[str, Any] = {"alive_s": round(operator.wait_alive(), 2)}
                restart["rss_alive_mib"] = operator.rss()
                _poll("every object resumed", lambda: _resumed(log, offset) >= count + 2, 7200, 2)
                restart["resumed_s"] = round(time.monotonic() - operator.began, 1)
                restart["rss_resumed_mib"] = operator.rss()
            finally:
                operator.stop()
    return {
        "bench": "operator",
        "entitlements": count,
        "database": url.split(":", 1)[0],
        "cold": cold,
        "restart": restart,
        "per_entitlement_ms": round(1000 * cold["all_ready_s"] / count, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entitlements", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=500, help="objects per kubectl create")
    parser.add_argument("--db", help="a migrated or empty ledger URL (default: a temp SQLite)")
    args = parser.parse_args(argv)
    load_before = [round(x, 2) for x in os.getloadavg()]
    result = run(args.entitlements, args.batch, args.db)
    print(json.dumps({**result, "load_average_before": load_before}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
