"""``nmt-plot``: the training curves of a run made of one or more resumed phases.

The phases' ``metrics.jsonl``, in order, give the training loss (mean per ``--bin`` steps) and
the dev loss / dev BLEU against the step, a dashed line where each phase begins.

    nmt-plot RUN1/metrics.jsonl RUN2/metrics.jsonl \\
        --out docs/results/shipped/epyc/en_de_training_curves

writes ``<out>.json`` (the binned curve, every validation record, the phases, the machine) and
``<out>.png``.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

from data.atomic import write_json_result
from nmt.errors import UserError
from nmt.tool import parser, run_tool


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``; blank and torn lines (a killed run) are skipped."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def curves(paths: list[Path], bin_steps: int) -> dict[str, Any]:
    """Training loss binned by step, validation records, phase starts; a later phase wins
    where steps overlap (a resume repeats nothing, but a killed phase may have logged ahead)."""
    train: dict[int, float] = {}
    val: dict[int, dict[str, Any]] = {}
    starts = []
    for p in paths:
        recs = [r for r in read_metrics(p) if "step" in r]
        seen = max(train, default=0)  # a phase's log may repeat the earlier ones (copied)
        new = [int(r["step"]) for r in recs if "loss" in r and int(r["step"]) > seen]
        if new:
            starts.append({"file": str(p), "first_step": min(new)})
        for r in recs:
            if "loss" in r:
                train[int(r["step"])] = float(r["loss"])
            if "val_loss" in r:
                val[int(r["step"])] = {
                    "step": int(r["step"]),
                    "dev_loss": r["val_loss"],
                    "dev_bleu": r.get("val_bleu"),
                }
    bins: dict[int, list[float]] = {}
    for step, loss in train.items():
        bins.setdefault((step - 1) // bin_steps, []).append(loss)
    binned = [
        {"step": (b + 1) * bin_steps, "train_loss": sum(v) / len(v)}
        for b, v in sorted(bins.items())
    ]
    return {"phases": starts, "train": binned, "val": [val[s] for s in sorted(val)]}


def plot(doc: dict[str, Any], title: str, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=80)
    ax1.plot([r["step"] for r in doc["train"]], [r["train_loss"] for r in doc["train"]],
             label="train (label-smoothed)", lw=1)  # fmt: skip
    ax1.plot([r["step"] for r in doc["val"]], [r["dev_loss"] for r in doc["val"]], "o-",
             ms=3, label="dev (teacher-forced)")  # fmt: skip
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss per target token")
    ax1.legend()
    bleu = [r for r in doc["val"] if r["dev_bleu"] is not None]
    ax2.plot([r["step"] for r in bleu], [r["dev_bleu"] for r in bleu], "o-", ms=3, color="C2")
    ax2.set_xlabel("step")
    ax2.set_ylabel("dev BLEU (greedy)")
    for ax in (ax1, ax2):
        for ph in doc["phases"][1:]:
            ax.axvline(ph["first_step"], ls="--", color="grey", lw=0.8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)


def main(argv: list[str] | None = None) -> int:
    ap = parser("nmt-plot", __doc__)
    ap.add_argument("metrics", nargs="+", type=Path, help="metrics.jsonl of each phase, in order")
    ap.add_argument("--out", type=Path, required=True, help="output path without extension")
    ap.add_argument("--bin", type=int, default=100, help="steps per training-loss point")
    ap.add_argument("--title", default="")
    args = ap.parse_args(argv)
    if args.bin < 1:
        ap.error(f"--bin must be at least 1, got {args.bin}")

    def body() -> int:
        missing = [str(p) for p in args.metrics if not p.is_file()]
        if missing:
            raise UserError(f"no such file: {', '.join(missing)}")
        doc = curves(args.metrics, args.bin)
        doc["machine"] = f"{platform.machine()} {platform.processor() or ''}".strip()
        write_json_result(f"{args.out}.json", doc)
        plot(doc, args.title or args.out.name, Path(f"{args.out}.png"))
        print(f"wrote {args.out}.json and {args.out}.png", file=sys.stderr)
        return 0

    return run_tool("nmt-plot", body)
