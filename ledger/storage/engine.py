"""Opening a ledger: engines for SQLite and PostgreSQL, and the schema revision check.

Role: turn a ``--db`` URL into a ``Ledger`` holding a reader and a writer engine. On SQLite
(DESIGN D14) every connection runs in WAL mode with a busy timeout and foreign keys on, writers
begin with ``BEGIN IMMEDIATE``, and a process has exactly one writer connection. On PostgreSQL
the two engines are one. Opening refuses a database whose schema revision is not this code's,
telling the user to run ``allotment migrate --db URL`` (D11).

It must not create or alter tables: ``allotment.ledger.storage.migrate`` is the only migrator.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

SQLITE_BUSY_TIMEOUT_MS = 30_000


class SchemaMismatchError(RuntimeError):
    """The database's schema revision is not the one this code was built for."""


def normalize_url(url: str) -> str:
    """Return ``url`` with the driver this project uses (psycopg 3 for PostgreSQL)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif parsed.drivername == "sqlite+pysqlite":
        parsed = parsed.set(drivername="sqlite")
    return parsed.render_as_string(hide_password=False)


def alembic_config() -> Config:
    """Return the Alembic configuration shipped with the package."""
    ini = resources.files("allotment.ledger.storage").joinpath("alembic.ini")
    return Config(str(ini))


def head_revision() -> str:
    """Return the schema revision this code expects."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError("the ledger migrations have no head revision")
    return head


def current_revision(connection: Connection) -> str | None:
    """Return the schema revision recorded in the database, or None when it has none."""
    return MigrationContext.configure(connection).get_current_revision()


def _sqlite_engine(url: str, *, immediate: bool, pool_size: int) -> Engine:
    engine = create_engine(url, pool_size=pool_size, max_overflow=0, pool_timeout=60)

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


@dataclass(frozen=True)
class Ledger:
    """An open ledger: where to read, where to write, and which database it is."""

    url: str
    reader: Engine
    writer: Engine

    @property
    def dialect(self) -> str:
        """Return ``sqlite`` or ``postgresql``."""
        return self.writer.dialect.name

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """Yield a connection in a write transaction, committed when the block succeeds."""
        with self.writer.begin() as connection:
            yield connection

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """Yield a connection in a read transaction (one consistent snapshot)."""
        with self.reader.connect() as connection:
            if self.dialect == "postgresql":
                connection = connection.execution_options(isolation_level="REPEATABLE READ")
            with connection.begin():
                yield connection

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.reader.dispose()
        if self.writer is not self.reader:
            self.writer.dispose()


def create_ledger(url: str, *, reader_pool_size: int = 5) -> Ledger:
    """Return a ``Ledger`` for ``url`` without checking its schema (for the migrator)."""
    normalized = normalize_url(url)
    if make_url(normalized).get_backend_name() == "sqlite":
        writer = _sqlite_engine(normalized, immediate=True, pool_size=1)
        reader = _sqlite_engine(normalized, immediate=False, pool_size=reader_pool_size)
        return Ledger(url=normalized, reader=reader, writer=writer)
    engine = create_engine(normalized, pool_size=reader_pool_size, pool_pre_ping=True)
    return Ledger(url=normalized, reader=engine, writer=engine)


def check_schema(ledger: Ledger) -> None:
    """Raise ``SchemaMismatchError`` unless the database is at this code's schema revision."""
    expected = head_revision()
    with ledger.reader.connect() as connection:
        found = current_revision(connection)
    if found != expected:
        shown = "no allotment schema" if found is None else f"schema revision {found}"
        raise SchemaMismatchError(
            f"the ledger at {make_url(ledger.url).render_as_string(hide_password=True)} has "
            f"{shown}, this allotment expects revision {expected}: "
            f"run `allotment migrate --db URL` with this version of allotment first"
        )


def open_ledger(url: str, *, reader_pool_size: int = 5) -> Ledger:
    """Open the ledger at ``url``, refusing a schema revision other than this code's."""
    ledger = create_ledger(url, reader_pool_size=reader_pool_size)
    try:
        check_schema(ledger)
    except BaseException:
        ledger.dispose()
        raise
    return ledger
