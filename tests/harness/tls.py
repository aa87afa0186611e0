"""A throwaway certificate authority for the test control plane and webhooks, via the openssl CLI.

Role: create a CA, issue leaf certificates (server or client) signed by it, and create the
service-account signing key. Everything is written as PEM files into a given folder.

Must not: write outside the folder it is given, or produce anything meant for production use
(keys are unencrypted and short-lived).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

LOOPBACK_SANS: tuple[str, ...] = ("IP:127.0.0.1", "DNS:localhost")
DAYS = "7"


class TLSError(RuntimeError):
    """An openssl command failed."""


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, both PEM files."""

    cert: Path
    key: Path


def _openssl(*args: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise TLSError("the `openssl` command is not on PATH (Debian: apt-get install openssl)")
    proc = subprocess.run([openssl, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise TLSError(f"openssl {' '.join(args)} failed: {proc.stderr.strip()}")


def create_ca(folder: Path, common_name: str = "allotment-test-ca") -> KeyPair:
    """A self-signed CA (basicConstraints CA:TRUE, keyCertSign)."""
    folder.mkdir(parents=True, exist_ok=True)
    pair = KeyPair(cert=folder / "ca.crt", key=folder / "ca.key")
    _openssl(
        "req", "-x509", "-new", "-nodes",
        "-newkey", "rsa:2048",
        "-keyout", str(pair.key),
        "-out", str(pair.cert),
        "-days", DAYS,
        "-subj", f"/CN={common_name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    )  # fmt: skip
    pair.key.chmod(0o600)
    return pair


def issue(
    ca: KeyPair,
    folder: Path,
    name: str,
    *,
    common_name: str,
    sans: Sequence[str] = LOOPBACK_SANS,
    organization: str | None = None,
    client: bool = False,
) -> KeyPair:
    """A leaf certificate signed by ``ca``: server auth (SANs) or, with ``client``, client auth.

    ``sans`` use openssl syntax (``IP:127.0.0.1``, ``DNS:localhost``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    pair = KeyPair(cert=folder / f"{name}.crt", key=folder / f"{name}.key")
    csr = folder / f"{name}.csr"
    ext = folder / f"{name}.ext"
    subject = f"/CN={common_name}" + (f"/O={organization}" if organization else "")
    lines = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={'clientAuth' if client else 'serverAuth'}",
    ]
    if sans:
        lines.append(f"subjectAltName={','.join(sans)}")
    ext.write_text("\n".join(lines) + "\n")
    _openssl(
        "req", "-new", "-nodes", "-newkey", "rsa:2048",
        "-keyout", str(pair.key), "-out", str(csr), "-subj", subject,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr),
        "-CA", str(ca.cert), "-CAkey", str(ca.key), "-CAcreateserial",
        "-days", DAYS, "-sha256", "-extfile", str(ext), "-out", str(pair.cert),
    )  # fmt: skip
    pair.key.chmod(0o600)
    csr.unlink()
    ext.unlink()
    return pair


def create_signing_key(path: Path) -> Path:
    """An RSA private key (PEM) for service-account token signing and verification."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(path))
    path.chmod(0o600)
    return path
