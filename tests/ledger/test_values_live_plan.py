"""``allotment plan --db URL`` on both databases: live values and usage, the ledger never written."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.exc import DBAPIError

from allotment.cli import plan
from allotment.cli.dev import DevLoop
from allotment.cli.plan_build import FixedClock
from allotment.cli.plan_db import read_only, shown_url
from allotment.ledger.storage import usage
from allotment.ledger.storage.engine import Ledger
from allotment.ledger.storage.schema import Base, ResourceRow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
GPT4 = "01-gpt-4-tokens"
APPLIED_AT = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
NOW = "2026-11-24T12:00:00Z"

TRIAL = """\
apiVersion: allotment.dev/v1alpha1
kind: Grant
metadata:
  name: customer-1-gpt-4-tokens-trial
spec:
  entitlement: customer-1-gpt-4-tokens
  amount: 250000
  priority: 0
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


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path]:
    """The catalogue as applied (examples plus a trial grant) and the branch changing it."""
    base = tmp_path / "base"
    shutil.copytree(EXAMPLES, base)
    (base / GPT4 / "trial.yaml").write_text(TRIAL)
    head = tmp_path / "head"
    shutil.copytree(base, head)
    (head / GPT4 / "top-up.yaml").write_text(TOP_UP)
    entitlement = head / GPT4 / "entitlement.yaml"
    entitlement.write_text(
        entitlement.read_text().replace("issueAfterReset: 1000000", "issueAfterReset: 2000000")
    )
    (head / GPT4 / "trial.yaml").unlink()
    return base, head


@pytest.fixture
def live(ledger: Ledger, trees: tuple[Path, Path]) -> Ledger:
    """A ledger holding the base catalogue, applied four days ago, and 1000 gpt-4 tokens used."""
    loop = DevLoop([trees[0]], ledger, FixedClock(APPLIED_AT), io.StringIO())
    loop.sync()
    assert all(t.outcome is not None and t.outcome.ready for t in loop.tracked.values())
    lines = (EXAMPLES / GPT4 / "usage.ndjson").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    with ledger.write() as connection:
        usage.ingest(
            connection,
            "default",
            [
                usage.IncomingEvent(
                    e["id"],
                    e["source"],
                    e["type"],
                    e["subject"],
                    APPLIED_AT + timedelta(hours=n),
                    e["data"],
                )
                for n, e in enumerate(events, start=1)
            ],
            received_at=APPLIED_AT + timedelta(hours=5),
        )
    return ledger


def _dump(ledger: Ledger) -> dict[str, list[tuple[Any, ...]]]:
    """Return every row of every ledger table, to prove the plan wrote nothing."""
    with ledger.read() as connection:
        return {
            table.name: sorted(
                (tuple(str(v) for v in row) for row in connection.execute(select(table))),
            )
            for table in Base.metadata.sorted_tables
        }


def run_plan(*argv: str | Path) -> tuple[int, dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="allotment")
    plan.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["plan", *(str(item) for item in argv), "--format", "json"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = args.handler(args)
    return code, json.loads(out.getvalue())


def _customer_1(body: dict[str, Any]) -> dict[str, Any]:
    found: list[dict[str, Any]] = [e for e in body["entitlements"] if e["customer"] == "customer-1"]
    assert len(found) == 1
    return found[0]


def test_plan_reads_live_usage_and_never_writes(live: Ledger, trees: tuple[Path, Path]) -> None:
    base, head = trees
    before = _dump(live)
    code, body = run_plan("--db", live.url, "--current", base, "--desired", head, "--now", NOW)
    assert code == 0
    assert _dump(live) == before
    assert body["usage"].startswith(
        f"from the ledger at {shown_url(live.url)}, read with a read-only transaction"
    )
    # Only what the branch changes is planned: every other example is held as written.
    assert sorted((r["kind"], r["name"], r["change"]) for r in body["resources"]) == [
        ("Entitlement", "customer-1-gpt-4-tokens", "change"),
        ("Grant", "customer-1-gpt-4-tokens-top-up", "create"),
        ("Grant", "customer-1-gpt-4-tokens-trial", "delete"),
    ]
    value = _customer_1(body)
    # The 1000 tokens burnt the trial first (priority 0); voiding it takes its 249000 left.
    assert value["before"] == {
        "hasAccess": True,
        "balance": 1249000,
        "usage": 1000,
        "overage": 0,
        "totalAvailableGrantAmount": 1250000,
    }
    assert value["after"] == {
        "hasAccess": True,
        "balance": 1500000,
        "usage": 1000,
        "overage": 0,
        "totalAvailableGrantAmount": 1501000,
    }
    grants = {
        g["name"]: (g["change"], g["balanceBefore"], g["balanceAfter"]) for g in value["grants"]
    }
    assert grants == {
        "customer-1-gpt-4-tokens-trial": ("voided", 249000, None),
        "customer-1-gpt-4-tokens-top-up": ("new", None, 500000),
    }


def test_without_current_nothing_is_deleted(live: Ledger, trees: tuple[Path, Path]) -> None:
    _, head = trees
    code, body = run_plan("--db", live.url, "--desired", head, "--now", NOW)
    assert code == 0
    assert [r["name"] for r in body["resources"] if r["change"] == "delete"] == []
    assert any(note.startswith("deletions: not planned") for note in body["notes"])
    fields = {
        f["path"]: (f["before"], f["after"])
        for r in body["resources"]
        for f in r["fields"]
        if r["name"] == "customer-1-gpt-4-tokens"
    }
    assert fields == {"spec.issueAfterReset": (1000000, 2000000)}
    assert _customer_1(body)["after"]["balance"] == 1749000


def test_the_plans_connection_cannot_write(live: Ledger) -> None:
    table = ResourceRow.__table__
    row = {
        "id": "X" * 26,
        "namespace": "default",
        "kind": "Meter",
        "name": "x",
        "created_at": APPLIED_AT,
    }
    with pytest.raises(DBAPIError) as refused, read_only(live.url) as connection:
        connection.execute(insert(table).values(**row))  # type: ignore[arg-type]
    # PostgreSQL: "cannot execute INSERT in a read-only transaction";
    # SQLite: "attempt to write a readonly database".
    assert re.search(r"read-only transaction|readonly database", str(refused.value.orig))


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        pytest.param(
            "postgresql://plan:s3cret@db.example:5432/ledger",
            "postgresql+psycopg://plan:***@db.example:5432/ledger",
            id="postgresql-password-hidden",
        ),
        pytest.param("sqlite:////var/lib/ledger.db", "sqlite:////var/lib/ledger.db", id="sqlite"),
    ],
)
def test_the_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert shown_url(url) == shown


def test_a_missing_sqlite_ledger_is_a_usage_error_and_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.db"
    parser = argparse.ArgumentParser(prog="allotment")
    plan.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["plan", "--db", f"sqlite:///{missing}", "--desired", str(tmp_path)])
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert args.handler(args) == 2
    assert f"no SQLite ledger at {missing}" in err.getvalue()
    assert not missing.exists()
