"""Run import-linter over the ``allotment`` import root as it is installed.

grimp, import-linter's graph builder, walks one directory per top-level package, but our
subpackages live in sibling directories mapped by ``package-dir``. This copies the Python
sources into one tree under ``.local/lint/`` and runs ``lint-imports`` there with the
project's contracts from ``pyproject.toml``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAPPED = {
    "ledger": "ledger",
    "operator": "operator",
    "sidecar": "sidecar",
    "cli": "cli",
    "crds": "crds",
}


def main() -> int:
    """Assemble the tree and run the contracts; return lint-imports' exit code."""
    tree = ROOT / ".local" / "lint"
    shutil.rmtree(tree, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "src" / "allotment", tree / "allotment", ignore=ignore)
    for name, directory in MAPPED.items():
        shutil.copytree(ROOT / directory, tree / "allotment" / name, ignore=ignore)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [
        str(Path(sys.executable).parent / "lint-imports"),
        "--config",
        str(ROOT / "pyproject.toml"),
    ]
    return subprocess.call(command, cwd=tree, env=env)


if __name__ == "__main__":
    sys.exit(main())
