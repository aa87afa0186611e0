"""``allotment ledger prune``: delete raw usage events and feed rows the ledger no longer needs.

Role: parse ``--db URL`` (default: env ``ALLOTMENT_DATABASE_URL``), the horizon the sidecars
ingest with and the feed retention, and run ``allotment.ledger.storage.prune.prune`` at the
current time (or ``--now``). Run it as a CronJob, weekly: when it deletes feed rows it gives the
ledger a new epoch and every sidecar reloads once. It must not do anything else.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta
from typing import Any

from sqlalchemy.engine import make_url

from allotment.ledger.clock import SystemClock
from allotment.ledger.core.timeutil import parse_rfc3339
from allotment.ledger.storage import prune
from allotment.ledger.storage.engine import open_ledger
from allotment.ledger.storage.usage import DEFAULT_HORIZON


def run_prune(args: argparse.Namespace) -> int:
    """Prune the ledger named by ``args.db`` and return the exit code."""
    url: str | None = args.db
    if not url:
        print(
            "allotment ledger prune: no ledger given: pass --db URL or set ALLOTMENT_DATABASE_URL",
            file=sys.stderr,
        )
        return 2
    shown = make_url(url).render_as_string(hide_password=True)
    now = parse_rfc3339(args.now) if args.now else SystemClock().now()
    retention = None if args.keep_feed else timedelta(days=args.feed_retention_days)
    try:
        ledger = open_ledger(url)
    except Exception as error:
        print(f"allotment ledger prune: cannot open {shown}: {error}", file=sys.stderr)
        return 1
    try:
        outcome = prune.prune(
            ledger,
            now=now,
            horizon=timedelta(days=args.horizon_days),
            feed_retention=retention,
        )
    except ValueError as error:
        print(f"allotment ledger prune: {error}", file=sys.stderr)
        return 2
    finally:
        ledger.dispose()
    print(
        f"Ledger {shown}: deleted {outcome.events} raw usage events and "
        f"{outcome.feed_rows} feed rows, and {outcome.leases} lapsed strict-mode leases."
    )
    if outcome.epoch is not None:
        print(f"Ledger {shown} has the new epoch {outcome.epoch}: every sidecar will reload it.")
    return 0


def register(subparsers: Any) -> None:
    """Add the ``ledger`` subcommand and its ``prune`` action."""
    parser = subparsers.add_parser(
        "ledger",
        help="maintain the ledger (prune)",
        description="Maintain the ledger.",
    )
    actions = parser.add_subparsers(dest="ledger_command", metavar="ACTION", required=True)
    prune_parser = actions.add_parser(
        "prune",
        help="delete raw usage events past the dedup horizon and old feed rows",
        description="Delete raw usage events older than the dedup horizon (their usage stays in "
        "the buckets) and feed rows older than the retention (every sidecar then reloads once).",
    )
    prune_parser.add_argument(
        "--db",
        default=os.environ.get("ALLOTMENT_DATABASE_URL"),
        help="ledger URL, e.g. sqlite:///ledger.db or postgresql://user@host/db "
        "(env ALLOTMENT_DATABASE_URL)",
    )
    prune_parser.add_argument(
        "--horizon-days",
        type=int,
        default=DEFAULT_HORIZON.days,
        help="the usage horizon the sidecars ingest with (default and minimum: "
        f"{DEFAULT_HORIZON.days}); events are kept for it plus "
        f"{prune.CLOCK_MARGIN.days} day of clock margin",
    )
    prune_parser.add_argument(
        "--feed-retention-days",
        type=int,
        default=prune.DEFAULT_FEED_RETENTION.days,
        help=f"keep feed rows this many days (default {prune.DEFAULT_FEED_RETENTION.days})",
    )
    prune_parser.add_argument(
        "--keep-feed", action="store_true", help="prune raw events only; keep every feed row"
    )
    prune_parser.add_argument(
        "--now", help="prune as of this RFC 3339 instant instead of the current time"
    )
    prune_parser.set_defaults(handler=run_prune)
