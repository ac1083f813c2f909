"""``python -m parallel.planning.plan_cli``: search the placements of a cost table and write a
plan file (the command line of :mod:`parallel.planning.plan`; kept apart so that the planner
and the REINFORCE placer, which builds on it, do not import each other)."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

from parallel.errors import PlacementError
from parallel.planning.costs import load_cost_tables
from parallel.planning.links import parse_link
from parallel.planning.plan import (
    Candidate,
    SearchSpace,
    best_of,
    make_plan,
    save_plan,
    search,
    single_device_ms,
)
from parallel.schedules import SCHEDULES, gnmt_placement, validate_schedule


def _ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    return vals


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m parallel.planning.plan_cli", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--costs", required=True, help="cost table JSON (parallel.planning.costs)")
    ap.add_argument("--devices", type=int, required=True)
    ap.add_argument("--link", default="nvlink", help="nvlink|pcie|eth100|custom:GBps:us")
    ap.add_argument("--out", required=True)
    ap.add_argument("--schedules", default=",".join(SCHEDULES))
    ap.add_argument("--microbatches", type=_ints, default=SearchSpace.microbatches)
    ap.add_argument("--memory-gb", type=float, default=None)
    ap.add_argument("--dp", type=int, default=1)
    ap.add_argument("--max-stages-per-rank", type=int, default=4)
    ap.add_argument("--method", choices=("exact", "reinforce", "both"), default="exact")
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        return _run(args)
    except PlacementError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    tables = load_cost_tables(args.costs)
    link = parse_link(args.link)
    scheds = tuple(s for s in args.schedules.split(",") if s)
    for s in scheds:
        validate_schedule(s, 1, 1)
    limit = None if args.memory_gb is None else int(args.memory_gb * 2**30)
    space = SearchSpace(scheds, args.microbatches, args.max_stages_per_rank, limit, args.dp)
    k, n = args.devices, tables[0].num_stages
    single = single_device_ms(tables, link)
    expert = None
    layers = (n - 1) // 2
    if n == 2 * layers + 1 and 2 <= k <= layers:
        expert = best_of(tables, gnmt_placement(layers, k), link, k, space)
    found: list[tuple[str, Candidate]] = []
    if args.method in ("exact", "both"):
        res = search(tables, k, link, space)
        if res.best is not None:
            found.append(("exact", res.best))
        print(f"exact: {res.considered} candidates, {res.simulated} simulated")
    if args.method in ("reinforce", "both"):
        from parallel.planning.reinforce import reinforce  # it builds on this module

        ms = [x for x in space.microbatches if all(t.batch % x == 0 for t in tables)]
        m = found[0][1].microbatches if found else max(ms, default=1)
        rl = reinforce(tables, k, link, m, iterations=args.iterations, seed=args.seed,
                       memory_limit_bytes=limit, dp=args.dp)  # fmt: skip
        if rl.best_runnable is not None:
            found.append(("reinforce", rl.best_runnable))
        print(f"reinforce: {rl.samples} placements sampled; best with any executor: "
              f"{rl.best.step_ms if rl.best else math.inf:.3f} ms")  # fmt: skip
    if not found:
        raise PlacementError(f"no placement of {n} stages on {k} devices fits the limits")
    method, best = min(found, key=lambda x: x[1].step_ms)
    for name, c in found:
        print(f"{name}: {c.step_ms:.3f} ms {c.schedule} M={c.microbatches} {list(c.placement)}")
    if expert is not None:
        print(f"expert gnmt: {expert.step_ms:.3f} ms {expert.schedule} M={expert.microbatches}")
    print(f"single device: {single:.3f} ms; speedup {single / best.step_ms:.2f}x")
    plan = make_plan(best, tables, k, link, method=method, dp=args.dp, single_ms=single,
                     expert_ms=None if expert is None else expert.step_ms)  # fmt: skip
    save_plan(args.out, plan)
    return 0


if __name__ == "__main__":
    sys.exit(main())
