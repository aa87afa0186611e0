"""Plans and Subscriptions: their CRDs' rules, and ``allotment dev`` serving example 08.

Their CRDs' conventions are checked with every other kind's in ``test_crds.py``.

The dev cases run a real ``allotment dev`` over a copy of ``examples/`` and ask its sidecar API
over HTTP, as the example's README does.
"""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from allotment.cli.admission import cel_violations
from allotment.cli.dev import DevLoop
from allotment.cli.manifests import load_crds
from allotment.cli.plan_build import FixedClock
from allotment.ledger import apply as apply_module
from allotment.ledger.storage import migrate
from allotment.ledger.storage.engine import open_ledger

from .cli import REPO
from .test_dev import Dev, start_dev

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def _subscription(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "allotment.dev/v1alpha1",
        "kind": "Subscription",
        "metadata": {"name": "s"},
        "spec": {"planKey": "pro", **spec},
    }


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        pytest.param(None, _subscription(), "set exactly one of customer or subject", id="none"),
        pytest.param(
            _subscription(customer="a"),
            _subscription(customer="b"),
            "customer is immutable",
            id="customer-immutable",
        ),
        pytest.param(
            _subscription(customer="a"),
            _subscription(customer="a", activeFrom="2026-01-01T00:00:00Z"),
            "activeFrom can only be set at creation",
            id="active-from-at-creation",
        ),
        pytest.param(
            None,
            {
                "apiVersion": "allotment.dev/v1alpha1",
                "kind": "Plan",
                "metadata": {"name": "p"},
                "spec": {"features": [{"featureKey": "f", "type": "metered"}]},
            },
            "usagePeriod is required for metered features",
            id="plan-metered-period",
        ),
    ],
)
def test_cel_refuses_with_a_message_naming_the_fix(
    old: dict[str, Any] | None, new: dict[str, Any], message: str
) -> None:
    crd = load_crds()[(new["apiVersion"], new["kind"])]
    found = [v.message for v in cel_violations(new, crd.schema, old)]
    assert any(message in text for text in found), found


# --- allotment dev over example 08 -----------------------------------------------------------


@pytest.fixture
def examples_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "examples"
    shutil.copytree(REPO / "examples", copy)
    return copy


@pytest.fixture
def dev(examples_copy: Path) -> Iterator[Dev]:
    yield from start_dev(examples_copy)


def _access(dev: Dev, customer: str) -> dict[str, Any]:
    body = dev.get(f"/api/v1/customers/{customer}/access")
    entitlements: dict[str, Any] = body["entitlements"]  # type: ignore[assignment]
    return entitlements


def test_dev_serves_each_subscriber_its_plan(dev: Dev) -> None:
    assert not [line for line in dev.lines if line.startswith(("Waiting ", "Refused "))]
    acme = _access(dev, "acme-corp")
    assert acme["ai_requests"]["balance"] == 1000 and acme["priority_support"]["hasAccess"]
    assert _access(dev, "globex")["ai_requests"]["balance"] == 1500  # with the top-up
    hooli = _access(dev, "hooli")
    assert hooli["ai_requests"]["balance"] == 100 and "priority_support" not in hooli


def test_an_immediate_plan_edit_reaches_the_subscriber_without_touching_it(
    dev: Dev, examples_copy: Path
) -> None:
    plans = examples_copy / "08-plans" / "plans.yaml"
    plans.write_text(plans.read_text().replace("issueAfterReset: 100", "issueAfterReset: 300"))
    line = dev.wait_for_line("Amended Plan default/starter")
    assert "rolled out to 1 of 1 subscriptions" in line
    _wait(lambda: _access(dev, "hooli")["ai_requests"]["balance"] == 300)


def test_removing_a_subscription_with_policy_apply_ends_its_access(
    dev: Dev, examples_copy: Path
) -> None:
    subscriptions = examples_copy / "08-plans" / "subscriptions.yaml"
    documents = [d for d in yaml.safe_load_all(subscriptions.read_text()) if d]
    kept = [d for d in documents if d["metadata"]["name"] != "globex-pro"]
    subscriptions.write_text(yaml.safe_dump_all(kept))
    dev.wait_for_line("Orphaned Subscription default/globex-pro")
    _wait(lambda: not _access(dev, "globex").get("priority_support", {}).get("hasAccess"))
    assert _access(dev, "acme-corp")["priority_support"]["hasAccess"]


def _wait(condition: Any, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("the sidecar's answer did not change in time")


def test_dev_rolls_a_plan_edit_out_a_chunk_per_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(apply_module, "ROLLOUT_CHUNK", 1)
    folder = tmp_path / "08-plans"
    shutil.copytree(REPO / "examples" / "08-plans", folder)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate.upgrade(url)
    ledger = open_ledger(url)
    out = io.StringIO()
    try:
        loop = DevLoop([folder], ledger, FixedClock(NOW), out)
        loop.sync()
        plans = folder / "plans.yaml"
        plans.write_text(
            plans.read_text().replace("issueAfterReset: 1000\n", "issueAfterReset: 2000\n")
        )
        loop.sync()
        plan = loop.tracked[("Plan", "default", "pro")]
        assert plan.outcome is not None and plan.outcome.reason == "RollingOut"
        reached = [plan.outcome.status["rollout"]["done"]]
        while not plan.outcome.ready and len(reached) < 10:
            loop.reconcile(NOW)
            reached.append(plan.outcome.status["rollout"]["done"])
    finally:
        ledger.dispose()
    assert reached[-1] == 2 and reached == sorted(reached)  # acme-corp-pro and globex-pro
    assert "Rolled out Plan default/pro generation 2: rolled out to 2 of 2 subscriptions" in (
        out.getvalue()
    )


def test_a_next_period_edit_reaches_the_subscriber_at_its_boundary_with_time_pinned(
    dev: Dev, examples_copy: Path
) -> None:
    plans = examples_copy / "08-plans" / "plans.yaml"
    plans.write_text(plans.read_text().replace("issueAfterReset: 1000", "issueAfterReset: 2000"))
    dev.wait_for_line("Amended Plan default/pro")
    entitlement = dev.get("/api/v2/customers/acme-corp/entitlements/ai_requests")
    boundary = datetime.fromisoformat(str(entitlement["currentUsagePeriod"]["to"]))  # type: ignore[index]
    value = "/api/v1/customers/acme-corp/entitlements/ai_requests/value"

    def balance_at(instant: datetime) -> object:
        stamp = instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return dev.get(f"{value}?time={stamp}")["balance"]

    # the next period's amount, from the recorded timeline: no ledger write at the boundary
    _wait(lambda: balance_at(boundary + timedelta(minutes=1)) == 2000)
    assert dev.get(value)["balance"] == 1000  # NextPeriod: the current period keeps its amount
    assert balance_at(boundary - timedelta(minutes=1)) == 1000
