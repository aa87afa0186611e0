"""A real etcd + kube-apiserver on loopback, for the e2e tests and for people trying allotment.

Role: start a control plane (etcd, kube-apiserver; no controllers) from binaries obtained by
:mod:`tests.harness.cluster_build`, with an own CA, token auth as ``system:masters`` and RBAC,
write a kubeconfig, wait for ``/readyz``, and stop exactly the processes it started.

Command line (from the repo root, venv active)::

    python -m tests.harness.cluster up      # build once (cached), start, write .local/kubeconfig
    python -m tests.harness.cluster env     # prints: export KUBECONFIG=<repo>/.local/kubeconfig
    python -m tests.harness.cluster status
    python -m tests.harness.cluster down    # stops the recorded process groups; idempotent
    python -m tests.harness.cluster build   # only build/cache the binaries

Python: ``with ControlPlane.start(state_dir) as cp: cp.kubectl("get", "ns")``.

Must not: bind anything but 127.0.0.1, signal a process it did not start (PIDs are checked
against their recorded start time), or write binaries into the repository.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.harness import cluster_build, tls
from tests.harness.cluster_build import Binaries, BinariesUnavailable

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STATE_DIR = REPO_ROOT / ".local" / "cluster"
DEFAULT_KUBECONFIG = REPO_ROOT / ".local" / "kubeconfig"
STATE_FILE = "state.json"
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 15.0
REAP_TIMEOUT_S = 15.0
ADMIN_USER = "allotment-admin"
PR_SET_PDEATHSIG = 1


class ControlPlaneError(RuntimeError):
    """The control plane could not be started; the message carries the relevant log tail."""


@dataclass(frozen=True)
class ProcessRecord:
    """A process group leader the harness started: PID plus /proc start time against PID reuse."""

    name: str
    pid: int
    start_ticks: int
    log: Path

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": self.pid,
            "start_ticks": self.start_ticks,
            "log": str(self.log),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcessRecord:
        return cls(
            name=str(data["name"]),
            pid=int(data["pid"]),
            start_ticks=int(data["start_ticks"]),
            log=Path(data["log"]),
        )

    def exists(self) -> bool:
        """True while this very process has a /proc entry, even as a zombie not yet reaped."""
        stat = _proc_stat(self.pid)
        return stat is not None and stat[1] == self.start_ticks

    def alive(self) -> bool:
        """True while this very process (same PID and start time) exists and is not a zombie."""
        stat = _proc_stat(self.pid)
        return stat is not None and stat[1] == self.start_ticks and stat[0] != "Z"


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) of a PID from /proc, or None if there is none."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` asking Linux to SIGKILL the child when this process dies.

    Used by the test fixture, so a pytest killed by a CI timeout leaves no apiserver behind.
    SIGKILL, not SIGTERM: both servers get the signal at once, and a kube-apiserver shutting down
    gracefully while its etcd goes away hangs (seen: still running a minute later). The libc
    function is looked up before forking; the child only calls it.
    """
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return arm


def _spawn(
    name: str, args: Sequence[str], log: Path, *, tie_to_parent: bool = False
) -> tuple[ProcessRecord, subprocess.Popen[bytes]]:
    """Start ``args`` as the leader of a new session (hence its own process group)."""
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=log.parent,
            preexec_fn=_die_with_parent() if tie_to_parent else None,
        )
    stat = _proc_stat(proc.pid)
    if stat is None:
        proc.wait()
        raise ControlPlaneError(f"{name} exited at once:\n{_tail(log)}")
    return ProcessRecord(name=name, pid=proc.pid, start_ticks=stat[1], log=log), proc


def _wait_gone(record: ProcessRecord, popen: subprocess.Popen[bytes] | None, grace: float) -> bool:
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        gone = popen.poll() is not None if popen is not None else not record.alive()
        if gone:
            return True
        time.sleep(0.1)
    return False


def _stop_group(record: ProcessRecord, popen: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM the process group we created, then SIGKILL it if it lingers; reap if ours."""
    if not record.alive():
        if popen is not None:
            popen.wait()
        return
    for sig, grace in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(record.pid, sig)
        if _wait_gone(record, popen, grace):
            break
    if popen is not None:
        # Our unreaped child still holds the PID, so the group id cannot have been reused: take
        # down anything left in the group (there should be nothing), then reap.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(record.pid, signal.SIGKILL)
        popen.wait()


def _wait_http(
    url: str,
    *,
    context: ssl.SSLContext | None,
    headers: dict[str, str],
    record: ProcessRecord,
    expect: str,
    timeout: float = READY_TIMEOUT_S,
) -> float:
    """Poll ``url`` until it answers 200 with ``expect`` in the body; seconds waited."""
    started = time.monotonic()
    last = "no answer yet"
    while time.monotonic() - started < timeout:
        if not record.alive():
            raise ControlPlaneError(f"{record.name} exited while starting:\n{_tail(record.log)}")
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, context=context, timeout=5) as response:
                body = response.read().decode(errors="replace")
                if response.status == 200 and expect in body:
                    return time.monotonic() - started
                last = f"HTTP {response.status}: {body[:200]}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read().decode(errors='replace')[:300]}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.25)
    raise ControlPlaneError(
        f"{record.name} not ready at {url} after {timeout:.0f}s (last: {last}):\n"
        f"{_tail(record.log)}"
    )


STATE_ENTRIES = (
    "etcd-data",
    "pki",
    "etcd.log",
    "kube-apiserver.log",
    "tokens.csv",
    "kubeconfig",
    STATE_FILE,
)


def _clear_state(state_dir: Path) -> None:
    """Remove what an earlier run left in ``state_dir`` (only the entries the harness writes)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    for name in STATE_ENTRIES:
        path = state_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _etcd_supports(etcd: Path, flag: str) -> bool:
    proc = subprocess.run([str(etcd), "--help"], capture_output=True, text=True, check=False)
    return flag in proc.stdout + proc.stderr


def _kubeconfig_text(url: str, ca_cert: Path, token: str) -> str:
    ca_data = base64.b64encode(ca_cert.read_bytes()).decode()
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "allotment-test",
                "cluster": {"server": url, "certificate-authority-data": ca_data},
            }
        ],
        "users": [{"name": ADMIN_USER, "user": {"token": token}}],
        "contexts": [
            {
                "name": "allotment-test",
                "context": {
                    "cluster": "allotment-test",
                    "user": ADMIN_USER,
                    "namespace": "default",
                },
            }
        ],
        "current-context": "allotment-test",
        "preferences": {},
    }
    return json.dumps(doc, indent=2) + "\n"  # JSON is YAML; kubectl reads it.


@dataclass(frozen=True)
class ControlPlane:
    """A running etcd + kube-apiserver. ``stop()`` ends exactly the process groups it started."""

    state_dir: Path
    kubeconfig: Path
    url: str
    etcd_url: str
    token: str
    ca: tls.KeyPair
    binaries: Binaries
    processes: tuple[ProcessRecord, ...]
    _popens: tuple[subprocess.Popen[bytes] | None, ...] = ()

    # -- paths the webhook e2e needs ------------------------------------------------------------
    @property
    def ca_cert(self) -> Path:
        return self.ca.cert

    @property
    def ca_key(self) -> Path:
        return self.ca.key

    def ca_bundle(self) -> str:
        """The CA certificate, base64-encoded: a webhook ``clientConfig.caBundle``."""
        return base64.b64encode(self.ca.cert.read_bytes()).decode()

    def issue_serving_cert(self, name: str, sans: Sequence[str] = tls.LOOPBACK_SANS) -> tls.KeyPair:
        """A server certificate signed by this control plane's CA (for a webhook on 127.0.0.1)."""
        return tls.issue(self.ca, self.state_dir / "pki", name, common_name=name, sans=sans)

    # -- lifecycle ---------------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        state_dir: Path,
        *,
        kubeconfig: Path | None = None,
        binaries: Binaries | None = None,
        build: bool = False,
        tie_to_parent: bool = False,
    ) -> ControlPlane:
        """Start etcd and kube-apiserver with state in ``state_dir`` (must not hold a running one).

        ``tie_to_parent``: the servers get SIGKILL when the calling process dies (for test
        sessions); without it they outlive the caller (for ``up``) until ``stop()``/``down``.
        """
        bins = binaries if binaries is not None else cluster_build.resolve(build=build)
        state_dir = state_dir.resolve()
        existing = state_dir / STATE_FILE
        if existing.exists():
            previous = cls.attach(state_dir)
            if previous is not None and any(p.alive() for p in previous.processes):
                raise ControlPlaneError(f"a control plane is already running from {state_dir}")
        _clear_state(state_dir)
        kubeconfig = (kubeconfig or state_dir / "kubeconfig").resolve()

        pki = state_dir / "pki"
        ca = tls.create_ca(pki)
        serving = tls.issue(ca, pki, "apiserver", common_name="kube-apiserver",
                            sans=(*tls.LOOPBACK_SANS, "IP:10.0.0.1",
                                  "DNS:kubernetes.default.svc"))  # fmt: skip
        sa_key = tls.create_signing_key(pki / "service-account.key")
        token = secrets.token_hex(16)
        tokens = state_dir / "tokens.csv"
        tokens.write_text(f'{token},{ADMIN_USER},{ADMIN_USER}-uid,"system:masters"\n')
        tokens.chmod(0o600)

        records: list[ProcessRecord] = []
        popens: list[subprocess.Popen[bytes] | None] = []

        def abort() -> None:
            for rec, pop in reversed(list(zip(records, popens, strict=True))):
                _stop_group(rec, pop)

        try:
            client_port, peer_port, api_port = free_port(), free_port(), free_port()
            etcd_url = f"http://127.0.0.1:{client_port}"
            peer_url = f"http://127.0.0.1:{peer_port}"
            etcd_args = [
                str(bins.etcd),
                "--name=allotment",
                f"--data-dir={state_dir / 'etcd-data'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=allotment={peer_url}",
                "--initial-cluster-state=new",
                "--log-level=warn",
            ]
            if _etcd_supports(bins.etcd, "--unsafe-no-fsync"):
                etcd_args.append("--unsafe-no-fsync")
            rec, pop = _spawn(
                "etcd", etcd_args, state_dir / "etcd.log", tie_to_parent=tie_to_parent
            )
            records.append(rec)
            popens.append(pop)
            _wait_http(f"{etcd_url}/health", context=None, headers={}, record=rec, expect='"true"')

            url = f"https://127.0.0.1:{api_port}"
            api_args = [
                str(bins.kube_apiserver),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={ca.cert}",
                f"--token-auth-file={tokens}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={url}",
                f"--service-account-key-file={sa_key}",
                f"--service-account-signing-key-file={sa_key}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--disable-admission-plugins=ServiceAccount",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ]
            rec, pop = _spawn(
                "kube-apiserver",
                api_args,
                state_dir / "kube-apiserver.log",
                tie_to_parent=tie_to_parent,
            )
            records.append(rec)
            popens.append(pop)
            context = ssl.create_default_context(cafile=str(ca.cert))
            _wait_http(
                f"{url}/readyz",
                context=context,
                headers={"Authorization": f"Bearer {token}"},
                record=rec,
                expect="ok",
            )
        except BaseException:
            abort()
            raise

        kubeconfig.parent.mkdir(parents=True, exist_ok=True)
        kubeconfig.write_text(_kubeconfig_text(url, ca.cert, token))
        kubeconfig.chmod(0o600)
        plane = cls(
            state_dir=state_dir,
            kubeconfig=kubeconfig,
            url=url,
            etcd_url=etcd_url,
            token=token,
            ca=ca,
            binaries=bins,
            processes=tuple(records),
            _popens=tuple(popens),
        )
        plane._write_state()
        return plane

    def _write_state(self) -> None:
        state = {
            "url": self.url,
            "etcd_url": self.etcd_url,
            "kubeconfig": str(self.kubeconfig),
            "token": self.token,
            "ca_cert": str(self.ca.cert),
            "ca_key": str(self.ca.key),
            "binaries": {
                "etcd": str(self.binaries.etcd),
                "kube_apiserver": str(self.binaries.kube_apiserver),
                "kubectl": str(self.binaries.kubectl),
                "source": self.binaries.source,
            },
            "processes": [p.to_json() for p in self.processes],
        }
        path = self.state_dir / STATE_FILE
        path.write_text(json.dumps(state, indent=2) + "\n")
        path.chmod(0o600)

    @classmethod
    def attach(cls, state_dir: Path) -> ControlPlane | None:
        """The control plane recorded in ``state_dir`` (perhaps no longer running), or None."""
        path = state_dir / STATE_FILE
        if not path.is_file():
            return None
        state = json.loads(path.read_text())
        bins = state["binaries"]
        return cls(
            state_dir=state_dir.resolve(),
            kubeconfig=Path(state["kubeconfig"]),
            url=state["url"],
            etcd_url=state["etcd_url"],
            token=state["token"],
            ca=tls.KeyPair(cert=Path(state["ca_cert"]), key=Path(state["ca_key"])),
            binaries=Binaries(
                etcd=Path(bins["etcd"]),
                kube_apiserver=Path(bins["kube_apiserver"]),
                kubectl=Path(bins["kubectl"]),
                source=bins["source"],
            ),
            processes=tuple(ProcessRecord.from_json(p) for p in state["processes"]),
        )

    def running(self) -> bool:
        return all(p.alive() for p in self.processes)

    def stop(self) -> None:
        """Stop the recorded process groups (kube-apiserver first); safe to call twice."""
        popens: Sequence[subprocess.Popen[bytes] | None] = self._popens or [None] * len(
            self.processes
        )
        for record, popen in reversed(list(zip(self.processes, popens, strict=True))):
            _stop_group(record, popen)
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / STATE_FILE).unlink()
        shutil.rmtree(self.state_dir / "etcd-data", ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- use ---------------------------------------------------------------------------------------
    def kubectl(
        self, *args: str, input: str | None = None, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against this control plane; never raises on a non-zero exit."""
        return subprocess.run(
            [str(self.binaries.kubectl), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def env(self) -> dict[str, str]:
        """Environment for child processes (operator, CLI) that should talk to this cluster."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}


# -- command line ----------------------------------------------------------------------------------
def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def cmd_up(state_dir: Path, kubeconfig: Path) -> int:
    current = ControlPlane.attach(state_dir)
    if current is not None and current.running():
        print(
            f"control plane already running at {current.url} "
            f"(kubeconfig {_rel(current.kubeconfig)})"
        )
        return 0
    if current is not None:
        current.stop()  # a half-dead one: clear what is left of it
    started = time.monotonic()
    try:
        plane = ControlPlane.start(state_dir, kubeconfig=kubeconfig, build=True)
    except (BinariesUnavailable, ControlPlaneError, tls.TLSError) as exc:
        print(f"up failed: {exc}", file=sys.stderr)
        return 1
    version = plane.kubectl("version", "-o", "json")
    server = "?"
    if version.returncode == 0:
        server = json.loads(version.stdout).get("serverVersion", {}).get("gitVersion", "?")
    kc = _rel(plane.kubeconfig)
    print(
        f"control plane up in {time.monotonic() - started:.1f}s: "
        f"kube-apiserver {server} at {plane.url}\n"
        f"  etcd {plane.etcd_url}; PIDs {', '.join(f'{p.name}={p.pid}' for p in plane.processes)}; "
        f"logs in {_rel(plane.state_dir)}/\n"
        f"  binaries: {plane.binaries.source}\n"
        f"use it:\n"
        f"  kubectl --kubeconfig {kc} get --raw /version\n"
        f'  eval "$(python -m tests.harness.cluster env)"   # then plain kubectl\n'
        f"stop it:\n"
        f"  python -m tests.harness.cluster down"
    )
    return 0


def cmd_down(state_dir: Path) -> int:
    current = ControlPlane.attach(state_dir)
    if current is None:
        print("no control plane recorded; nothing to stop")
        return 0
    current.stop()
    # The processes outlived the `up` that started them, so PID 1 reaps them; wait for that, so
    # that `pgrep` right after `down` finds nothing (not even a zombie).
    deadline = time.monotonic() + REAP_TIMEOUT_S
    while any(p.exists() for p in current.processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [f"{p.name}={p.pid}" for p in current.processes if p.alive()]
    zombies = [f"{p.name}={p.pid}" for p in current.processes if p.exists() and not p.alive()]
    if zombies:
        print(f"exited but not yet reaped by PID 1: {', '.join(zombies)}", file=sys.stderr)
    with contextlib.suppress(FileNotFoundError):
        current.kubeconfig.unlink()
    if left:
        print(f"still alive after stop: {', '.join(left)}", file=sys.stderr)
        return 1
    print(f"stopped {', '.join(f'{p.name}={p.pid}' for p in current.processes)}")
    return 0


def cmd_status(state_dir: Path) -> int:
    current = ControlPlane.attach(state_dir)
    if current is None:
        print("down")
        return 1
    for p in current.processes:
        print(f"{p.name} pid {p.pid}: {'running' if p.alive() else 'gone'}")
    print(f"url {current.url}; kubeconfig {current.kubeconfig}")
    return 0 if current.running() else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.harness.cluster", description=__doc__.split("\n")[0]
    )
    parser.add_argument("command", choices=["up", "down", "env", "status", "build"])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    parser.add_argument("--kubeconfig", type=Path, default=DEFAULT_KUBECONFIG)
    args = parser.parse_args(argv)
    state_dir: Path = args.state_dir.resolve()
    kubeconfig: Path = args.kubeconfig.resolve()
    if args.command == "up":
        return cmd_up(state_dir, kubeconfig)
    if args.command == "down":
        return cmd_down(state_dir)
    if args.command == "status":
        return cmd_status(state_dir)
    if args.command == "env":
        print(f"export KUBECONFIG={kubeconfig}")
        return 0
    try:
        print(cluster_build.resolve(build=True))
    except BinariesUnavailable as exc:
        print(f"build failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
