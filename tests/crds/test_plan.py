"""``allotment plan --current DIR``: a reviewed change to the examples, planned before it lands."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from allotment.cli import plan
from allotment.cli.admission import admit
from allotment.cli.manifests import Document, load_crds, manifest_files, read_documents
from tests.crds.cli import run_validate

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
NOW = "2026-11-24T12:00:00Z"
GPT4 = "01-gpt-4-tokens"

TRIAL = """\
# A trial for customer-1: deleting its file voids it (deletionPolicy Apply).
apiVersion: allotment.dev/v1alpha1
kind: Grant
metadata:
  name: customer-1-gpt-4-tokens-trial
spec:
  entitlement: customer-1-gpt-4-tokens
  amount: 250000
  deletionPolicy: Apply
"""

TOP_UP = """\
apiVersion: allotment.dev/v1alpha1
kind: Grant
metadata:
  name: customer-1-gpt-4-tokens-top-up
spec:
  entitlement: customer-1-gpt-4-tokens
  amount: 500000
"""


@dataclass(frozen=True)
class Run:
    """The exit code, standard output and standard error of one run."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        """The output parsed as JSON (``--format json``)."""
        return json.loads(self.out)


def run_plan(*argv: str | Path) -> Run:
    """Parse ``allotment plan ARGV`` with the subcommand's parser and run its handler."""
    parser = argparse.ArgumentParser(prog="allotment")
    plan.register(parser.add_subparsers(dest="command"))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            args = parser.parse_args(["plan", *(str(item) for item in argv)])
            code = args.handler(args)
        except SystemExit as exit_:
            code = int(exit_.code or 0)
    return Run(code, out.getvalue(), err.getvalue())


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """The catalogue as applied now: the examples plus customer-1's trial grant."""
    tree = tmp_path / "base"
    shutil.copytree(EXAMPLES, tree)
    (tree / GPT4 / "trial.yaml").write_text(TRIAL)
    return tree


def _branch(base: Path, change: Callable[[Path], None]) -> Path:
    head = base.parent / "head"
    shutil.copytree(base, head)
    change(head)
    return head


def change_customer_1(head: Path) -> None:
    """Add a grant of 500000, raise issueAfterReset to 2000000, delete the Apply grant."""
    (head / GPT4 / "top-up.yaml").write_text(TOP_UP)
    entitlement = head / GPT4 / "entitlement.yaml"
    text = entitlement.read_text()
    assert "issueAfterReset: 1000000" in text
    entitlement.write_text(text.replace("issueAfterReset: 1000000", "issueAfterReset: 2000000"))
    (head / GPT4 / "trial.yaml").unlink()


def _value_line(out: str, name: str) -> tuple[str, str]:
    """Return (before, after) of a value line in the customer-1 / gpt_4_tokens block."""
    block = out.split("customer-1 / gpt_4_tokens:", 1)[1]
    found = re.search(rf"^\s+{name}\s+(\S+) -> (\S+)", block, re.MULTILINE)
    assert found is not None, f"no {name} line in:\n{block}"
    return found.group(1), found.group(2)


def test_text_plan_shows_the_grants_and_values_before_and_after(base: Path) -> None:
    head = _branch(base, change_customer_1)
    run = run_plan("--current", base, "--desired", head, "--now", NOW)
    assert run.code == 0, run.out + run.err
    lines = run.out.splitlines()
    assert "usage: none (--current DIR has no usage; values assume zero usage)" in lines
    # D4: the new issueAfterReset applies from the next period boundary; the value now stays.
    assert (
        "      spec.issueAfterReset: 1000000 -> 2000000 (from the next period boundary, "
        "2026-12-24T12:00:00Z; the current period keeps the old value)"
    ) in lines
    assert "  Grant default/customer-1-gpt-4-tokens-top-up: create" in lines
    assert (
        "  Grant default/customer-1-gpt-4-tokens-trial: delete: voided at 2026-11-24T12:00:00Z "
        "(deletionPolicy Apply): its unused balance is gone"
    ) in lines
    assert _value_line(run.out, "hasAccess") == ("true", "true")
    assert _value_line(run.out, "balance") == ("1250000", "1500000")
    assert _value_line(run.out, "usage") == ("0", "0")
    assert _value_line(run.out, "overage") == ("0", "0")
    assert _value_line(run.out, "totalAvailableGrantAmount") == ("1250000", "1500000")
    assert lines[-1] == (
        "plan: 1 to create, 1 to change, 1 to delete (voided); 1 entitlement value changes"
    )


def test_json_plan_carries_the_same_numbers(base: Path) -> None:
    head = _branch(base, change_customer_1)
    document = run_plan("--current", base, "--desired", head, "--now", NOW, "--format", "json")
    assert document.code == 0, document.out + document.err
    body = document.json()
    assert body["now"] == NOW
    assert body["usage"].startswith("none (--current DIR has no usage")
    changes = {(r["kind"], r["name"]): r for r in body["resources"]}
    assert set(changes) == {
        ("Entitlement", "customer-1-gpt-4-tokens"),
        ("Grant", "customer-1-gpt-4-tokens-top-up"),
        ("Grant", "customer-1-gpt-4-tokens-trial"),
    }
    entitlement = changes[("Entitlement", "customer-1-gpt-4-tokens")]
    assert entitlement["change"] == "change"
    assert [(f["path"], f["before"], f["after"]) for f in entitlement["fields"]] == [
        ("spec.issueAfterReset", 1000000, 2000000)
    ]
    trial = changes[("Grant", "customer-1-gpt-4-tokens-trial")]
    assert trial["change"] == "delete"
    assert trial["deletion"]["policy"] == "Apply"
    assert trial["deletion"]["effect"] == "voided"
    assert trial["deletion"]["at"] == NOW
    assert changes[("Grant", "customer-1-gpt-4-tokens-top-up")]["result"] == "Record"
    [value] = [e for e in body["entitlements"] if e["customer"] == "customer-1"]
    assert value["feature"] == "gpt_4_tokens"
    assert value["before"] == {
        "hasAccess": True,
        "balance": 1250000,
        "usage": 0,
        "overage": 0,
        "totalAvailableGrantAmount": 1250000,
    }
    assert value["after"] == {
        "hasAccess": True,
        "balance": 1500000,
        "usage": 0,
        "overage": 0,
        "totalAvailableGrantAmount": 1500000,
    }
    grants = {(g["name"], g["change"]): g for g in value["grants"]}
    assert grants[("customer-1-gpt-4-tokens-top-up", "new")]["amount"] == 500000
    assert grants[("customer-1-gpt-4-tokens-trial", "voided")]["at"] == NOW
    assert body["summary"] == {
        "create": 1,
        "change": 1,
        "delete": 1,
        "orphaned": 0,
        "ended": 0,
        "voided": 1,
        "unchanged": body["summary"]["unchanged"],
        "valueChanges": 1,
        "refused": False,
        "line": "plan: 1 to create, 1 to change, 1 to delete (voided); 1 entitlement value changes",
    }
    assert body["refusals"] == [] and body["orphans"] == []


# --- other changes -----------------------------------------------------------------------------


def _edit(relative: str, old: str, new: str) -> Callable[[Path], None]:
    def change(head: Path) -> None:
        path = head / relative
        text = path.read_text()
        assert old in text, f"{old!r} not in {path}"
        path.write_text(text.replace(old, new, 1))

    return change


def _remove_document(relative: str, name: str) -> Callable[[Path], None]:
    def change(head: Path) -> None:
        path = head / relative
        documents = path.read_text().split("\n---\n")
        kept = [d for d in documents if f"name: {name}\n" not in d]
        assert len(kept) == len(documents) - 1
        path.write_text("\n---\n".join(kept))

    return change


def _add(relative: str, text: str) -> Callable[[Path], None]:
    def change(head: Path) -> None:
        (head / relative).write_text(text)

    return change


SECOND_ENTITLEMENT = """\
apiVersion: allotment.dev/v1alpha1
kind: Entitlement
metadata:
  name: customer-1-gpt-4-tokens-again
spec:
  customer: customer-1
  featureKey: gpt_4_tokens
  type: metered
  usagePeriod:
    interval: MONTH
"""


ORPHAN_GRANT = """\
apiVersion: allotment.dev/v1alpha1
kind: Grant
metadata:
  name: customer-1-typo
spec:
  entitlement: customer-1-gpt-4-tokenz
  amount: 10
"""


@pytest.mark.parametrize(
    ("change", "code", "expected_lines", "summary"),
    [
        pytest.param(
            _add(f"{GPT4}/typo.yaml", ORPHAN_GRANT),
            0,
            [
                "  Grant default/customer-1-typo: create (would wait)",
                "    waits: EntitlementNotFound: entitlement not found customer-1-gpt-4-tokenz",
            ],
            "plan: 1 to create, 0 to change, 0 to delete; 0 entitlement values change; 1 waiting",
            id="missing-entitlement-waits-as-the-operator-waits",
        ),
        pytest.param(
            lambda head: None,
            0,
            [],
            "plan: 0 to create, 0 to change, 0 to delete; 0 entitlement values change",
            id="nothing-changes",
        ),
        pytest.param(
            _edit("03-grants/grants.yaml", "amount: 500\n", "amount: 600\n"),
            1,
            [
                "  Grant default/customer-3-api-calls-promo: change REFUSED",
                "amount is immutable: void this Grant (set voidAt) and create a new one",
            ],
            "plan: 0 to create, 0 to change, 0 to delete; 0 entitlement values change; 1 refused",
            id="immutable-amount-refused-as-the-apiserver-words-it",
        ),
        pytest.param(
            _remove_document("03-grants/grants.yaml", "customer-3-api-calls-pack-0001"),
            0,
            [
                "  Grant default/customer-3-api-calls-pack-0001: delete: orphaned (deletionPolicy "
                "Orphan): the ledger keeps it, its balance stays available",
                "this change removes Grant default/customer-3-api-calls-pack-0001 without "
                "spec.voidAt; the ledger keeps it as it is (deletionPolicy Orphan): deleting it "
                "does not void it",
                "orphans (deleted objects whose ledger records stay):",
            ],
            "plan: 0 to create, 0 to change, 1 to delete (orphaned); 0 entitlement values change",
            id="orphaned-grant-keeps-its-balance",
        ),
        pytest.param(
            _add(f"{GPT4}/again.yaml", SECOND_ENTITLEMENT),
            1,
            [
                "  Entitlement default/customer-1-gpt-4-tokens-again: create REFUSED",
                "already exists for feature gpt_4_tokens and customer customer-1 (Entitlement "
                "default/customer-1-gpt-4-tokens): set activeTo on it, and this one starts when "
                "it ends",
            ],
            "plan: 0 to create, 0 to change, 0 to delete; 0 entitlement values change; 1 refused",
            id="second-entitlement-conflicts-as-the-operator-says",
        ),
        pytest.param(
            _edit(
                f"{GPT4}/entitlement.yaml",
                "  issueAfterReset",
                "  isSoftLimit: true\n  issueAfterReset",
            ),
            0,
            ["      spec.isSoftLimit: - -> true (from 2026-11-24T12:00:00Z)"],
            "plan: 0 to create, 1 to change, 0 to delete; 0 entitlement values change",
            id="soft-limit-from-now",
        ),
    ],
)
def test_plan_reports_each_kind_of_change(
    base: Path,
    change: Callable[[Path], None],
    code: int,
    expected_lines: list[str],
    summary: str,
) -> None:
    head = _branch(base, change)
    run = run_plan("--current", base, "--desired", head, "--now", NOW)
    assert run.code == code, run.out + run.err
    for expected in expected_lines:
        assert expected in run.out, f"{expected!r} not in:\n{run.out}"
    assert run.out.splitlines()[-1] == summary


def test_an_orphaned_grant_leaves_the_value_unchanged(base: Path) -> None:
    head = _branch(
        base, _remove_document("03-grants/grants.yaml", "customer-3-api-calls-pack-0001")
    )
    body = run_plan("--current", base, "--desired", head, "--now", NOW, "--format", "json").json()
    [value] = [e for e in body["entitlements"] if e["customer"] == "customer-3"]
    assert value["before"] == value["after"]
    assert value["before"]["balance"] == 12500
    assert [(g["name"], g["change"]) for g in value["grants"]] == [
        ("customer-3-api-calls-pack-0001", "orphaned")
    ]
    assert body["orphans"] == [
        {"kind": "Grant", "namespace": "default", "name": "customer-3-api-calls-pack-0001"}
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(
            ["--desired", "{base}"], "give --current DIR, --cluster, --db URL", id="no-current"
        ),
        pytest.param(
            ["--current", "{base}", "--desired", "{base}/missing"],
            "no such file or directory",
            id="missing-desired",
        ),
        pytest.param(
            ["--current", "{base}", "--desired", "{base}", "--now", "tomorrow"],
            "--now",
            id="bad-now",
        ),
        pytest.param(["--current", "{base}"], "--desired", id="no-desired"),
    ],
)
def test_usage_errors_exit_2(base: Path, argv: list[str], message: str) -> None:
    run = run_plan(*(item.format(base=base) for item in argv))
    assert run.code == 2
    assert message in run.err


def test_an_admission_refusal_is_worded_as_admission_words_it(base: Path) -> None:
    head = _branch(base, _edit("03-grants/grants.yaml", "amount: 500\n", "amount: 600\n"))
    old, new = (
        next(
            d.body
            for d in read_documents(tree / "03-grants" / "grants.yaml")
            if isinstance(d, Document)
            and d.body["metadata"]["name"] == "customer-3-api-calls-promo"
        )
        for tree in (base, head)
    )
    crd = load_crds()[("allotment.dev/v1alpha1", "Grant")]
    violations, _ = admit(new, crd.schema, old)
    assert violations
    run = run_plan("--current", base, "--desired", head, "--now", NOW, "--format", "json")
    assert run.code == 1
    [refusal] = run.json()["refusals"]
    for violation in violations:
        assert violation.message in refusal["message"]


def test_every_example_plans_as_a_create_from_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    names = {
        (d.body["kind"], d.body["metadata"]["name"])
        for path in manifest_files([EXAMPLES])
        for d in read_documents(path)
        if isinstance(d, Document)
        and str(d.body.get("apiVersion", "")).startswith("allotment.dev/")
    }
    run = run_plan("--current", empty, "--desired", EXAMPLES, "--now", NOW, "--format", "json")
    assert run.code == 0, run.out
    body = run.json()
    assert body["refusals"] == []
    assert {(r["kind"], r["name"]) for r in body["resources"]} == names
    assert {r["change"] for r in body["resources"]} == {"create"}
    customer_1 = [e for e in body["entitlements"] if e["entitlement"] == "customer-1-gpt-4-tokens"]
    assert [(e["before"], e["after"]["balance"]) for e in customer_1] == [(None, 1000000)]


# --- a Plan edit: what each subscriber gets ------------------------------------------------------

PLANS = "08-plans"


def edit_plans(head: Path) -> None:
    """Raise pro's ai_requests 1000 -> 2000 (NextPeriod) and starter's 100 -> 250 (Immediately)."""
    plans = head / PLANS / "plans.yaml"
    text = plans.read_text()
    assert text.count("issueAfterReset: 1000\n") == 1 and text.count("issueAfterReset: 100\n") == 1
    text = text.replace("issueAfterReset: 1000\n", "issueAfterReset: 2000\n")
    plans.write_text(text.replace("issueAfterReset: 100\n", "issueAfterReset: 250\n"))


def _balances(value: dict[str, Any]) -> tuple[Any, ...]:
    nxt = value["nextPeriod"]
    return (
        value["now"]["before"]["balance"],
        value["now"]["after"]["balance"],
        nxt["at"],
        nxt["before"]["balance"],
        nxt["after"]["balance"],
    )


def test_a_plan_edit_plans_each_subscribers_values_now_and_at_its_next_period(base: Path) -> None:
    head = _branch(base, edit_plans)
    run = run_plan("--current", base, "--desired", head, "--now", NOW, "--format", "json")
    assert run.code == 0, run.out + run.err
    rollouts = {r["key"]: r for r in run.json()["rollouts"]}
    pro, starter = rollouts["pro"], rollouts["starter"]
    assert pro["summary"] == (
        "pro: ai_requests monthly 1,000 -> 2,000 from each one's next period; 2 subscriptions"
    )
    assert starter["summary"] == (
        "starter: ai_requests monthly 100 -> 250 at the rollout instant (a grant of the "
        "difference until each one's period ends); 1 subscription"
    )
    # --current takes every object as created at --now: every period starts then
    boundary = "2026-12-24T12:00:00Z"
    assert {(v["subscription"], v["feature"]): _balances(v) for v in pro["values"]} == {
        ("acme-corp-pro", "ai_requests"): (1000, 1000, boundary, 1000, 2000),
        ("globex-pro", "ai_requests"): (1500, 1500, boundary, 1500, 2500),  # its top-up stays
    }
    assert [_balances(v) for v in starter["values"]] == [(100, 250, boundary, 100, 250)]


def test_the_text_plan_of_a_plan_edit_shows_the_summary_and_each_subscriber(base: Path) -> None:
    head = _branch(base, edit_plans)
    run = run_plan("--current", base, "--desired", head, "--now", NOW)
    assert run.code == 0, run.out + run.err
    block = run.out.split("plan rollouts", 1)[1].split("\n\nplan:", 1)[0].splitlines()
    rows = [" ".join(line.split()) for line in block]
    at = f"now {NOW}:"
    assert rows[1:8] == [
        "pro: ai_requests monthly 1,000 -> 2,000 from each one's next period; 2 subscriptions",
        "Subscription default/acme-corp-pro / ai_requests (customer acme-corp)",
        f"{at} balance 1000 -> 1000",
        "next period 2026-12-24T12:00:00Z: balance 1000 -> 2000 (changes)",
        "Subscription default/globex-pro / ai_requests (customer globex)",
        f"{at} balance 1500 -> 1500",
        "next period 2026-12-24T12:00:00Z: balance 1500 -> 2500 (changes)",
    ]
    assert f"{at} balance 100 -> 250 (changes)" in rows


def remove_subscriptions(head: Path) -> None:
    (head / PLANS / "subscriptions.yaml").unlink()


@pytest.mark.parametrize(
    ("name", "words"),
    [
        pytest.param(
            "acme-corp-pro", "deletionPolicy Orphan): deleting it ends nothing", id="orphan"
        ),
        pytest.param("globex-pro", "deletionPolicy Apply will end its entitlements", id="apply"),
    ],
)
def test_removing_a_subscription_warns_in_validate_and_plan(
    base: Path, name: str, words: str
) -> None:
    head = _branch(base, remove_subscriptions)
    validated = run_validate(head / PLANS, "--previous", base / PLANS)
    assert validated.code == 0, validated.out
    warnings = "\n".join(validated.warning_lines)
    assert f"this change removes Subscription default/{name};" in warnings
    assert words in warnings
    planned = run_plan("--current", base, "--desired", head, "--now", NOW, "--format", "json")
    removed = {r["name"]: r for r in planned.json()["resources"] if r["kind"] == "Subscription"}
    [warning] = removed[name]["warnings"]
    assert words in warning
