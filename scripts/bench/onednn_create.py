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

import dataclasses
import re
from pathlib import Path
from typing import Any

from scripts.bench import _wave_predict as wp
from scripts.bench.common import command, finish, machine, parser, results_for, work_folder
from scripts.bench.wavefront import BASE, PLAIN, mean_step_ms, train_run

WAVE = wp.WaveSpec.parse("c4/split/b3-2/s0.6/attn")  # the best wave as processes
RUNS = {"plain_1x1": (PLAIN, 1), "wave_processes": (WAVE.overrides(), 2),
        "wave_threads": (dataclasses.replace(WAVE, threads=True).overrides(), 2)}  # fmt: skip
STEP = re.compile(r"^step (\d+) \|")


def per_step(out: Path, vocab: int, a: Any) -> dict[str, float]:
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
                count(pending, vocab, totals)
            pending = []
    n = a.steps - a.skip
    return {k: round(v / n, 2) for k, v in totals.items()} | {
        "ms_per_step": round(mean_step_ms(out, a.skip), 1)
    }


def count(lines: list[str], vocab: int, totals: dict[str, float]) -> None:
    """Add one step's creation lines to ``totals`` (the output layer's: a dimension ``vocab``)."""
    for x in lines:
        parts = x.split(",")
        if "cache_hit" in parts[3]:
            totals["hits"] += 1
            continue
        took, dims = float(parts[-1]), parts[-2]
        totals["misses"] += 1
        totals["miss_ms"] += took
        if str(vocab) in re.split(r"[x:]", dims):
            totals["output_layer_misses"] += 1
            totals["output_layer_miss_ms"] += took


def main(argv: list[str] | None = None) -> int:
    from nmt.config import compose_config

    ap = parser(__name__, __doc__)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--skip", type=int, default=10, help="steps left out of the mean")
    ap.add_argument("--capacity", type=int, nargs="+", default=[32, 1024])
    ap.add_argument("--work", type=Path, default=None, help="run folders (default: temporary)")
    ap.add_argument("--out", default=None)
    ap.set_defaults(precision="bf16")  # train_run's
    a = ap.parse_args(argv)
    out = Path(a.out) if a.out else results_for("wavefront", "onednn_create.json")
    vocab = compose_config(BASE).data.vocab_size
    result: dict[str, Any] = {}
    with work_folder(a.work, "onednn-") as work:
        for cap in a.capacity:
            env = {"ONEDNN_VERBOSE": "profile_create", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": str(cap)}
            for name, (overrides, ranks) in RUNS.items():
                run = train_run(work, f"{name}_cap{cap}", 1, overrides, a, **env)
                got = per_step(run, vocab, a)
                result.setdefault(f"capacity_{cap}", {})[name] = got | {"ranks": ranks}
    doc = {"command": command(__name__, argv), "machine": machine(),
           "config": {"model": "gnmt_demo", "batch_tokens": 2048, "precision": "bf16",
                      "steps": a.steps, "skip": a.skip, "wave": WAVE.overrides()},
           "per_step": result}  # fmt: skip
    return finish(doc, out)
