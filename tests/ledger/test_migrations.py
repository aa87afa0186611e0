"""Migrations: upgrade to head, then prove the models and the migrated database agree."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from allotment.ledger.storage import migrate
from allotment.ledger.storage.engine import (
    SchemaMismatchError,
    create_ledger,
    head_revision,
    open_ledger,
)


def test_upgrade_head_then_check_finds_no_difference(ledger_url: str) -> None:
    assert migrate.upgrade(ledger_url) == head_revision()
    migrate.check(ledger_url)


def test_upgrade_twice_is_a_no_op(ledger_url: str) -> None:
    migrate.upgrade(ledger_url)
    assert migrate.upgrade(ledger_url) == head_revision()


def test_opening_an_unmigrated_ledger_names_the_command_to_run(ledger_url: str) -> None:
    with pytest.raises(SchemaMismatchError, match=r"run `allotment migrate --db URL`"):
        open_ledger(ledger_url)


def test_opening_a_ledger_at_another_revision_is_refused(ledger_url: str) -> None:
    migrate.upgrade(ledger_url)
    ledger = create_ledger(ledger_url)
    with ledger.write() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = 'future'"))
    ledger.dispose()
    with pytest.raises(SchemaMismatchError, match="schema revision future"):
        open_ledger(ledger_url)


def test_a_migrated_ledger_opens(ledger_url: str) -> None:
    migrate.upgrade(ledger_url)
    ledger = open_ledger(ledger_url)
    try:
        with ledger.read() as connection:
            epoch = connection.execute(sa.text("SELECT epoch FROM ledger_state")).scalar_one()
        assert len(epoch) == 26
    finally:
        ledger.dispose()


def test_allotment_migrate_is_what_makes_a_ledger_openable(
    ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from allotment.cli.main import main

    assert main(["migrate", "--db", ledger_url]) == 0
    assert f"schema revision {head_revision()}" in capsys.readouterr().out
    open_ledger(ledger_url).dispose()


def test_allotment_migrate_rotate_epoch_makes_readers_reload(
    ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from allotment.cli.main import main
    from allotment.ledger.storage import feed

    assert main(["migrate", "--db", ledger_url]) == 0
    ledger = open_ledger(ledger_url)
    try:
        with ledger.read() as connection:
            before = feed.ledger_epoch(connection)
        assert main(["migrate", "--db", ledger_url, "--rotate-epoch"]) == 0
        with ledger.read() as connection:
            after = feed.ledger_epoch(connection)
    finally:
        ledger.dispose()
    assert after != before
    assert f"new epoch {after}" in capsys.readouterr().out


def test_the_migrations_form_one_line_of_history() -> None:
    from alembic.script import ScriptDirectory

    from allotment.ledger.storage.engine import alembic_config

    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_heads() == [head_revision()]
    assert [r.revision for r in script.walk_revisions()][-1] == "0001"
