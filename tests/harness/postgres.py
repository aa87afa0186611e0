"""A real, throwaway PostgreSQL server for the test suite.

Role: give the tests a PostgreSQL URL. A user-provided ``ALLOTMENT_TEST_DATABASE_URL`` is used as
is. Otherwise Debian's ``postgresql`` package is installed when absent (``apt-get update`` once,
then ``apt-get install -y postgresql``), a cluster is initialised in a temporary folder owned by
the ``postgres`` user (PostgreSQL refuses to run as root, so every server command runs through
``runuser -u postgres --``), started on a free 127.0.0.1 port with ``fsync=off``, and stopped
with ``pg_ctl stop -m fast``.

It must not touch any server it did not start, bind anything but 127.0.0.1, or stop processes by
name: the only process it stops is the one whose data directory it created.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ENV_URL = "ALLOTMENT_TEST_DATABASE_URL"
INSTALL_HINT = (
    "install Debian's PostgreSQL (`apt-get install -y postgresql`, run as root so the harness "
    f"can start it as user `postgres`) or set {ENV_URL}=postgresql+psycopg://USER@HOST:PORT/DB"
)


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be provided on this machine; the message says what to do."""


@dataclass(frozen=True)
class PostgresServer:
    """A running server: the URL of its maintenance database and whether we own the process."""

    url: str
    owned: bool


def server_url(base_url: str, database: str) -> str:
    """Return ``base_url`` pointing at ``database`` instead of its own database."""
    head, _, _ = base_url.rpartition("/")
    return f"{head}/{database}"


def _binaries_dir() -> Path | None:
    root = Path("/usr/lib/postgresql")
    if not root.is_dir():
        return None
    versions = sorted(
        (p for p in root.iterdir() if (p / "bin" / "initdb").exists()),
        key=lambda p: int(p.name) if p.name.isdigit() else 0,
    )
    return versions[-1] / "bin" if versions else None


def _install() -> None:
    if os.geteuid() != 0:
        raise PostgresUnavailable(
            f"PostgreSQL is not installed and we are not root: {INSTALL_HINT}"
        )
    if shutil.which("apt-get") is None:
        raise PostgresUnavailable(
            f"PostgreSQL is not installed and there is no apt-get: {INSTALL_HINT}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "postgresql"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise PostgresUnavailable(
                f"`{' '.join(command)}` failed ({done.returncode}): {done.stderr[-2000:]}\n{INSTALL_HINT}"
            )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _as_postgres(*command: str) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return list(command)


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise PostgresUnavailable(
            f"`{' '.join(command)}` failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )


def _stop_when_gone(pid: int, bin_dir: Path, data: Path, folder: Path) -> subprocess.Popen[bytes]:
    """Start a watchdog that stops the server and removes its folder once ``pid`` is gone.

    A killed test run (SIGKILL, a CI timeout) never reaches the ``finally`` that stops the
    server; the watchdog, in a session of its own, outlives it and cleans up.
    """
    stop = " ".join(
        shlex.quote(part)
        for part in _as_postgres(
            str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"
        )
    )
    script = (
        f"while kill -0 {pid} 2>/dev/null; do sleep 1; done; "
        f"{stop} >/dev/null 2>&1; rm -rf {shlex.quote(str(folder))}"
    )
    return subprocess.Popen(
        ["sh", "-c", script],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Yield a running PostgreSQL server; stop it afterwards if this call started it."""
    given = os.environ.get(ENV_URL)
    if given:
        yield PostgresServer(url=given, owned=False)
        return
    bin_dir = _binaries_dir()
    if bin_dir is None:
        _install()
        bin_dir = _binaries_dir()
        if bin_dir is None:
            raise PostgresUnavailable(f"postgresql installed but no initdb found: {INSTALL_HINT}")
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError as error:
            raise PostgresUnavailable(f"there is no `postgres` user: {INSTALL_HINT}") from error
    folder = Path(tempfile.mkdtemp(prefix="allotment-pg-"))
    data = folder / "data"
    log = folder / "log"
    try:
        if os.geteuid() == 0:
            shutil.chown(folder, user="postgres", group="postgres")
        _run(
            _as_postgres(
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--encoding=UTF8",
                "--locale=C",
            )
        )
        port = _free_port()
        options = (
            f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        _run(
            _as_postgres(
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(log),
                "-w",
                "start",
            )
        )
        watchdog = _stop_when_gone(os.getpid(), bin_dir, data, folder)
        try:
            yield PostgresServer(
                url=f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", owned=True
            )
        finally:
            watchdog.kill()
            watchdog.wait()
            subprocess.run(
                _as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"),
                capture_output=True,
                check=False,
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
