"""Pytest fixtures for the real databases.

Role: ``postgres_url`` (session) starts one real PostgreSQL server for the run, or uses
``ALLOTMENT_TEST_DATABASE_URL``; when neither is possible it skips loudly saying what to install,
and fails when ``CI=true`` (a missing component is a failure in CI). ``ledger_url`` (function) is
parametrized over ``sqlite`` (a file in the test's temporary folder) and ``postgresql`` (a fresh
database created on the session server and dropped afterwards), so every storage test that takes
it runs on both databases. ``migrated_ledger_url`` is the same, already at the schema head: a
copy of a database migrated once per session (``CREATE DATABASE ... TEMPLATE`` on PostgreSQL, a
file copy on SQLite), so tests that need a ledger do not each pay for the migrations.

It must not hand two tests the same database, or leave databases behind on a user's server.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.harness.postgres import PostgresUnavailable, running_postgres, server_url


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _libpq_url(sqlalchemy_url: str) -> str:
    scheme, sep, rest = sqlalchemy_url.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """Yield the SQLAlchemy URL of a running PostgreSQL server's maintenance database."""
    try:
        with running_postgres() as server:
            yield server.url
    except PostgresUnavailable as error:
        message = f"PostgreSQL is not available: {error}"
        if _in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@pytest.fixture
def fresh_postgres_database(postgres_url: str) -> Iterator[str]:
    """Yield the URL of a new, empty PostgreSQL database, dropped after the test."""
    name = _create_database(postgres_url)
    try:
        yield server_url(postgres_url, name)
    finally:
        _drop_database(postgres_url, name)


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Return the URL of an empty ledger database, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    url: str = request.getfixturevalue("fresh_postgres_database")
    return url


def _create_database(postgres_url: str, template: str | None = None) -> str:
    name = f"allotment_test_{uuid.uuid4().hex[:16]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(_libpq_url(postgres_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{clause}')
    return name


def _drop_database(postgres_url: str, name: str) -> None:
    with psycopg.connect(_libpq_url(postgres_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def migrated_postgres_template(postgres_url: str) -> Iterator[str]:
    """Yield the name of a PostgreSQL database migrated to head, to copy per test."""
    from allotment.ledger.storage import migrate

    name = _create_database(postgres_url)
    try:
        migrate.upgrade(server_url(postgres_url, name))
        yield name
    finally:
        _drop_database(postgres_url, name)


@pytest.fixture(scope="session")
def migrated_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a SQLite ledger file migrated to head, to copy per test."""
    from allotment.ledger.storage import migrate

    path = tmp_path_factory.mktemp("template") / "ledger.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
def migrated_ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Yield the URL of a fresh ledger at the schema head, on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("migrated_sqlite_template")
        path = tmp_path / "ledger.db"
        shutil.copyfile(template, path)
        yield f"sqlite:///{path}"
        return
    postgres_url: str = request.getfixturevalue("postgres_url")
    name = _create_database(postgres_url, request.getfixturevalue("migrated_postgres_template"))
    try:
        yield server_url(postgres_url, name)
    finally:
        _drop_database(postgres_url, name)
