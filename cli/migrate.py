"""``allotment migrate``: the only migrator of the ledger schema (DESIGN D11).

Role: parse ``--db URL`` (default: env ``ALLOTMENT_DATABASE_URL``), upgrade the ledger to this
version's schema and say which revision it is at. Run it as a Job or an init container before the
operator and the sidecars, which refuse a schema they do not match. After restoring a backup, run
it with ``--rotate-epoch`` so every sidecar notices and reloads (D10). It must not do anything
else.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from sqlalchemy.engine import make_url

from allotment.ledger.storage import migrate


def run(args: argparse.Namespace) -> int:
    """Upgrade the ledger named by ``args.db`` and return the exit code."""
    url: str | None = args.db
    if not url:
        print(
            "allotment migrate: no ledger given: pass --db URL or set ALLOTMENT_DATABASE_URL",
            file=sys.stderr,
        )
        return 2
    shown = make_url(url).render_as_string(hide_password=True)
    try:
        revision = migrate.upgrade(url, args.revision)
    except Exception as error:
        print(f"allotment migrate: could not migrate {shown}: {error}", file=sys.stderr)
        return 1
    print(f"Ledger {shown} is at schema revision {revision}.")
    if args.rotate_epoch:
        epoch = migrate.rotate_epoch(url)
        print(f"Ledger {shown} has the new epoch {epoch}: every sidecar will reload it.")
    return 0


def register(subparsers: Any) -> None:
    """Add the ``migrate`` subcommand."""
    parser = subparsers.add_parser(
        "migrate",
        help="create or upgrade the ledger schema (the only migrator)",
        description="Create or upgrade the ledger schema to this version of allotment.",
    )
    parser.add_argument(
        "--db",
        default=os.environ.get("ALLOTMENT_DATABASE_URL"),
        help="ledger URL, e.g. sqlite:///ledger.db or postgresql://user@host/db "
        "(env ALLOTMENT_DATABASE_URL)",
    )
    parser.add_argument(
        "--revision", default="head", help="schema revision to upgrade to (default: head)"
    )
    parser.add_argument(
        "--rotate-epoch",
        action="store_true",
        help="after restoring a backup: give the ledger a new epoch so every sidecar reloads",
    )
    parser.set_defaults(handler=run)
