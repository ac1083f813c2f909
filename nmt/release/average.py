"""``nmt-average``: the weights of several checkpoints of one run averaged into one.

    nmt-average --out runs/X/checkpoints/avg.pt \\
        runs/X/checkpoints/step_00010000.pt runs/X/checkpoints/step_00009750.pt ...

The result loads like any single-device checkpoint (``nmt-translate``, ``nmt-eval``,
``nmt-export``) and records which files it averaged. Checkpoints of another model shape or
vocabulary are refused with one line (exit 2); the output is written atomically.
"""

from __future__ import annotations

from pathlib import Path

from nmt.checkpoint import files as ckpt_io
from nmt.tool import parser, run_tool


def main(argv: list[str] | None = None) -> int:
    ap = parser("nmt-average", __doc__)
    ap.add_argument("checkpoints", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    paths: list[Path] = list(args.checkpoints)

    def body() -> int:
        ckpt_io.save(args.out, ckpt_io.average(paths))
        print(f"averaged {len(paths)} checkpoints into {args.out}")
        return 0

    return run_tool("nmt-average", body)
