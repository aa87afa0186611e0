"""Run import-linter over the ``allotment`` import root as it is installed.

grimp, import-linter's graph builder, walks one directory per top-level package without
following symlinks, but our subpackages are sibling directories, linked into ``src/allotment/``
(for mypy) and mapped by ``package-dir`` (for installs). This copies ``src/allotment`` with the
links followed into ``.local/lint/`` and runs ``lint-imports`` there with the project's
contracts from ``pyproject.toml``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    """Assemble the tree and run the contracts; return lint-imports' exit code."""
    tree = ROOT / ".local" / "lint"
    shutil.rmtree(tree, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "src" / "allotment", tree / "allotment", ignore=ignore, symlinks=False)
    shutil.copytree(ROOT / "crds", tree / "allotment" / "crds", ignore=ignore)
    # allotment.operator is a namespace package (no __init__.py, so that nothing is importable
    # as ``operator`` from the repository root); grimp wants a regular one.
    (tree / "allotment" / "operator" / "__init__.py").touch()
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [
        str(Path(sys.executable).parent / "lint-imports"),
        "--config",
        str(ROOT / "pyproject.toml"),
    ]
    return subprocess.call(command, cwd=tree, env=env)


if __name__ == "__main__":
    sys.exit(main())
