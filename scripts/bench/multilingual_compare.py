"""One multilingual model against single-pair models at equal steps, and zero-shot vs pivoting.

The zero-shot directions are compared with pivoting through English with the same
multilingual model.

    python -m scripts.bench multilingual_compare --multi runs/multi4 \\
        --single en-de=runs/en_de/metrics.jsonl --single de-en=runs/de_en/metrics.jsonl \\
        --single en-fr=runs/en_fr/metrics.jsonl --steps 500,1000,1500 --test-limit 1000 \\
        --out docs/results/multilingual/<machine>/compare.json

All runs share the recipe (model, batch tokens, learning rate, one thread; the multilingual run
trains every direction of ``data.directions`` in one model of the same size). Equal steps =
equal training compute. Dev BLEU is greedy on the first ``--dev-limit`` (500) dev sentences
of each direction: for a single-pair run, read from its ``metrics.jsonl``
(``data.max_dev_sentences`` the same); for the multilingual run, ``nmt-eval split=dev limit=N
decode=greedy`` of its step checkpoints (``checkpoints/step_XXXXXXXX.pt``: train it with
``train.save_every`` = the step interval and ``train.keep_last`` >= the number of steps
compared).
The zero-shot rows: ``nmt-eval split=test limit=N decode=beam5 pivot=true`` of the last
multilingual checkpoint. Writes the JSON and a plot beside it (``.png``). ``--reuse`` keeps the
multilingual model's evaluations from an existing ``--out`` file (same run, steps and limits)
and only rereads the single-pair curves.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from data.atomic import write_json_result
from nmt.config import compose_config
from nmt.decode.evaluate import eval_cli
from nmt.release.plot import read_metrics
from scripts.bench.common import command, machine, parser


def single_curve(path: Path) -> dict[int, float]:
    """step -> dev BLEU of a single-pair run (its metrics.jsonl)."""
    recs = [r for r in read_metrics(path) if r.get("val_bleu") is not None]
    return {int(r["step"]): round(float(r["val_bleu"]), 2) for r in recs}


def multi_eval(ckpt: Path, *overrides: str) -> dict[str, Any]:
    result: dict[str, Any] = eval_cli(compose_config([f"checkpoint={ckpt}", *overrides]))
    return result


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for i, (d, rows) in enumerate(doc["dev_bleu"].items()):
        color = f"C{i}"
        for kind, style in (("single", "-"), ("multi", "--")):
            pts = sorted((int(s), b) for s, b in rows[kind].items())
            label = f"{d} {'single-pair' if kind == 'single' else 'multilingual'}"
            if pts:
                ax.plot(*zip(*pts, strict=True), style, color=color, marker="o", label=label)
    ax.set_xlabel("training steps (2,048-token batches)")
    ax.set_ylabel(f"dev BLEU (greedy, {doc['dev_limit']} sentences)")
    ax.set_title("one multilingual model vs one model per pair, same size and steps", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def reusable(args: argparse.Namespace, steps: list[int]) -> dict[str, Any] | None:
    """The ``--out`` file of an earlier run on the same multilingual run, steps and limits
    (``--reuse``: add or update single-pair runs without decoding again), else None."""
    if not args.reuse or not args.out.is_file():
        return None
    old: dict[str, Any] = json.loads(args.out.read_text())
    same = (old["multi_run"], old["steps"], old.get("dev_limit"), old.get("test_limit"))
    return old if same == (str(args.multi), steps, args.dev_limit, args.test_limit) else None


def evaluate_multi(
    args: argparse.Namespace, steps: list[int], dev: dict[str, dict[str, dict[int, float]]]
) -> dict[str, Any]:
    """Dev BLEU of the step checkpoints into ``dev``; returns the last one's test report."""
    ckpts = args.multi / "checkpoints"
    for s in steps:
        report = multi_eval(
            ckpts / f"step_{s:08d}.pt", "split=dev", f"limit={args.dev_limit}", "decode=greedy"
        )
        for d, r in report["trained"].items():
            dev.setdefault(d, {"single": {}, "multi": {}})["multi"][s] = round(r["bleu"], 2)
    last = ckpts / f"step_{steps[-1]:08d}.pt"
    return multi_eval(last, "split=test", f"limit={args.test_limit}", "decode=beam5", "pivot=true")


def main(argv: list[str] | None = None) -> int:
    ap = parser(__name__, __doc__)
    ap.add_argument("--multi", type=Path, required=True, help="the multilingual run folder")
    ap.add_argument("--single", action="append", default=[], metavar="DIR=METRICS")
    ap.add_argument("--steps", default="500,1000,1500")
    ap.add_argument("--test-limit", type=int, default=1000)
    ap.add_argument(
        "--dev-limit",
        type=int,
        default=500,
        help="dev sentences per direction (the single runs' data.max_dev_sentences)",
    )
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="keep the multilingual evaluations of an existing --out file",
    )
    args = ap.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",")]
    singles = {k: single_curve(Path(v)) for k, v in (x.split("=", 1) for x in args.single)}
    dev: dict[str, dict[str, dict[int, float]]] = {
        d: {"single": {s: c[s] for s in steps if s in c}, "multi": {}} for d, c in singles.items()
    }
    old = reusable(args, steps)
    if old is not None:  # the multilingual model's evaluations of an earlier run of this script
        for d, rows in old["dev_bleu"].items():
            multi = {int(s): b for s, b in rows["multi"].items()}
            dev.setdefault(d, {"single": {}, "multi": {}})["multi"] = multi
        test = old["test_multi_beam5"]
    else:
        test = evaluate_multi(args, steps, dev)
    zs = {
        d: {
            "zero_shot": round(r["bleu"], 2),
            "pivot_via_en": round(test["pivot"][d]["bleu"], 2),
            "ratio": round(r["bleu"] / test["pivot"][d]["bleu"], 3)
            if test["pivot"][d]["bleu"]
            else None,
        }
        for d, r in test["zero_shot"].items()
        if d in test["pivot"]
    }
    doc = {
        "bench": "multilingual_compare",
        "multi_run": str(args.multi),
        "single_runs": dict(x.split("=", 1) for x in args.single),
        "steps": steps,
        "dev_limit": args.dev_limit,
        "test_limit": args.test_limit,
        "dev_bleu": dev,
        "test_multi_beam5": {g: test[g] for g in ("trained", "zero_shot", "pivot")},
        "zero_shot_vs_pivot": zs,
        "command": command(__name__, argv),
        "machine": machine(),
    }
    write_json_result(args.out, doc)
    plot(doc, args.out.with_suffix(".png"))
    print(json.dumps({"dev_bleu": dev, "zero_shot_vs_pivot": zs}))
    return 0
