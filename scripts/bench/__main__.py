"""``python -m scripts.bench NAME [ARGS...]`` runs benchmark NAME; ``--list`` lists them."""

from __future__ import annotations

import importlib
import sys

from scripts.bench import names, summary

USAGE = "usage: python -m scripts.bench {--list | NAME [ARGS...]} (NAME --help: its options)"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "--list"):
        width = max(map(len, names()))
        listing = "\n".join(f"  {n:<{width}}  {summary(n)}" for n in names())
        text = listing if args and args[0] == "--list" else f"{USAGE}\n\n{listing}"
        print(text, file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    if args[0] not in names():
        print(f"scripts.bench: error: no benchmark {args[0]!r} (one of: {', '.join(names())})",
              file=sys.stderr)  # fmt: skip
        return 2
    module = importlib.import_module(f"scripts.bench.{args[0]}")
    return int(module.main(args[1:]))


if __name__ == "__main__":
    sys.exit(main())
