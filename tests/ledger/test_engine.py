"""Opening a ledger: SQLite as one node (D14), and URLs as users write them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from allotment.ledger.storage.engine import normalize_url, open_ledger


@pytest.mark.parametrize(
    ("pragma", "expected"),
    [
        pytest.param("journal_mode", "wal", id="wal"),
        pytest.param("busy_timeout", 30000, id="busy-timeout"),
        pytest.param("foreign_keys", 1, id="foreign-keys"),
    ],
)
def test_every_sqlite_connection_is_configured(
    migrated_sqlite_template: Path, tmp_path: Path, pragma: str, expected: object
) -> None:
    path = tmp_path / "ledger.db"
    path.write_bytes(migrated_sqlite_template.read_bytes())
    ledger = open_ledger(f"sqlite:///{path}")
    try:
        for engine in (ledger.reader, ledger.writer):
            with engine.connect() as conn:
                assert conn.exec_driver_sql(f"PRAGMA {pragma}").scalar_one() == expected
    finally:
        ledger.dispose()


def test_a_sqlite_writer_holds_the_write_lock_from_begin(
    migrated_sqlite_template: Path, tmp_path: Path
) -> None:
    path = tmp_path / "ledger.db"
    path.write_bytes(migrated_sqlite_template.read_bytes())
    ledger = open_ledger(f"sqlite:///{path}")
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        with ledger.write() as conn:
            conn.execute(sa.text("SELECT 1"))  # no write yet: the lock is already held
            with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
    finally:
        other.close()
        ledger.dispose()


@pytest.mark.parametrize(
    ("given", "used"),
    [
        pytest.param("postgresql://u@h/db", "postgresql+psycopg://u@h/db", id="postgresql"),
        pytest.param("postgres://u:p@h:5/db", "postgresql+psycopg://u:p@h:5/db", id="postgres"),
        pytest.param("sqlite:///a/b.db", "sqlite:///a/b.db", id="sqlite"),
        pytest.param("sqlite+pysqlite:///a.db", "sqlite:///a.db", id="pysqlite"),
    ],
)
def test_urls_get_this_projects_drivers(given: str, used: str) -> None:
    assert normalize_url(given) == used
