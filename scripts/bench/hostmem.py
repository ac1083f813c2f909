"""glibc malloc settings (``nmt/machine/hostmem.py``) on and off, side by side in one run.

    python -m scripts.bench hostmem [--steps 100] [--rounds 2] [--lines 500]

Runs the real commands as subprocesses, alternating the two settings every round (so a drift
in the machine's speed hits both alike): ``PIPENMT_MALLOC=system`` (glibc's defaults) and the
default (``nmt.machine.hostmem.tune``).

- training: ``make demo``'s ``nmt-train`` command (``model=gnmt_demo train=demo``, 2,048-token
  batches, bf16 autocast where the CPU has native bf16) for ``--steps`` steps without
  validation; median ms/step over the steps after the 20th (``metrics.jsonl``), the child's
  user and system CPU seconds and peak resident memory (``getrusage``), and the final loss
  (the same bits either way: the allocator does not touch the arithmetic);
- decoding: ``nmt-translate checkpoint=gnmt-debian-en-de`` (its defaults) on the first
  ``--lines`` English sentences of the test split; wall seconds and CPU seconds.

Writes ``docs/results/train/amx/hostmem.json`` (machine, per-round numbers, medians, ratios).
"""

from __future__ import annotations

import gzip
import hashlib
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nmt.machine.capability import bf16_lstm_runs
from nmt.release.plot import read_metrics
from scripts.bench import common

MODES = {"system": {"PIPENMT_MALLOC": "system"}, "tuned": {}}


def run_child(cmd: list[str], env_extra: dict[str, str]) -> dict[str, float]:
    """Run ``cmd`` (must succeed) -> wall, user and sys seconds, peak RSS (MB) of the child."""
    env = {k: v for k, v in common.child_env().items() if k != "PIPENMT_MALLOC"} | env_extra
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=common.ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"hostmem: {' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return {
        "wall_s": wall,
        "user_s": after.ru_utime - before.ru_utime,
        "sys_s": after.ru_stime - before.ru_stime,
        # ru_maxrss of children is the largest child so far: recorded for information only
        "maxrss_mb": after.ru_maxrss / 1024,
    }


def train_round(mode: str, steps: int, tmp: Path) -> dict[str, Any]:
    run = tmp / f"train_{mode}"
    precision = "bf16" if bf16_lstm_runs() else "fp32"
    cmd = [*common.nmt_command("train"), "model=gnmt_demo", "train=demo",
           f"train.precision={precision}", "data.batch_tokens=2048", "train.max_minutes=0",
           f"train.max_steps={steps}", "train.eval_every=1000000", "train.eval_bleu=false",
           f"hydra.run.dir={run}"]  # fmt: skip
    out = run_child(cmd, MODES[mode])
    recs = read_metrics(run / "metrics.jsonl")
    steps_ms = [r["ms_per_step"] for r in recs if "ms_per_step" in r and r["step"] > 20]
    out["ms_per_step"] = statistics.median(steps_ms)
    out["final_loss"] = [r["loss"] for r in recs if "loss" in r][-1]
    shutil.rmtree(run)
    return out


def translate_round(mode: str, src: Path, tmp: Path) -> dict[str, Any]:
    hyp = tmp / f"hyp_{mode}.txt"
    cmd = [*common.nmt_command("translate"), "checkpoint=gnmt-debian-en-de", f"input={src}",
           f"output={hyp}", f"hydra.run.dir={tmp / 'translate'}"]  # fmt: skip
    out = run_child(cmd, MODES[mode])
    out["output_sha"] = hashlib.sha256(hyp.read_bytes()).hexdigest()[:16]
    return out


def medians(rounds: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


def main(argv: list[str] | None = None) -> int:
    ap = common.parser(__name__, __doc__)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--lines", type=int, default=500)
    ap.add_argument("--out", type=Path, default=common.results_for("train", "hostmem.json"))
    args = ap.parse_args(argv)

    res: dict[str, dict[str, list[dict[str, Any]]]] = {
        m: {"train": [], "translate": []} for m in MODES
    }
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        src = tmp / "src.en"
        test = common.ROOT / "data/corpus/debian_de_en.test.tsv.gz"
        with gzip.open(test, "rt", encoding="utf-8") as f:
            rows = [line.split("\t")[0] for line in f.read().splitlines()[1:]]
        src.write_text("\n".join(rows[: args.lines]) + "\n", encoding="utf-8")
        for r in range(args.rounds):
            for mode in MODES:
                res[mode]["train"].append(train_round(mode, args.steps, tmp))
                res[mode]["translate"].append(translate_round(mode, src, tmp))
                print(f"round {r + 1} {mode}: train {res[mode]['train'][-1]['ms_per_step']:.0f}"
                      f" ms/step, translate {res[mode]['translate'][-1]['wall_s']:.1f} s",
                      file=sys.stderr)  # fmt: skip
    summary = {
        mode: {
            "train_ms_per_step": medians(v["train"], "ms_per_step"),
            "train_sys_s": medians(v["train"], "sys_s"),
            "train_user_s": medians(v["train"], "user_s"),
            "final_loss": v["train"][0]["final_loss"],
            "translate_wall_s": medians(v["translate"], "wall_s"),
            "translate_sys_s": medians(v["translate"], "sys_s"),
        }
        for mode, v in res.items()
    }
    s, t = summary["system"], summary["tuned"]
    doc = {
        "command": common.command(__name__, argv),
        "machine": common.machine(),
        "summary": summary,
        "train_speedup": s["train_ms_per_step"] / t["train_ms_per_step"],
        "translate_speedup": s["translate_wall_s"] / t["translate_wall_s"],
        "same_loss": s["final_loss"] == t["final_loss"],
        "same_translations": len({r["output_sha"] for v in res.values() for r in v["translate"]})
        == 1,
        "rounds": res,
    }
    return common.finish(doc, args.out)
