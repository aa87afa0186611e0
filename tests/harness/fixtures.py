"""Pytest fixtures for the real databases.

Role: ``postgres_url`` (session) starts one real PostgreSQL server for the run, or uses
``ALLOTMENT_TEST_DATABASE_URL``; when neither is possible it skips loudly saying what to install,
and fails when ``CI=true`` (a missing component is a failure in CI). ``ledger_url`` (function) is
parametrized over ``sqlite`` (a file in the test's temporary folder) and ``postgresql`` (a fresh
database created on the session server and dropped afterwards), so every storage test that takes
it runs on both databases.

It must not hand two tests the same database, or leave databases behind on a user's server.
"""

from __future__ import annotations

import os
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
    name = f"allotment_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(_libpq_url(postgres_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server_url(postgres_url, name)
    finally:
        with psycopg.connect(_libpq_url(postgres_url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
