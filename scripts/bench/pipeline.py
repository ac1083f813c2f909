"""The pipeline engine on CPU: step time, per-stage busy time and bubble against theory.

    python -m scripts.bench pipeline [--hidden 128 --layers 2 --vocab 2000 --steps 8]

Runs, on the GNMT stage list (``nmt.models.gnmt.build_stages``, dropout 0):

* ``plain``     the single-device step (forward through the stages, loss, backward);
* ``ws1-K1``    the pipelined path in one process, all stages one virtual stage (gpipe) -
                its overhead over ``plain`` is the engine's fixed cost (goal <= 5%);
* ``ws1-K2``    one process, the stages cut into 2 virtual stages (looped_bfs, M micro-batches);
* ``pp2``       2 processes (gloo, launched through torch's elastic agent), gpipe and 1f1b.

Timelines are recorded for a few steps of each pipelined run; ``--out`` (default
``docs/results/pipeline/epyc/``, committed) gets them and ``bench_pipeline.json``. Every
process uses one intra-op thread. The last line of output is the same JSON object (the numbers
and the machine).

No speedup is expected here: these machines have 2 vCPUs, so 2 pipeline processes share
the cores a single process would use, and gloo over loopback adds the transfers.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from parallel.placement import Placement, contiguous
from parallel.runtime.launch import launch
from scripts.bench.common import (
    ROOT,
    add_model_args,
    cpu_pipeline,
    finish,
    gnmt_stages,
    loss_sum,
    machine,
    parser,
    results_for,
    runner_for,
    timed,
)

NOTE = (
    "no speedup is expected on these 2-vCPU machines: pipeline processes share the cores "
    "one process would use, and gloo over loopback adds the activation transfers"
)


def plain_step(stages: list[nn.Module], inputs: tuple[Tensor, ...], target: Tensor) -> float:
    for s in stages:
        s.zero_grad(set_to_none=True)
    x: Any = inputs
    for s in stages:
        x = s(*x) if isinstance(x, tuple) else s(x)
    loss = loss_sum(x, target) / float(target.numel())
    loss.backward()  # type: ignore[no-untyped-call]
    return loss.item()


def timed_cpu(fn: Any) -> tuple[float, float]:
    """(wall ms, this process's CPU ms) of one call: CPU time is what a loaded 2-vCPU
    machine distorts least for a single-threaded process."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return (time.perf_counter() - w0) * 1e3, (time.process_time() - c0) * 1e3


def summary_dict(s: Any) -> dict[str, Any]:
    return {
        "step_ms": round(s.step_ms, 3),
        "busy_fraction": [round(f, 3) for f in s.busy_fraction],
        "stage_busy_ms": {str(k): round(v, 3) for k, v in s.stage_busy_ms.items()},
        "bubble_fraction": round(s.bubble_fraction, 3),
        "theory_bubble_fraction": round(s.theory_bubble_fraction, 3),
    }


def run_ws1(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    ctx, n, (inputs, target) = cpu_pipeline(args, 1)
    ntok = float(target.numel())
    plain = gnmt_stages(args)
    k1 = runner_for(args, ctx, contiguous(n, 1), "gpipe", 1)
    half = n // 2
    k2_groups = [list(range(half)), list(range(half, n))]
    k2 = runner_for(args, ctx, Placement.from_groups(k2_groups, 1), "looped_bfs", args.micro)
    for r in (k1, k2):  # first steps build the buckets (metadata inference)
        r.step(inputs, target, ntok)
        r.step(inputs, target, ntok)
    plain_step(plain, inputs, target)
    # interleave step by step so load drift hits all three alike
    fns = {
        "plain": lambda: plain_step(plain, inputs, target),
        "k1": lambda: k1.step(inputs, target, ntok),
        "k2": lambda: k2.step(inputs, target, ntok),
    }
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.rounds * args.steps):
        for k, fn in fns.items():
            w, c = timed_cpu(fn)
            wall[k].append(w)
            cpu[k].append(c)
    k2.timeline.enable()
    for _ in range(3):
        k2.step(inputs, target, ntok)
    s2 = k2.write_timeline(out_dir / "ws1_k2")
    ctx.close()
    med = statistics.median
    assert s2 is not None

    def pct(a: list[float], b: list[float]) -> float:
        return round(100.0 * (med(a) / med(b) - 1.0), 2)

    return {
        "plain_ms": round(med(wall["plain"]), 3),
        "plain_cpu_ms": round(med(cpu["plain"]), 3),
        "ws1_k1_gpipe_m1_ms": round(med(wall["k1"]), 3),
        "ws1_k1_gpipe_m1_cpu_ms": round(med(cpu["k1"]), 3),
        "ws1_k1_overhead_pct": pct(wall["k1"], wall["plain"]),
        "ws1_k1_overhead_cpu_pct": pct(cpu["k1"], cpu["plain"]),
        "ws1_k2_looped_ms": round(med(wall["k2"]), 3),
        "ws1_k2_overhead_pct": pct(wall["k2"], wall["plain"]),
        "ws1_k2_overhead_cpu_pct": pct(cpu["k2"], cpu["plain"]),
        "ws1_k2_timeline": summary_dict(s2),
    }


def pp2_worker(args: argparse.Namespace, out_dir: str) -> dict[str, Any]:
    ctx, n, (inputs, target) = cpu_pipeline(args, 2)
    ntok = float(target.numel())
    result: dict[str, Any] = {}
    for schedule in ("gpipe", "1f1b"):
        runner = runner_for(args, ctx, contiguous(n, 2), schedule, args.micro)
        runner.step(inputs, target, ntok)
        times = [1e3 * t for t in timed(lambda r=runner: r.step(inputs, target, ntok),
                                        args.steps * args.rounds)]  # fmt: skip
        runner.timeline.enable()
        for _ in range(3):
            runner.step(inputs, target, ntok)
        s = runner.write_timeline(Path(out_dir) / f"pp2_{schedule}")
        assert s is not None
        result[schedule] = {"step_ms": round(statistics.median(times), 3), **summary_dict(s)}
        result[schedule]["placement"] = runner.placement.describe()
    ctx.close()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = parser(__name__, __doc__)
    add_model_args(ap)
    ap.add_argument("--micro", type=int, default=4, help="micro-batches of the pipelined runs")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=results_for("pipeline", "bench_pipeline"),
                    help="bench_pipeline.json and the timelines (committed)")  # fmt: skip
    ap.add_argument("--skip-pp2", action="store_true")
    args = ap.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    print(f"pipeline: {NOTE}", flush=True)
    res: dict[str, Any] = {"config": {k: v for k, v in vars(args).items() if k != "out"}}
    res["ws1"] = run_ws1(args, out)
    w = res["ws1"]
    print(
        f"plain {w['plain_ms']:.1f} ms | ws1 K=1 {w['ws1_k1_gpipe_m1_ms']:.1f} ms (overhead "
        f"wall {w['ws1_k1_overhead_pct']:+.1f}%, cpu {w['ws1_k1_overhead_cpu_pct']:+.1f}%; "
        f"goal <= 5%) | ws1 K=2 looped M={args.micro} {w['ws1_k2_looped_ms']:.1f} ms (cpu "
        f"{w['ws1_k2_overhead_cpu_pct']:+.1f}%: micro-batches of {args.batch // args.micro})",
        flush=True,
    )
    if not args.skip_pp2:
        values = launch(pp2_worker, args, str(out), nproc=2, timeout_s=300, threads_per_worker=1)
        res["pp2"] = values[0]
        for name, r in res["pp2"].items():
            print(
                f"pp2 {name} M={args.micro}: {r['step_ms']:.1f} ms/step, busy "
                f"{r['busy_fraction']}, bubble {r['bubble_fraction']:.2f} "
                f"(theory {r['theory_bubble_fraction']:.2f})",
                flush=True,
            )
    where = out.resolve()
    res["timelines"] = str(where.relative_to(ROOT) if where.is_relative_to(ROOT) else where)
    res["note"] = NOTE
    res["machine"] = machine()
    return finish(res, out / "bench_pipeline.json")
