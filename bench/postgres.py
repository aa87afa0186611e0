"""A throwaway PostgreSQL ledger for a benchmark run, started the way the test suite starts one.

Role: ``throwaway_database()`` yields the URL of a new, empty database on a real PostgreSQL
server: the test harness's (``tests.harness.postgres.running_postgres``: Debian's server in a
temporary folder, bound to 127.0.0.1 on a free port, ``fsync=off``, stopped with ``pg_ctl -m
fast`` afterwards), or the server named by ``ALLOTMENT_TEST_DATABASE_URL``; the database is
dropped afterwards. With ``pin`` the server this call started (postmaster and every backend,
present and future: children inherit the affinity) is pinned to one core, so the database's
work stays off the benched server's core, as it would run on another machine.

It must not pin, stop or drop anything it did not create: a user's server is used as it is,
only its throwaway database is dropped. Run from the repository root (it imports the tests'
harness, which is not part of the installed package).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg

from tests.harness.postgres import running_postgres, server_url

__all__ = ["libpq_url", "throwaway_database"]


def libpq_url(sqlalchemy_url: str) -> str:
    """Return ``sqlalchemy_url`` without its driver (``postgresql+psycopg://`` -> ``postgresql://``)."""
    scheme, sep, rest = sqlalchemy_url.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def _pin_server(url: str, cpu: int) -> int:
    """Pin the postmaster behind ``url`` and its children to ``cpu``; return the postmaster."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    stat = Path(f"/proc/{row[0]}/stat").read_text()
    postmaster = int(stat[stat.rindex(")") + 2 :].split()[1])
    for pid in [postmaster, *_children(postmaster)]:
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(pid, {cpu})
    return postmaster


@contextlib.contextmanager
def throwaway_database(pin: int | None = None) -> Iterator[str]:
    """Yield the SQLAlchemy URL of a new database on a real server; drop it (and stop the server
    this call started) afterwards. ``pin``: the core for a server this call started."""
    with running_postgres() as server:
        if pin is not None and server.owned and hasattr(os, "sched_setaffinity"):
            _pin_server(server.url, pin)
        name = f"allotment_bench_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(libpq_url(server.url), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield server_url(server.url, name)
        finally:
            with psycopg.connect(libpq_url(server.url), autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
