"""``allotment dev`` over the examples, as a user runs it: a real process, real HTTP, real files."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
NOW = "2026-11-24T12:00:00Z"
SEED_VALUE = "/api/v1/subjects/customer-1/entitlements/gpt_4_tokens/value"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Dev:
    """A running ``allotment dev`` and the lines it printed."""

    process: subprocess.Popen[str]
    port: int
    lines: list[str] = field(default_factory=list)

    def get(self, path: str) -> dict[str, object]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as answer:
            body: dict[str, object] = json.loads(answer.read())
            return body

    def wait_for_line(self, fragment: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if fragment in line:
                    return line
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(
            f"dev never printed {fragment!r}; it printed:\n" + "\n".join(self.lines)
        )

    def wait_for_value(self, path: str, key: str, expected: object, timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        seen: object = None
        while time.monotonic() < deadline:
            seen = self.get(path).get(key)
            if seen == expected:
                return
            time.sleep(0.05)
        raise AssertionError(f"{path} {key} stayed {seen!r}, expected {expected!r}")


def start_dev(*paths: Path) -> Iterator[Dev]:
    port = free_port()
    command = [sys.executable, "-m", "allotment.cli.main", "dev", *map(str, paths)]
    command += ["--now", NOW, "--listen", f"127.0.0.1:{port}"]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    dev = Dev(process, port)
    assert process.stdout is not None
    stream = process.stdout
    reader = threading.Thread(target=lambda: dev.lines.extend(iter(stream.readline, "")))
    reader.start()
    try:
        dev.wait_for_line("Serving namespace default")
        yield dev
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout=5)


@pytest.fixture
def examples_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "examples"
    shutil.copytree(EXAMPLES, copy)
    return copy


@pytest.fixture
def dev(examples_copy: Path) -> Iterator[Dev]:
    yield from start_dev(examples_copy)


def test_the_seed_walkthrough_answers_a_full_monthly_allowance(dev: Dev) -> None:
    assert dev.get(SEED_VALUE) == {
        "hasAccess": True,
        "balance": 1000000,
        "usage": 0,
        "overage": 0,
        "totalAvailableGrantAmount": 1000000,
    }


def test_every_example_resource_is_recorded_and_nothing_waits(dev: Dev) -> None:
    recorded = [line for line in dev.lines if line.startswith("Recorded ")]
    documents = subprocess.run(
        [sys.executable, "-m", "allotment.cli.main", "validate", str(EXAMPLES)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert documents.returncode == 0, documents.stdout + documents.stderr
    assert not [line for line in dev.lines if line.startswith(("Waiting ", "Refused "))]
    assert "Recorded Entitlement default/customer-1-gpt-4-tokens" in "\n".join(recorded)
    assert "Recorded Grant default/customer-3-api-calls-promo" in "\n".join(recorded)


def test_a_new_grant_file_changes_the_answer_and_an_amount_edit_is_refused(
    dev: Dev, examples_copy: Path
) -> None:
    grant = examples_copy / "01-gpt-4-tokens" / "bonus.yaml"
    grant.write_text(
        "apiVersion: allotment.dev/v1alpha1\n"
        "kind: Grant\n"
        "metadata:\n"
        "  name: customer-1-bonus\n"
        "spec:\n"
        "  entitlement: customer-1-gpt-4-tokens\n"
        "  amount: 500000\n"
    )
    dev.wait_for_line("Recorded Grant default/customer-1-bonus")
    dev.wait_for_value(SEED_VALUE, "balance", 1500000, timeout=1)

    grant.write_text(grant.read_text().replace("500000", "900000"))
    refused = dev.wait_for_line("Refused Grant default/customer-1-bonus")
    assert "amount is immutable: void this Grant (set voidAt) and create a new one" in refused
    dev.wait_for_line("Grant default/customer-1-bonus stays as it was applied")
    assert dev.get(SEED_VALUE)["balance"] == 1500000


def test_removing_a_grant_file_orphans_it_and_moves_no_money(dev: Dev, examples_copy: Path) -> None:
    grant = examples_copy / "01-gpt-4-tokens" / "bonus.yaml"
    grant.write_text(
        "apiVersion: allotment.dev/v1alpha1\nkind: Grant\nmetadata:\n  name: customer-1-bonus\n"
        "spec:\n  entitlement: customer-1-gpt-4-tokens\n  amount: 1000\n"
    )
    dev.wait_for_value(SEED_VALUE, "balance", 1001000)
    grant.unlink()
    dev.wait_for_line("Orphaned Grant default/customer-1-bonus")
    assert dev.get(SEED_VALUE)["balance"] == 1001000


def readme_answers() -> list[tuple[str, str, dict[str, object]]]:
    """Return (example, path, expected body) for each README answer given before any usage.

    A README shows ``curl -s http://127.0.0.1:8888<path>`` followed by ``# <json>``; answers
    after the first POST of usage depend on the usage posted and are left out, as are bodies
    abbreviated with ``...`` or placeholders (not JSON).
    """
    found = []
    for readme in sorted(EXAMPLES.glob("*/README.md")):
        lines = readme.read_text().splitlines()
        for number, line in enumerate(lines):
            if "/api/v1/events" in line:
                break
            match = re.search(r"curl -s \"?http://127\.0\.0\.1:8888(/[^\" $]+)\"?\s*$", line)
            if match is None or number + 1 >= len(lines):
                continue
            comment = lines[number + 1].removeprefix("# ")
            try:
                body = json.loads(comment)
            except json.JSONDecodeError:
                continue
            found.append((readme.parent.name, match.group(1), body))
    return found


@pytest.fixture(scope="module")
def examples_dev() -> Iterator[Dev]:
    yield from start_dev(EXAMPLES)


@pytest.mark.parametrize(
    ("example", "path", "expected"),
    [pytest.param(*answer, id=f"{answer[0]}:{answer[1]}") for answer in readme_answers()],
)
def test_each_example_readme_answer_is_what_dev_serves(
    examples_dev: Dev, example: str, path: str, expected: dict[str, object]
) -> None:
    assert examples_dev.get(path) == expected


def test_the_readmes_give_answers_to_check() -> None:
    examples = {example for example, _, _ in readme_answers()}
    assert {"01-gpt-4-tokens", "02-boolean-and-static", "06-end-and-void"} <= examples
