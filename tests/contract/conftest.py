"""Fixtures of the contract tier: real sidecar processes over a real ledger, and the real clients.

Role: ``running`` starts, once per module for each ledger (a SQLite file and a fresh PostgreSQL
database), ``allotment migrate --db URL``, then ``allotment dev`` over a temporary copy of
``examples/01-gpt-4-tokens`` plus one Customer and Entitlement like customer-1's for each of
``OTHER_CUSTOMERS`` (so tests that ingest do not share a balance), then ``allotment sidecar --db
URL`` (the production entry point) over the same ledger, each on a free 127.0.0.1 port, and waits
until both answer the seed's value. ``node`` runs a script of
this folder with the pinned SDKs of ``node_modules``: when they are missing the tier fails under
``CI=true`` and skips loudly otherwise, saying ``make contract-deps``.

It must not bind anything but 127.0.0.1 or stop a process it did not start (by PID only).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.harness.postgres import server_url

CONTRACT_DIR = Path(__file__).parent
REPO = CONTRACT_DIR.parent.parent
EXAMPLE = REPO / "examples" / "01-gpt-4-tokens"
NODE_PACKAGES = ("@openmeter/sdk", "openmeter-sdk-legacy")
START_LIMIT_SECONDS = 60.0
VALUE_PATH = "/api/v1/subjects/customer-1/entitlements/gpt_4_tokens/value"
OTHER_CUSTOMERS = ("customer-2", "customer-3", "customer-4")
_CUSTOMER_YAML = """\
apiVersion: allotment.dev/v1alpha1
kind: Customer
metadata:
  name: {key}
spec:
  name: Contract {key}
---
apiVersion: allotment.dev/v1alpha1
kind: Entitlement
metadata:
  name: {key}-gpt-4-tokens
spec:
  customer: {key}
  featureKey: gpt_4_tokens
  type: metered
  usagePeriod:
    interval: MONTH
  issueAfterReset: 1000000
"""


def value_path(customer: str) -> str:
    return f"/api/v1/subjects/{customer}/entitlements/gpt_4_tokens/value"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def missing(message: str) -> None:
    """Fail under CI=true, skip loudly otherwise."""
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def allotment_command() -> list[str]:
    """Return the command running this checkout's ``allotment`` CLI."""
    found = Path(sys.executable).parent / "allotment"
    if found.exists():
        return [str(found)]
    return [sys.executable, "-m", "allotment.cli.main"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def http_json(url: str, *, timeout: float = 5.0) -> tuple[int, Any]:
    """GET ``url``; return (status, JSON body or None)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            return error.code, json.loads(raw) if raw else None
        except ValueError:
            return error.code, None


@dataclass
class Process:
    """A process this fixture started, with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=15)


def start(name: str, command: list[str], log: Path, cwd: Path) -> Process:
    with log.open("wb") as out:
        popen = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    return Process(name, popen, log)


def wait_for_value(process: Process, base_url: str) -> None:
    """Wait until ``base_url`` answers the seed's value (the ledger is loaded)."""
    deadline = time.monotonic() + START_LIMIT_SECONDS
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise AssertionError(f"{process.name} exited early:\n{process.output()}")
        try:
            status, _ = http_json(base_url + VALUE_PATH, timeout=2)
            if status == 200:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"{process.name} did not answer {VALUE_PATH}:\n{process.output()}")


@dataclass(frozen=True)
class Running:
    """The URLs of ``allotment dev`` and ``allotment sidecar`` over one ledger."""

    ledger_url: str
    dev_url: str
    sidecar_url: str


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ],
)
def contract_ledger_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Yield an empty ledger URL per module: a SQLite file, then a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('contract-sqlite') / 'ledger.db'}"
        return
    base: str = request.getfixturevalue("postgres_url")
    libpq = base.replace("+psycopg", "")
    name = f"allotment_contract_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server_url(base, name)
    finally:
        with psycopg.connect(libpq, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def running(
    contract_ledger_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    """Start dev (reconciling example 01 and more customers) and a sidecar on one ledger."""
    ledger_url = contract_ledger_url
    tmp_path = tmp_path_factory.mktemp("contract")
    examples = tmp_path / "examples"
    shutil.copytree(EXAMPLE, examples)
    for key in OTHER_CUSTOMERS:
        (examples / f"contract-{key}.yaml").write_text(_CUSTOMER_YAML.format(key=key))
    cli = allotment_command()
    migrated = subprocess.run(
        [*cli, "migrate", "--db", ledger_url], capture_output=True, text=True, cwd=tmp_path
    )
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    dev_port, sidecar_port = free_port(), free_port()
    processes: list[Process] = []
    try:
        dev = start(
            "allotment dev",
            [
                *cli,
                "dev",
                str(examples),
                "--db",
                ledger_url,
                "--listen",
                f"127.0.0.1:{dev_port}",
            ],
            tmp_path / "dev.log",
            tmp_path,
        )
        processes.append(dev)
        dev_url = f"http://127.0.0.1:{dev_port}"
        wait_for_value(dev, dev_url)
        sidecar = start(
            "allotment sidecar",
            [
                *cli,
                "sidecar",
                "--db",
                ledger_url,
                "--namespace",
                "default",
                "--listen",
                f"127.0.0.1:{sidecar_port}",
                "--probe-listen",
                "off",
                "--poll-interval",
                "50ms",
            ],
            tmp_path / "sidecar.log",
            tmp_path,
        )
        processes.append(sidecar)
        sidecar_url = f"http://127.0.0.1:{sidecar_port}"
        wait_for_value(sidecar, sidecar_url)
        yield Running(ledger_url, dev_url, sidecar_url)
    finally:
        for process in reversed(processes):
            process.stop()


@pytest.fixture(scope="session")
def node() -> str:
    """Return the ``node`` binary, with the pinned SDKs installed (else fail in CI, or skip)."""
    binary = shutil.which("node")
    if binary is None:
        missing("node is not installed: install Node 20, then run `make contract-deps`")
    modules = CONTRACT_DIR / "node_modules"
    absent = [p for p in NODE_PACKAGES if not (modules / p / "package.json").exists()]
    if absent:
        missing(
            f"the pinned OpenMeter SDKs are not installed ({', '.join(absent)} missing in "
            f"{modules}): run `make contract-deps`"
        )
    assert binary is not None
    return binary


def run_node(node: str, script: str, *args: str) -> Any:
    """Run ``script`` of this folder with ``node`` and return the JSON it printed."""
    done = subprocess.run(
        [node, str(CONTRACT_DIR / script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=CONTRACT_DIR,
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])
