"""A sweep collected: dev BLEU against training minutes for every run of a Hydra multirun.

    nmt-train -m train=demo model.hidden=128,256 train.decay=step,cosine \\
        hydra.sweep.dir=runs/sweep_demo
    python -m scripts.bench sweep runs/sweep_demo      # or several run folders

For each run folder (one with ``metrics.jsonl``; a multirun folder holds one per job) it reads
``.hydra/overrides.yaml`` and ``metrics.jsonl`` (and the test BLEU of an ``nmt-eval`` report,
``*.eval.json``, found in the run folder) and writes

- ``docs/results/demo/<machine>/sweep.json``: machine, then per run: overrides, steps, minutes,
  final/best dev BLEU, the dev BLEU-vs-minutes curve, test BLEU;
- ``docs/results/demo/<machine>/sweep.png``: dev BLEU against training minutes, one line per recipe;
- a markdown table on stdout (for BENCHMARKS.md).

A run's recipe is the overrides that are not common to all the runs collected.
"""

from __future__ import annotations

import bisect
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml

from data.atomic import write_json_result
from nmt.release.plot import read_metrics
from scripts.bench.common import command, machine, parser, results_for


def read_overrides(run: Path) -> list[str]:
    path = run / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    value = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [str(x) for x in value] if isinstance(value, list) else []


def _natural(path: Path) -> list[Any]:
    """Sort key: job folders 2 < 10."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(path))]


def find_runs(paths: list[Path]) -> list[Path]:
    """Run folders (those holding ``metrics.jsonl``) at or below ``paths``, in natural order."""
    runs: list[Path] = []
    for p in paths:
        found = [p] if (p / "metrics.jsonl").is_file() else sorted(
            (m.parent for m in p.rglob("metrics.jsonl")), key=_natural
        )  # fmt: skip
        runs += [r for r in found if r not in runs]
    return runs


def _minutes_at(step: int, train: list[tuple[int, float]]) -> float | None:
    """Training minutes at ``step``, interpolated from the training records' ``wall_s``
    (for validation records written before they carried their own ``wall_s``)."""
    if not train:
        return None
    i = bisect.bisect_left([s for s, _ in train], step)
    if i < len(train) and train[i][0] == step or i == 0:
        return train[i][1] / 60
    if i == len(train):
        return train[-1][1] / 60
    (s0, w0), (s1, w1) = train[i - 1], train[i]
    return (w0 + (w1 - w0) * (step - s0) / (s1 - s0)) / 60


def eval_report(run: Path) -> dict[str, Any] | None:
    """The test-split report of ``nmt-eval`` in the run folder (best.pt's before last.pt's)."""
    reports = sorted(
        run.rglob("*.eval.json"),
        key=lambda p: (".test." not in p.name, not p.name.startswith("best."), p.name),
    )
    for path in reports:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("bleu"), int | float):
            return {"file": str(path.relative_to(run)), "bleu": doc["bleu"],
                    "chrf": doc.get("chrf"), "lines": doc.get("lines")}  # fmt: skip
    return None


def summarize(run: Path) -> dict[str, Any]:
    recs = read_metrics(run / "metrics.jsonl")
    train = sorted(
        (int(r["step"]), float(r["wall_s"])) for r in recs if "loss" in r and "wall_s" in r
    )
    curve = []
    for r in recs:
        if "val_loss" not in r:
            continue
        minutes = r["wall_s"] / 60 if "wall_s" in r else _minutes_at(int(r["step"]), train)
        minutes = None if minutes is None else round(minutes, 4)
        curve.append({"step": r["step"], "minutes": minutes, "dev_bleu": r.get("val_bleu"),
                      "dev_loss": r["val_loss"]})  # fmt: skip
    bleus = [c["dev_bleu"] for c in curve if c["dev_bleu"] is not None]
    speeds = [r["tok_per_s"] for r in recs if "tok_per_s" in r]
    minutes = [w / 60 for _, w in train] + [c["minutes"] for c in curve if c["minutes"] is not None]
    return {
        "run": str(run),
        "overrides": read_overrides(run),
        "steps": max((int(r["step"]) for r in recs if "step" in r), default=0),
        "minutes": round(max(minutes, default=0.0), 4),
        "final_dev_bleu": bleus[-1] if bleus else None,
        "final_dev_loss": curve[-1]["dev_loss"] if curve else None,
        "best_dev_bleu": max(bleus) if bleus else None,
        "final_lr": next((r["lr"] for r in reversed(recs) if "lr" in r), None),
        "median_tok_per_s": round(statistics.median(speeds)) if speeds else None,
        "dev_curve": curve,
        "test": eval_report(run),
    }


def label_runs(runs: list[dict[str, Any]], by_folder: bool = False) -> None:
    """``recipe``: the run's overrides that not every run shares (else its folder name).

    ``by_folder``: the name of the multirun folder holding the run, plus the overrides that
    differ between the jobs of that folder (short labels for one-factor-at-a-time sweeps)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(str(Path(r["run"]).parent) if by_folder else "", []).append(r)
    for key, members in groups.items():
        common = set.intersection(*(set(r["overrides"]) for r in members))
        for r in members:
            own = " ".join(o for o in r["overrides"] if o not in common)
            if by_folder:
                r["recipe"] = f"{Path(key).name} {own}".strip()
            else:
                r["recipe"] = own or Path(r["run"]).name


def plot(runs: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in runs:
        pts = [(c["minutes"], c["dev_bleu"]) for c in r["dev_curve"]
               if c["minutes"] is not None and c["dev_bleu"] is not None]  # fmt: skip
        if pts:
            ax.plot(*zip(*pts, strict=True), "o-", ms=3, lw=1.2, label=r["recipe"])
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("training minutes (validation included)")
    ax.set_ylabel("dev BLEU (greedy)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower right")
    ax.set_title("dev BLEU vs training time", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def markdown(runs: list[dict[str, Any]]) -> str:
    def num(x: Any, fmt: str = ".2f") -> str:
        return "-" if x is None else format(x, fmt)

    rows = ["| recipe | steps | minutes | final dev loss | final dev BLEU | best dev BLEU "
            "| test BLEU |", "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in runs:
        test = r["test"]["bleu"] if r["test"] else None
        rows.append(
            f"| `{r['recipe']}` | {r['steps']} | {num(r['minutes'], '.1f')} | "
            f"{num(r.get('final_dev_loss'), '.3f')} | {num(r['final_dev_bleu'])} | "
            f"{num(r['best_dev_bleu'])} | {num(test)} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = parser(__name__, __doc__)
    ap.add_argument("paths", nargs="+", type=Path, help="multirun folder(s) or run folder(s)")
    ap.add_argument("--json", type=Path, default=results_for("demo", "sweep.json"))
    ap.add_argument("--png", type=Path, default=results_for("demo", "sweep.png"))
    ap.add_argument(
        "--label-by-folder",
        action="store_true",
        help="label runs by their multirun folder (+ the overrides varied inside it)",
    )
    ap.add_argument(
        "--label-by-name", action="store_true", help="label runs by their own folder's name"
    )
    args = ap.parse_args(argv)
    missing = [str(p) for p in args.paths if not p.is_dir()]
    if missing:
        print(f"sweep: error: not a folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    folders = find_runs(args.paths)
    if not folders:
        names = ", ".join(map(str, args.paths))
        print(f"sweep: error: no run (metrics.jsonl) under {names}", file=sys.stderr)
        return 2
    runs = [summarize(f) for f in folders]
    label_runs(runs, args.label_by_folder)
    if args.label_by_name:
        for r in runs:
            r["recipe"] = Path(r["run"]).name
    doc = {"command": command(__name__, argv), "machine": machine(), "runs": runs}
    write_json_result(args.json, doc)
    plot(runs, args.png)
    print(markdown(runs))
    print(f"wrote {args.json} and {args.png}", file=sys.stderr)
    return 0
