"""Resident memory of bf16 CPU training with oneDNN's primitive cache at its default size and
capped (``nmt/machine/hostmem.py: cap_onednn_cache``), side by side in one run.

    python scripts/train_memory.py --steps 300 --out docs/results/train_memory.json

Each variant runs ``nmt-train`` (``make demo``'s model and batches, bf16, one thread, no
validation) in a fresh process and samples its resident set every 5 s; reported: the samples,
the last and peak RSS, ms per step and the final loss (equal losses: the cache changes no
arithmetic).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from data.atomic import atomic_write_text  # noqa: E402
from nmt.machine.hostmem import ONEDNN_CACHE, ONEDNN_CACHE_DEFAULT  # noqa: E402
from nmt.train.metrics import cpu_model  # noqa: E402

# name -> ONEDNN_PRIMITIVE_CACHE_CAPACITY (oneDNN's own default; "" = what nmt-train sets)
VARIANTS = {"onednn_default_1024": "1024", f"capped_{ONEDNN_CACHE_DEFAULT}": ""}


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run(steps: int, capacity: str, out: Path) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != ONEDNN_CACHE}
    if capacity:
        env[ONEDNN_CACHE] = capacity
    env["PYTHONPATH"] = str(ROOT)
    code = "import sys; from nmt.cli import train_main; sys.argv[0] = 'nmt-train'; train_main()"
    args = [sys.executable, "-c", code, "model=gnmt_demo", "train=demo", "train.max_minutes=0",
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
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: run(args.steps, cap, Path(tmp) / name) for name, cap in VARIANTS.items()}
    doc = {
        "bench": "train_memory",
        "command": f"python scripts/train_memory.py --steps {args.steps}",
        "results": results,
        "same_loss": len({r["final_loss"] for r in results.values()}) == 1,
        "machine": {"cpu": cpu_model(), "platform": platform.platform(), "cpus": os.cpu_count()},
    }
    text = json.dumps(doc, indent=1) + "\n"
    keys = ("rss_mb_last", "rss_mb_peak", "ms_per_step", "final_loss")
    print(json.dumps({k: {x: v[x] for x in keys} for k, v in results.items()}))
    if args.out:
        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
