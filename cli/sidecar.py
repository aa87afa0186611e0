"""``allotment sidecar``: serve one namespace's entitlements on localhost from the ledger.

Role: parse ``--db URL`` (env ``ALLOTMENT_DATABASE_URL``), ``--namespace NS`` (env
``ALLOTMENT_NAMESPACE``, from the downward API when injected), ``--listen 127.0.0.1:8888``,
``--probe-listen 0.0.0.0:8889`` (``off`` to disable), ``--staleness-budget 5s`` and
``--poll-interval 200ms``; build the settings, the view and the app, and run them on uvloop until
SIGTERM. This is the only place of the sidecar that reads the environment.

It must not decide anything about entitlements.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import Any

from aiohttp import web
from sqlalchemy.engine import make_url

from allotment.sidecar import wire
from allotment.sidecar.app import create_app, create_probe_app
from allotment.sidecar.compute import CoreValueEngine
from allotment.sidecar.ledger_source import StorageSource
from allotment.sidecar.settings import (
    DEFAULT_POLL_INTERVAL,
    DEFAULT_STALENESS_BUDGET,
    SidecarSettings,
    parse_address,
    parse_duration,
)
from allotment.sidecar.view import View

log = logging.getLogger("allotment.sidecar")


def _settings(args: argparse.Namespace) -> SidecarSettings:
    host, port = parse_address(args.listen)
    probe_host: str = "0.0.0.0"
    probe_port: int | None = None
    if args.probe_listen.lower() != "off":
        probe_host, probe_port = parse_address(args.probe_listen)
    return SidecarSettings(
        database_url=args.db,
        namespace=args.namespace,
        listen_host=host,
        listen_port=port,
        probe_host=probe_host,
        probe_port=probe_port,
        staleness_budget=parse_duration(args.staleness_budget),
        poll_interval=parse_duration(args.poll_interval),
        ready_requires_fresh=args.ready_requires_fresh,
    )


async def serve(settings: SidecarSettings) -> None:
    """Run the API and probe servers until SIGTERM or SIGINT."""
    view = View(settings.namespace, CoreValueEngine())
    app = create_app(settings, view, open_source=StorageSource.open)
    runners = [await wire.serve(app, settings.listen_host, settings.listen_port)]
    if settings.probe_port is not None:
        probe = web.AppRunner(create_probe_app(app), access_log=None)
        await probe.setup()
        await web.TCPSite(probe, settings.probe_host, settings.probe_port).start()
        runners.append(probe)
    log.info(
        "Serving namespace %s on http://%s:%d (probes on %s)",
        settings.namespace,
        settings.listen_host,
        settings.listen_port,
        "off" if settings.probe_port is None else f"{settings.probe_host}:{settings.probe_port}",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


def run(args: argparse.Namespace) -> int:
    """Start the sidecar; return the exit code."""
    if not args.db:
        print("allotment sidecar: pass --db URL or set ALLOTMENT_DATABASE_URL", file=sys.stderr)
        return 2
    if not args.namespace:
        print("allotment sidecar: pass --namespace NS or set ALLOTMENT_NAMESPACE", file=sys.stderr)
        return 2
    try:
        settings = _settings(args)
    except ValueError as error:
        print(f"allotment sidecar: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    shown = make_url(settings.database_url).render_as_string(hide_password=True)
    log.info("Reading the ledger at %s", shown)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(settings))
    return 0


def register(subparsers: Any) -> None:
    """Add the ``sidecar`` subcommand."""
    parser = subparsers.add_parser(
        "sidecar",
        help="serve one namespace's entitlements on localhost (OpenMeter API, OFREP)",
        description="Load a namespace from the ledger, follow its change feed and answer "
        "access and balance checks from memory.",
    )
    parser.add_argument(
        "--db",
        default=os.environ.get("ALLOTMENT_DATABASE_URL"),
        help="ledger URL (env ALLOTMENT_DATABASE_URL)",
    )
    parser.add_argument(
        "--namespace",
        default=os.environ.get("ALLOTMENT_NAMESPACE"),
        help="the one namespace served (env ALLOTMENT_NAMESPACE)",
    )
    parser.add_argument(
        "--listen", default="127.0.0.1:8888", help="API address (default 127.0.0.1:8888)"
    )
    parser.add_argument(
        "--probe-listen",
        default="0.0.0.0:8889",
        help="/livez, /readyz and /metrics address (default 0.0.0.0:8889; 'off' to disable)",
    )
    parser.add_argument(
        "--staleness-budget",
        default=f"{int(DEFAULT_STALENESS_BUDGET.total_seconds())}s",
        help="age past which each feature's whenStale decides (default 5s)",
    )
    parser.add_argument(
        "--poll-interval",
        default=f"{int(DEFAULT_POLL_INTERVAL.total_seconds() * 1000)}ms",
        help="how often to poll the change feed (default 200ms)",
    )
    parser.add_argument(
        "--ready-requires-fresh",
        action="store_true",
        help="fail /readyz past the staleness budget (off by default: DESIGN D7)",
    )
    parser.set_defaults(handler=run)
