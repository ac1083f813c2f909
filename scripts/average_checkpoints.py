"""Average the weights of several checkpoints of one run into one (weights only).

    python scripts/average_checkpoints.py --out runs/X/checkpoints/avg.pt \
        runs/X/checkpoints/step_00010000.pt runs/X/checkpoints/step_00009750.pt ...

The result loads like any single-device checkpoint (``nmt-translate``, ``nmt-eval``,
``scripts/export_model.py``) and records which files it averaged. Checkpoints of another
model shape or vocabulary are refused with one line (exit 2); the output is written atomically.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nmt.checkpoint import files as ckpt_io  # noqa: E402
from nmt.errors import UserError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        ckpt_io.save(args.out, ckpt_io.average(list(args.checkpoints)))
    except UserError as err:
        print(f"average_checkpoints: error: {err}", file=sys.stderr)
        return 2
    print(f"averaged {len(args.checkpoints)} checkpoints into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
