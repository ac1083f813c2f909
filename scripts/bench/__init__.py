"""The benchmarks, one module each (``scripts/bench/<name>.py`` with ``main(argv) -> int``).

    python -m scripts.bench --list               # every benchmark and what it measures
    python -m scripts.bench NAME [ARGS...]       # run one (NAME --help: its options)

Run them from the repository root. ``common`` holds what they share (timing, the machine
record, result files, child processes); modules whose name starts with ``_`` are helpers.
"""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

HELPERS = frozenset({"common"})


def names() -> list[str]:
    """The benchmarks' names, sorted."""
    found = (m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]))
    return sorted(n for n in found if not n.startswith("_") and n not in HELPERS)


def summary(name: str) -> str:
    """The first line of benchmark ``name``'s docstring (read without importing it)."""
    tree = ast.parse((Path(__file__).parent / f"{name}.py").read_text(encoding="utf-8"))
    return (ast.get_docstring(tree) or "").split("\n")[0]
