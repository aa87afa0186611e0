"""Suite-wide configuration: the hypothesis profiles and the per-tier summary.

The summary counts executed and skipped tests per tier (the first directory below
``tests/``). Under ``CI=true`` a tier that has test files but executed none fails the run,
so a missing component can never pass as a silent skip; a tier without test files is
reported as ``empty``.
"""

from __future__ import annotations

import importlib.util
import os
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

pytest_plugins = [
    name for name in ("tests.harness.fixtures",) if importlib.util.find_spec(name) is not None
]

TIERS = ("core", "ledger", "operator", "sidecar", "contract", "crds", "e2e")
TESTS_DIR = Path(__file__).parent

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=200,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

_outcomes: dict[str, Counter[str]] = {tier: Counter() for tier in TIERS}


def _tier_of(nodeid: str) -> str | None:
    parts = nodeid.split("/")
    if len(parts) > 2 and parts[0] == "tests" and parts[1] in TIERS:
        return parts[1]
    return None


def _has_test_files(tier: str) -> bool:
    return any((TESTS_DIR / tier).rglob("test_*.py"))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    tier = _tier_of(report.nodeid)
    if tier is None:
        return
    if report.when == "call":
        _outcomes[tier][report.outcome] += 1
    elif report.outcome == "skipped":
        _outcomes[tier]["skipped"] += 1
    elif report.outcome == "failed":
        _outcomes[tier]["error"] += 1


def _empty_tiers_with_files(session: pytest.Session) -> list[str]:
    selected = {_tier_of(item.nodeid) for item in session.items}
    return [
        tier
        for tier in TIERS
        if tier in selected
        and _has_test_files(tier)
        and _outcomes[tier]["passed"] + _outcomes[tier]["failed"] == 0
    ]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    session = terminalreporter._session  # type: ignore[attr-defined]
    selected = {_tier_of(item.nodeid) for item in session.items}
    terminalreporter.section("tiers")
    for tier in TIERS:
        counts = _outcomes[tier]
        if not _has_test_files(tier):
            line = "empty"
        elif tier not in selected:
            line = "not selected"
        else:
            executed = counts["passed"] + counts["failed"]
            line = (
                f"executed {executed} (passed {counts['passed']}, failed {counts['failed']}), "
                f"skipped {counts['skipped']}, errors {counts['error']}"
            )
        terminalreporter.write_line(f"{tier:<9} {line}")
    if os.environ.get("CI") == "true":
        for tier in _empty_tiers_with_files(session):
            terminalreporter.write_line(
                f"FAIL: tier {tier!r} has test files but executed none under CI=true", red=True
            )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI") == "true" and _empty_tiers_with_files(session) and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
