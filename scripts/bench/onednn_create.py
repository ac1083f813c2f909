"""oneDNN's kernel builds per training step: one process against the wavefront's two ranks.

    python -m scripts.bench onednn_create [--steps 30] [--skip 10] [--capacity 32 1024]

``nmt-train`` as ``python -m scripts.bench wavefront`` runs it (``model=gnmt_demo``, the
demo's 2,048-token batches, bf16, one thread per rank) with ``ONEDNN_VERBOSE=profile_create``:
oneDNN then prints a line for every primitive it is asked for, a cache hit or a miss (a miss
builds the kernel: JIT code for that operation and shape) with the milliseconds it took. Runs:
plain (1 process), the wavefront's best wave as 2 processes, and as 2 threads, each with
every ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` of ``--capacity`` (32 is what training sets,
:func:`nmt.machine.hostmem.cap_onednn_cache`).

Per run, the mean over steps ``skip+1..steps`` of: misses and their ms, those of the output
layer (a dimension equal to the vocabulary: its matmuls, forward and backward) apart, and the
hits. Both ranks' lines are counted (``ranks``): a wave's per-rank cost is the total over
``ranks``. The verbose lines cost time themselves: ``ms_per_step`` is recorded beside them but is
not a speed measurement (``python -m scripts.bench wavefront`` is).

Writes ``docs/results/wavefront/<machine>/onednn_create.json``.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from scripts.bench.common import (
    child_env,
    command,
    finish,
    machine,
    nmt_command,
    parser,
    results_for,
    work_folder,
)
from scripts.bench.wavefront import BASE, PLAIN

WAVE = ["parallel=wavefront", "parallel.pp=2", "parallel.time_chunks=4",
        "parallel.encoder_split=true", "parallel.balance=[3,2]", "parallel.generator_share=0.6",
        "parallel.attention_split=true"]  # fmt: skip
RUNS = {"plain_1x1": (PLAIN, 1), "wave_processes": (WAVE, 2),
        "wave_threads": ([*WAVE, "parallel.wave_threads=true"], 2)}  # fmt: skip
STEP = re.compile(r"^step (\d+) \|")
VOCAB = 8000  # the demo corpus's sentencepiece vocabulary (conf/data/debian_de_en.yaml)


def run(work: Path, name: str, overrides: list[str], capacity: int, a: Any) -> Path:
    """One ``nmt-train`` run with oneDNN's creation lines; -> its folder (``output.log``)."""
    out = work / f"{name}_cap{capacity}"
    args = [*BASE, f"train.max_steps={a.steps}", "train.precision=bf16", "train.threads=1",
            f"hydra.run.dir={out}", *overrides]  # fmt: skip
    env = child_env(1, ONEDNN_VERBOSE="profile_create",
                    ONEDNN_PRIMITIVE_CACHE_CAPACITY=str(capacity))  # fmt: skip
    r = subprocess.run(nmt_command("train") + args, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)  # fmt: skip
    if r.returncode != 0:
        raise SystemExit(f"{name} failed: {r.stdout[-2000:]}")
    (out / "output.log").write_text(r.stdout)
    return out


def per_step(out: Path, a: Any) -> dict[str, float]:
    """Mean creation counts and ms per step over steps ``skip+1..steps``: a line belongs to the
    step whose ``step N |`` line comes next (one stream: oneDNN flushes each line, and a step's
    line is written when it ends)."""
    totals = {"misses": 0.0, "miss_ms": 0.0, "output_layer_misses": 0.0,
              "output_layer_miss_ms": 0.0, "hits": 0.0}  # fmt: skip
    pending: list[str] = []
    for line in (out / "output.log").read_text().splitlines():
        if line.startswith("onednn_verbose") and ",primitive,create:" in line:
            pending.append(line)
        elif (m := STEP.match(line)) is not None:
            if int(m.group(1)) > a.skip:
                count(pending, totals)
            pending = []
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    ms = [float(r["ms_per_step"]) for r in recs if "ms_per_step" in r and r["step"] > a.skip]
    n = a.steps - a.skip
    return {k: round(v / n, 2) for k, v in totals.items()} | {"ms_per_step": round(sum(ms) / n, 1)}


def count(lines: list[str], totals: dict[str, float]) -> None:
    """Add one step's creation lines to ``totals``."""
    for x in lines:
        parts = x.split(",")
        if "cache_hit" in parts[3]:
            totals["hits"] += 1
            continue
        took, dims = float(parts[-1]), parts[-2]
        totals["misses"] += 1
        totals["miss_ms"] += took
        if str(VOCAB) in re.split(r"[x:]", dims):
            totals["output_layer_misses"] += 1
            totals["output_layer_miss_ms"] += took


def main(argv: list[str] | None = None) -> int:
    ap = parser(__name__, __doc__)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--skip", type=int, default=10, help="steps left out of the mean")
    ap.add_argument("--capacity", type=int, nargs="+", default=[32, 1024])
    ap.add_argument("--work", type=Path, default=None, help="run folders (default: temporary)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    out = Path(a.out) if a.out else results_for("wavefront", "onednn_create.json")
    result: dict[str, Any] = {}
    with work_folder(a.work, "onednn-") as work:
        for cap in a.capacity:
            for name, (overrides, ranks) in RUNS.items():
                got = per_step(run(work, name, overrides, cap, a), a)
                result.setdefault(f"capacity_{cap}", {})[name] = got | {"ranks": ranks}
    doc = {"command": command(__name__, argv), "machine": machine(),
           "config": {"model": "gnmt_demo", "batch_tokens": 2048, "precision": "bf16",
                      "steps": a.steps, "skip": a.skip, "wave": WAVE},
           "per_step": result}  # fmt: skip
    return finish(doc, out)
