"""The ``allotment`` command: the one entry point for every process."""

from __future__ import annotations

import argparse
import sys

from allotment import __version__


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with one subcommand per process kind."""
    parser = argparse.ArgumentParser(prog="allotment", description=__doc__)
    parser.add_argument("--version", action="version", version=f"allotment {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
