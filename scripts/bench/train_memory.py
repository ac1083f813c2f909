"""Resident memory of bf16 CPU training with oneDNN's primitive cache at its default and capped.

The cap is ``nmt/machine/hostmem.py: cap_onednn_cache``; both variants run in one run.

    python -m scripts.bench train_memory --steps 300 --out docs/results/train/amx/train_memory.json

Each variant runs ``nmt-train`` (``make demo``'s model and batches, bf16, one thread, no
validation) in a fresh process and samples its resident set every 5 s; reported: the samples,
the last and peak RSS, ms per step and the final loss (equal losses: the cache changes no
arithmetic).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from nmt.machine.hostmem import ONEDNN_CACHE, ONEDNN_CACHE_DEFAULT
from nmt.release.plot import read_metrics
from scripts.bench.common import child_env, command, finish, machine, nmt_command, parser

# name -> ONEDNN_PRIMITIVE_CACHE_CAPACITY (oneDNN's own default; "" = what nmt-train sets)
VARIANTS = {"onednn_default_1024": "1024", f"capped_{ONEDNN_CACHE_DEFAULT}": ""}


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run(steps: int, capacity: str, out: Path) -> dict[str, object]:
    env = {k: v for k, v in child_env().items() if k != ONEDNN_CACHE}
    if capacity:
        env[ONEDNN_CACHE] = capacity
    args = [*nmt_command("train"), "model=gnmt_demo", "train=demo", "train.max_minutes=0",
            f"train.max_steps={steps}", "train.precision=bf16", "train.threads=1",
            "data.batch_tokens=2048", "train.eval_every=0", f"hydra.run.dir={out}"]  # fmt: skip
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    samples = []
    start = time.perf_counter()
    while proc.poll() is None:
        try:
            samples.append([round(time.perf_counter() - start, 1), round(rss_mb(proc.pid), 1)])
        except OSError:
            break
        time.sleep(5)
    if proc.wait() != 0:
        raise SystemExit(proc.stderr.read().decode()[-2000:] if proc.stderr else "failed")
    rows = read_metrics(out / "metrics.jsonl")
    steps_rows = [r for r in rows if "ms_per_step" in r]
    ms = [r["ms_per_step"] for r in steps_rows[len(steps_rows) // 5 :]]
    return {
        "onednn_cache": capacity or f"pipenmt default ({ONEDNN_CACHE_DEFAULT})",
        "rss_mb_last": samples[-1][1] if samples else None,
        "rss_mb_peak": max(s[1] for s in samples) if samples else None,
        "ms_per_step": round(sum(ms) / len(ms), 1),
        "final_loss": steps_rows[-1]["loss"],
        "samples_s_mb": samples,
    }


def main(argv: list[str] | None = None) -> int:
    ap = parser(__name__, __doc__)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: run(args.steps, cap, Path(tmp) / name) for name, cap in VARIANTS.items()}
    keys = ("rss_mb_last", "rss_mb_peak", "ms_per_step", "final_loss")
    print({k: {x: v[x] for x in keys} for k, v in results.items()})
    doc = {
        "bench": "train_memory",
        "command": command(__name__, argv),
        "results": results,
        "same_loss": len({r["final_loss"] for r in results.values()}) == 1,
        "machine": machine(),
    }
    return finish(doc, args.out)
