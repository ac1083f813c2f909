"""The step simulator (``parallel.planning.simulate``) against measured pipelined step times.

    python -m scripts.bench validate_simulator [--hidden 128 --layers 2 --vocab 2000 --batch 32]

Every prediction uses stage costs measured in the same setting as the run it predicts, at the
run's micro-batch size (no scaling), one intra-op thread per process, GNMT stages of
``nmt.models.gnmt.build_stages`` (dropout 0).  Measuring is interleaved: each round takes one
profile pass per micro-batch count and one step of every case, and medians are taken over
the rounds, so a drift in the machine's speed hits predictions and measurements alike.

* ``ws1`` (predictor ``profile``): one process, the ``n`` model stages as ``n`` virtual
  stages on one rank (``looped_bfs`` and ``interleaved_1f1b``, M in {2, 4}), cost table from
  ``parallel.planning.profile.profile_stages`` in that process.  One rank has no transfers and no
  bubble, so the simulator predicts ``M * sum(fwd + bwd)``: this checks the profiler against
  the engine (whose per-action overhead the profile does not see).
* ``pp2`` (predictor ``timeline``): two processes (gloo on 127.0.0.1), contiguous placement
  balanced on a first profile, ``gpipe`` and ``1f1b``, M in {2, 4}.  Two processes on the
  2 vCPUs slow each other down (shared caches and memory bandwidth, possibly SMT siblings on
  the host, gloo's threads) but only while both compute, and how much they overlap depends
  on the schedule.  So the stage costs come from inside the pipelined run: the mean F (+
  loss) and B time per micro-batch of each virtual stage in the timeline of the measured
  steps themselves; the simulator then has to reproduce the step from them (dependencies,
  bubbles, transfers over a link fitted to a gloo ping-pong, the end-of-step tied-weight
  all-reduce).  Other predictors, reported next to it: ``profiled`` (``profile_stages`` run
  by both ranks at the same time, per-stage median over ranks and rounds: the concurrent-load
  profile), ``alone`` (rank 0 profiles while rank 1 waits) and ``cross-tl`` (the timeline
  costs of the other schedule at the same M: gpipe's costs predict 1f1b and back).

Measured: median wall time of ``PipelineRunner.step`` (both ranks released by a barrier; no
optimizer step; gradients cleared between steps; the slower rank's median).  Goal: |error|
<= 15%.  Needs an otherwise idle machine: other jobs on the 2 vCPUs inflate the
``profiled`` costs (profile passes compute back to back) far more than the pipelined steps
(whose ranks wait part of the time).  The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch import nn

from parallel.partition import balanced_runs
from parallel.placement import Placement, contiguous
from parallel.planning.costs import CostTable, StageCost
from parallel.planning.links import ZERO_LINK, Link, parse_link
from parallel.planning.profile import profile_stages
from parallel.planning.simulate import simulate
from parallel.runtime.launch import launch
from parallel.runtime.pipeline import PipelineRunner
from scripts.bench import common
from scripts.bench._wave_link import pingpong
from scripts.bench.common import Inputs

GOAL_PCT = 15.0
OUT = common.results_for("planning", "validate_simulator.json")


# ----------------------------------------------------------------------------- profiles, steps


def profile_once(stages: list[nn.Module], args: argparse.Namespace, m: int) -> CostTable:
    """One timed pass (after the untimed bytes pass) at micro-batch ``batch / m``."""
    inputs, target = common.random_batch(args)
    return profile_stages(stages, inputs, target, common.loss_sum, micro_batch=args.batch // m,
                          repeats=1, warmup=0, floor=False, model="gnmt-val",
                          src_len=args.length, tgt_len=args.length)  # fmt: skip


def median_table(samples: Sequence[CostTable]) -> CostTable:
    """Per-stage median of the times of several profiles of the same model and shape."""

    def med(i: int, name: str) -> float:
        return statistics.median(float(getattr(t.stages[i], name)) for t in samples)

    stages = tuple(replace(s, fwd_ms=med(i, "fwd_ms"), bwd_ms=med(i, "bwd_ms"))
                   for i, s in enumerate(samples[0].stages))  # fmt: skip
    return replace(samples[0], stages=stages, notes=f"median of {len(samples)} profiles")


def timed_step(runner: PipelineRunner, data: Inputs, sync: bool) -> float:
    for p in runner.parameters():
        p.grad = None
    if sync:
        dist.barrier()
    t0 = time.perf_counter()
    runner.step(data[0], data[1], float(data[1].numel()))
    return (time.perf_counter() - t0) * 1e3


def err_pct(pred: float, meas: float) -> float:
    return round(100.0 * (pred / meas - 1.0), 2)


# ----------------------------------------------------------------------------- ws1


def run_ws1(args: argparse.Namespace) -> list[dict[str, Any]]:
    ctx, n, data = common.cpu_pipeline(args, 1)
    looped = Placement.from_groups([[i] for i in range(n)], 1)
    cases = [(s, m) for m in args.micro for s in ("looped_bfs", "interleaved_1f1b")]
    runners = {c: common.runner_for(args, ctx, looped, *c) for c in cases}
    for r in runners.values():  # build the buckets, warm up
        for _ in range(2):
            timed_step(r, data, False)
    models = {m: common.gnmt_stages(args) for m in args.micro}
    samples: dict[int, list[CostTable]] = {m: [] for m in args.micro}
    times: dict[tuple[str, int], list[float]] = {c: [] for c in cases}
    for _ in range(args.rounds):  # interleaved: drift in the machine's speed hits all alike
        for m in args.micro:
            samples[m].append(profile_once(models[m], args, m))
        for c, r in runners.items():
            times[c].append(timed_step(r, data, False))
    ctx.close()
    out = []
    for (sched, m), ts in times.items():
        table = median_table(samples[m])
        pred = simulate(table, [0] * n, "gpipe", m, ZERO_LINK).step_ms  # one rank: M * sum
        meas = statistics.median(ts)
        out.append({"case": f"ws1 K={n} {sched} M={m}", "predictor": "profile",
                    "pred_ms": round(pred, 3),
                    "meas_ms": round(meas, 3), "err_pct": err_pct(pred, meas)})  # fmt: skip
    return out


# ----------------------------------------------------------------------------- pp2


def measure_link(rank: int, sizes: tuple[int, int] = (1024, 1 << 20), reps: int = 30) -> Link:
    """Latency and bandwidth of one gloo message, fitted to ping-pong medians at two sizes."""
    one_way = []
    for nbytes in sizes:
        dist.barrier()
        one_way.append(pingpong(nbytes // 4, rank, reps + 3, warmup=3) / 1e3)
    slope = max((one_way[1] - one_way[0]) / (sizes[1] - sizes[0]), 1e-12)
    lat = max(one_way[0] - slope * sizes[0], 0.0)
    return parse_link(f"custom:{1 / slope / 1e9:.6g}:{lat * 1e6:.6g}")


def gather(obj: Any) -> list[Any]:
    out: list[Any] = [None, None]
    dist.all_gather_object(out, obj)
    return out


def timeline_table(runner: PipelineRunner, base: CostTable) -> CostTable:
    """A two-stage table (one per rank) from this run's timeline: mean F (+ loss) and B time
    per micro-batch of each virtual stage, gathered from both ranks."""
    mine: dict[int, list[float]] = {}
    for e in runner.timeline.resolve():
        ms = (e.end_ns - e.start_ns) / 1e6
        slot = mine.setdefault(e.stage, [0.0, 0.0, 0.0])
        if e.kind in ("F", "loss"):
            slot[0] += ms
        elif e.kind in ("B", "W"):
            slot[1] += ms
        if e.kind == "F":
            slot[2] += 1
    both = gather(mine)
    merged = {**both[0], **both[1]}
    groups = runner.placement.groups
    stages = []
    for v in sorted(merged):
        f, b, count = merged[v]
        last = base.stages[groups[v][-1]]
        stages.append(StageCost(f"v{v}", f / count, b / count, 0, 0, 0, 0, 0,
                                last.out_bytes_per_mb))  # fmt: skip
    return replace(base, stages=tuple(stages), source="timeline")


def pick_placement(args: argparse.Namespace, models: dict[int, list[nn.Module]]) -> Placement:
    """Contiguous, balanced on a first profile taken with both ranks busy."""
    m = args.micro[-1]
    dist.barrier()
    table = median_table(gather(profile_once(models[m], args, m)))
    sizes = balanced_runs([s.fwd_ms + s.bwd_ms for s in table.stages], 2)
    return contiguous(table.num_stages, 2, sizes)


def pp2_worker(args: argparse.Namespace) -> dict[str, Any]:
    ctx, _, data = common.cpu_pipeline(args, 2, timeout_s=300)
    rank = ctx.rank
    link = measure_link(rank)
    models = {m: common.gnmt_stages(args) for m in args.micro}
    placement = pick_placement(args, models)
    cases = [(s, m) for s in ("gpipe", "1f1b") for m in args.micro]
    runners = {c: common.runner_for(args, ctx, placement, *c) for c in cases}
    for r in runners.values():
        for _ in range(2):
            timed_step(r, data, True)
        r.timeline.enable()  # record the measured steps themselves
    busy: dict[int, list[CostTable]] = {m: [] for m in args.micro}
    alone: dict[int, list[CostTable]] = {m: [] for m in args.micro}
    times: dict[tuple[str, int], list[float]] = {c: [] for c in cases}
    for _ in range(args.rounds):  # interleaved: drift in the machine's speed hits all alike
        for m in args.micro:
            dist.barrier()
            busy[m].append(profile_once(models[m], args, m))
            dist.barrier()
            if rank == 0:
                alone[m].append(profile_once(models[m], args, m))
            dist.barrier()
        for c, r in runners.items():
            times[c].append(timed_step(r, data, True))
    alone = {m: gather(alone[m])[0] for m in args.micro}  # rank 0 profiled them
    busy_t = {m: median_table([t for ts in gather(busy[m]) for t in ts]) for m in args.micro}
    alone_t = {m: median_table(alone[m]) for m in args.micro}
    timelines = {c: timeline_table(r, busy_t[c[1]]) for c, r in runners.items()}
    out = []
    pl = list(placement.stage_ranks)
    for sched, m in runners:
        meas = max(gather(statistics.median(times[(sched, m)])))
        other = "1f1b" if sched == "gpipe" else "gpipe"
        preds = {
            "": simulate(timelines[(sched, m)], [0, 1], sched, m, link).step_ms,
            "_profiled": simulate(busy_t[m], pl, sched, m, link).step_ms,
            "_alone": simulate(alone_t[m], pl, sched, m, link).step_ms,
            "_cross": simulate(timelines[(other, m)], [0, 1], sched, m, link).step_ms,
        }
        case: dict[str, Any] = {"case": f"pp2 {sched} M={m}", "predictor": "timeline",
                                "placement": placement.describe(),
                                "meas_ms": round(meas, 3)}  # fmt: skip
        for key, pred in preds.items():
            case[f"pred{key}_ms"] = round(pred, 3)
            case[f"err{key}_pct"] = err_pct(pred, meas)
        out.append(case)
    ctx.close()
    slow = {m: _total(busy_t[m]) / _total(alone_t[m]) - 1 for m in args.micro}
    return {"cases": out, "link": link.spec,
            "contention_slowdown_pct": {str(m): round(100 * x, 1) for m, x in slow.items()},
            "stage_ms_busy": {str(m): [round(s.fwd_ms + s.bwd_ms, 3) for s in busy_t[m].stages]
                              for m in args.micro},
            "stage_ms_alone": {str(m): [round(s.fwd_ms + s.bwd_ms, 3) for s in alone_t[m].stages]
                               for m in args.micro}}  # fmt: skip


def _total(t: CostTable) -> float:
    return sum(s.fwd_ms + s.bwd_ms for s in t.stages)


# ----------------------------------------------------------------------------- main


def table_text(cases: Sequence[dict[str, Any]]) -> str:
    cols = [("err_profiled_pct", "profiled"), ("err_alone_pct", "alone"),
            ("err_cross_pct", "cross-tl")]  # fmt: skip
    head = f"{'case':<30}{'predictor':>10}{'predicted ms':>13}{'measured ms':>12}{'error':>9}"
    rows = [head + "".join(f"{name:>10}" for _, name in cols)]
    for c in cases:
        extra = "".join(f"{c[k]:>+9.1f}%" for k, _ in cols if k in c)
        rows.append(f"{c['case']:<30}{c['predictor']:>10}{c['pred_ms']:>13.2f}{c['meas_ms']:>12.2f}"
                    f"{c['err_pct']:>+8.1f}%{extra}")  # fmt: skip
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = common.parser(__name__, __doc__)
    common.add_model_args(ap)
    ap.add_argument("--micro", type=int, nargs="+", default=[2, 4])
    ap.add_argument(
        "--rounds",
        type=int,
        default=15,
        help="rounds of (one profile pass per M, one step per case)",
    )
    ap.add_argument("--skip-pp2", action="store_true")
    ap.add_argument("--skip-ws1", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT, help="the result JSON (committed)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    cases: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    if not args.skip_ws1:
        cases += run_ws1(args)
        print(table_text(cases), flush=True)
    if not args.skip_pp2:
        res = launch(pp2_worker, args, nproc=2, timeout_s=600, threads_per_worker=1)[0]
        cases += res.pop("cases")
        extra = res
    print(table_text(cases))
    errs = [abs(c["err_pct"]) for c in cases]
    other = {k: max((abs(c[f"err_{k}_pct"]) for c in cases if f"err_{k}_pct" in c), default=None)
             for k in ("profiled", "alone", "cross")}  # fmt: skip
    verdict = {
        "cases": cases,
        "max_abs_err_pct": max(errs, default=0.0),
        "max_abs_err_pct_pp2_by_predictor": other,
        "goal_pct": GOAL_PCT,
        "goal_met": bool(errs) and max(errs) <= GOAL_PCT,
        **extra,
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "seconds": round(time.perf_counter() - t0, 1),
        "command": common.command(__name__, argv),
        "machine": common.machine(),
    }
    return common.finish(verdict, args.out)
