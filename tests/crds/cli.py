"""Run ``allotment validate`` in-process through its own ``register`` and handler."""

from __future__ import annotations

import argparse
import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

from allotment.cli import validate

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
CASES = REPO / "tests" / "cases"


@dataclass(frozen=True)
class Run:
    """The exit code and standard output of one run."""

    code: int
    out: str

    @property
    def error_lines(self) -> list[str]:
        """The lines reporting errors (text format)."""
        return [line for line in self.out.splitlines() if ": error: " in line]

    @property
    def warning_lines(self) -> list[str]:
        """The lines reporting warnings (text format)."""
        return [line for line in self.out.splitlines() if ": warning: " in line]


def run_validate(*argv: str | Path) -> Run:
    """Parse ``allotment validate ARGV`` with the subcommand's parser and run its handler."""
    parser = argparse.ArgumentParser(prog="allotment")
    validate.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["validate", *(str(item) for item in argv)])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = args.handler(args)
    return Run(code, out.getvalue())
