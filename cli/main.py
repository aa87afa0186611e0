"""The ``allotment`` command: the one entry point for every process.

Each subcommand lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``handler`` (a function taking the
parsed arguments and returning an exit code). This module only assembles them; it reads no
environment and does no work of its own.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from allotment import __version__

SUBCOMMAND_MODULES = (
    "allotment.cli.dev",
    "allotment.cli.validate",
    "allotment.cli.plan",
    "allotment.cli.migrate",
    "allotment.cli.ledger",
    "allotment.cli.operator",
    "allotment.cli.sidecar",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with one subcommand per module that exists."""
    parser = argparse.ArgumentParser(
        prog="allotment",
        description="Kubernetes-native entitlements: validate, plan, dev, migrate, operator, sidecar.",
    )
    parser.add_argument("--version", action="version", version=f"allotment {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
