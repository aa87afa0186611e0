"""``allotment operator``: run the Kopf operator against a ledger.

Role: read ``--db`` (env ``ALLOTMENT_DATABASE_URL``), the namespaces to watch (all when none is
given), the admission server's address and certificate, build ``OperatorSettings`` and hand them
to ``allotment.operator.startup.run``. This is the only place the operator's configuration is read
from argv and the environment.

Must not: open the ledger or talk to Kubernetes itself.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from allotment.operator.settings import (
    DEFAULT_SIDECAR_IMAGE,
    OperatorSettings,
    SidecarSettings,
    WebhookSettings,
)


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT, e.g. 127.0.0.1:9443")
    return host.strip("[]") or "127.0.0.1", int(port)


def settings_from(args: argparse.Namespace) -> OperatorSettings:
    """Build the operator's settings from parsed arguments."""
    webhook = None
    if args.webhook_listen is not None:
        host, port = args.webhook_listen
        webhook = WebhookSettings(
            host=host,
            port=port,
            certfile=Path(args.webhook_cert) if args.webhook_cert else None,
            keyfile=Path(args.webhook_key) if args.webhook_key else None,
        )
    return OperatorSettings(
        database_url=args.db,
        namespaces=tuple(args.namespace or ()),
        webhook=webhook,
        sidecar=SidecarSettings(image=args.sidecar_image),
        liveness_endpoint=args.liveness,
        value_refresh_seconds=args.value_refresh,
    )


def run(args: argparse.Namespace) -> int:
    """Run the operator until it is stopped; return the exit code."""
    if not args.db:
        print(
            "allotment operator: no ledger given: pass --db URL or set ALLOTMENT_DATABASE_URL",
            file=sys.stderr,
        )
        return 2
    if args.webhook_listen is not None and not (args.webhook_cert and args.webhook_key):
        print(
            "allotment operator: --webhook-listen needs --webhook-cert and --webhook-key "
            "(the apiserver only calls webhooks over TLS it trusts)",
            file=sys.stderr,
        )
        return 2
    import kopf

    from allotment.operator.startup import run as run_operator

    kopf.configure(verbose=args.verbose, log_prefix=True)
    try:
        run_operator(settings_from(args))
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # Kopf's ActivityError: a startup hook refused (schema, ledger)
        reason = error.__cause__ if error.__cause__ is not None else error
        print(f"allotment operator: could not start: {reason}", file=sys.stderr)
        return 1
    return 0


def register(subparsers: Any) -> None:
    """Add the ``operator`` subcommand."""
    parser = subparsers.add_parser(
        "operator",
        help="reconcile allotment resources into the ledger (Kopf)",
        description="Watch allotment.dev resources and reconcile them into the ledger.",
    )
    parser.add_argument(
        "--db",
        default=os.environ.get("ALLOTMENT_DATABASE_URL"),
        help="ledger URL (env ALLOTMENT_DATABASE_URL); it must be migrated already",
    )
    parser.add_argument(
        "--namespace",
        action="append",
        metavar="NS",
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    parser.add_argument(
        "--webhook-listen",
        type=_address,
        metavar="HOST:PORT",
        help="serve the admission webhooks here (e.g. 127.0.0.1:9443); default: no webhooks",
    )
    parser.add_argument("--webhook-cert", metavar="FILE", help="PEM certificate for webhooks")
    parser.add_argument("--webhook-key", metavar="FILE", help="PEM private key for webhooks")
    parser.add_argument(
        "--sidecar-image",
        default=os.environ.get("ALLOTMENT_SIDECAR_IMAGE", DEFAULT_SIDECAR_IMAGE),
        help="image of the injected sidecar (env ALLOTMENT_SIDECAR_IMAGE)",
    )
    parser.add_argument(
        "--liveness",
        metavar="URL",
        help="serve Kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz",
    )
    parser.add_argument(
        "--value-refresh",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="how often Entitlements' status.value is refreshed (default 15)",
    )
    parser.add_argument("--verbose", action="store_true", help="log every handler")
    parser.set_defaults(handler=run)
