"""Placement planner: exact search over placements x schedule x micro-batches, a REINFORCE
placer, and plan files.

Search space (``search``): every way to cut the ``S`` stages into ``V*K`` consecutive runs,
run ``j`` on rank ``j % K`` (``V = 1``: all contiguous balances; ``V >= 2``: looped /
non-contiguous placements, among them the expert ``gnmt`` one) x the torch schedules valid
for ``V`` x micro-batch counts (x recompute when a memory limit is set).  It is exact by
branch and bound: candidates are sorted by a lower bound on the step time (per rank: time
for the first micro-batch to reach it + ``M`` x its load + the backward chain below it) and
simulated until the bound passes the best simulated time.  Cut sets above
``enumeration_limit`` per ``V`` fall back to the min-max dynamic program plus neighbours.

The learned alternative, a REINFORCE placer, is in :mod:`parallel.planning.reinforce`; plan
files only hold torch-runnable results.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from parallel.errors import PlacementError
from parallel.partition import balanced_runs
from parallel.planning.costs import CostTable, digest
from parallel.planning.links import Link
from parallel.planning.simulate import placement_runs, simulate, static_bytes
from parallel.schedules import (
    MULTI_STAGE_SCHEDULES,
    SCHEDULES,
    group_virtual_stages,
    looped_placement,
    validate_schedule,
)

PLAN_KIND = "pipenmt-plan"
PLAN_VERSION = 1
Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Candidate:
    placement: tuple[int, ...]
    schedule: str
    microbatches: int
    recompute: bool
    step_ms: float  # weight-averaged over the cost tables
    peak_bytes: int  # max over ranks and tables


@dataclass(frozen=True)
class SearchSpace:
    schedules: tuple[str, ...] = SCHEDULES
    microbatches: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    max_stages_per_rank: int = 4
    memory_limit_bytes: int | None = None
    dp: int = 1
    enumeration_limit: int = 20000


@dataclass(frozen=True)
class SearchResult:
    best: Candidate | None
    considered: int
    simulated: int


def evaluate(
    tables: Sequence[CostTable],
    placement: Sequence[int],
    schedule: str,
    microbatches: int,
    link: Link,
    num_ranks: int,
    *,
    recompute: bool = False,
    dp: int = 1,
) -> Candidate:
    """Simulate on every table; weighted-mean step time and worst peak memory."""
    total = weight = 0.0
    peak = 0
    for t in tables:
        r = simulate(t, placement, schedule, microbatches, link, num_ranks=num_ranks,
                     recompute=recompute, dp=dp, keep_events=False)  # fmt: skip
        total += t.weight * r.step_ms
        weight += t.weight
        peak = max(peak, *r.peak_bytes)
    return Candidate(tuple(placement), schedule, microbatches, recompute, total / weight, peak)


def single_device_ms(tables: Sequence[CostTable], link: Link) -> float:
    s = tables[0].num_stages
    return evaluate(tables, [0] * s, "gpipe", 1, link, 1).step_ms


def best_of(
    tables: Sequence[CostTable],
    placement: Sequence[int],
    link: Link,
    num_ranks: int,
    space: SearchSpace,
) -> Candidate | None:
    """Best schedule x M for one fixed placement (e.g. the expert ``gnmt`` one)."""
    v = len(group_virtual_stages(placement, num_ranks)) // num_ranks
    best = None
    for sched, m, rc in schedule_combos(tables, num_ranks, v, space):
        c = evaluate(tables, placement, sched, m, link, num_ranks, recompute=rc, dp=space.dp)
        if fits(c, space) and (best is None or c.step_ms < best.step_ms):
            best = c
    return best


def fits(c: Candidate, space: SearchSpace) -> bool:
    return space.memory_limit_bytes is None or c.peak_bytes <= space.memory_limit_bytes


def schedule_combos(
    tables: Sequence[CostTable], k: int, v: int, space: SearchSpace
) -> list[tuple[str, int, bool]]:
    out: list[tuple[str, int, bool]] = []
    recompute = (False,) if space.memory_limit_bytes is None else (False, True)
    for sched in space.schedules:
        if v > 1 and sched not in MULTI_STAGE_SCHEDULES:
            continue
        for m in space.microbatches:
            if any(t.batch % m for t in tables):
                continue
            try:
                validate_schedule(sched, k, m, v)
            except PlacementError:
                continue
            out.extend((sched, m, rc) for rc in recompute)
    return out


def balanced_cuts(weights: Sequence[float], parts: int) -> list[int]:
    """Cut positions splitting ``weights`` into ``parts`` runs minimising the largest run
    sum: the partition of :func:`parallel.placement.balanced_runs` (the one definition),
    as positions."""
    return list(itertools.accumulate(balanced_runs(weights, parts)))[:-1]


def _cut_sets(n: int, parts: int, weights: Sequence[float], limit: int) -> list[tuple[int, ...]]:
    if math.comb(n - 1, parts - 1) <= limit:
        return list(itertools.combinations(range(1, n), parts - 1))
    base = balanced_cuts(weights, parts)
    out = {tuple(base)}
    for i, j in itertools.product(range(len(base)), repeat=2):
        for di, dj in itertools.product((-1, 0, 1), repeat=2):
            c = list(base)
            c[i] += di
            c[j] += dj
            inside = all(0 < x < n for x in c)
            if inside and all(a < b for a, b in zip(c, c[1:], strict=False)):
                out.add(tuple(c))
    return sorted(out)


def _stage_arrays(t: CostTable, m: int, recompute: bool) -> tuple[Floats, Floats]:
    tm = t.for_microbatches(m)
    f = np.array([s.fwd_ms for s in tm.stages])
    b = np.array([s.bwd_ms for s in tm.stages]) + (f if recompute else 0.0)
    return f, b


def _lower_bounds(
    tables: Sequence[CostTable],
    cuts: npt.NDArray[np.int64],
    k: int,
    m: int,
    recompute: bool,
    link: Link,
) -> Floats:
    """Valid lower bounds on the weighted step time for each cut set: the larger of the
    per-rank bound (see module doc) and micro-batch 0's whole chain with its transfers."""
    n = tables[0].num_stages
    starts = np.concatenate([np.zeros((len(cuts), 1), np.int64), cuts], axis=1)
    ends = np.concatenate([cuts, np.full((len(cuts), 1), n, np.int64)], axis=1)
    lb = np.zeros(len(cuts))
    wsum = 0.0
    for t in tables:
        f, b = _stage_arrays(t, m, recompute)
        xfer = np.array(
            [link.transfer_ms(s.out_bytes_per_mb) for s in t.for_microbatches(m).stages]
        )
        chain = f.sum() + b.sum() + (2 * xfer[cuts - 1].sum(axis=1) if k > 1 else 0.0)
        pf = np.concatenate([[0.0], np.cumsum(f)])
        pb = np.concatenate([[0.0], np.cumsum(b)])
        run = (pf[ends] - pf[starts]) + (pb[ends] - pb[starts])
        load = run.reshape(len(cuts), -1, k).sum(axis=1)
        first = starts[:, :k]
        bound = pf[first] + m * load + pb[first]
        lb += t.weight * np.maximum(bound.max(axis=1), chain)
        wsum += t.weight
    return lb / wsum


def search(
    tables: Sequence[CostTable], num_ranks: int, link: Link, space: SearchSpace
) -> SearchResult:
    """Exact (branch and bound) search; see the module doc."""
    n, k = tables[0].num_stages, num_ranks
    if not 1 <= k <= n:
        raise PlacementError(f"devices={k} must be between 1 and the stage count {n}")
    weights = [s.fwd_ms + s.bwd_ms for s in tables[0].stages]
    lbs: list[Floats] = []
    keys: list[tuple[npt.NDArray[np.int64], str, int, bool]] = []
    for v in range(1, space.max_stages_per_rank + 1):
        if v * k > n:
            break
        cuts = np.array(_cut_sets(n, v * k, weights, space.enumeration_limit), np.int64)
        cuts = cuts.reshape(len(cuts), v * k - 1)
        bounds: dict[tuple[int, bool], Floats] = {}
        for sched, m, rc in schedule_combos(tables, k, v, space):
            if (m, rc) not in bounds:
                bounds[(m, rc)] = _lower_bounds(tables, cuts, k, m, rc, link)
            lbs.append(bounds[(m, rc)])
            keys.append((cuts, sched, m, rc))
    if not lbs:
        return SearchResult(None, 0, 0)
    flat = np.concatenate(lbs)
    owner = np.repeat(np.arange(len(lbs)), [len(x) for x in lbs])
    offset = np.concatenate([[0], np.cumsum([len(x) for x in lbs])[:-1]])
    best: Candidate | None = None
    simulated = 0
    for idx in np.argsort(flat, kind="stable"):
        if best is not None and flat[idx] >= best.step_ms:
            break
        cuts, sched, m, rc = keys[owner[idx]]
        row = [int(c) for c in cuts[idx - offset[owner[idx]]]]
        sizes = [b - a for a, b in zip([0, *row], [*row, n], strict=True)]
        placement = looped_placement(sizes, k)
        if space.memory_limit_bytes is not None and any(
            max(static_bytes(t, placement, k)) > space.memory_limit_bytes for t in tables
        ):
            continue
        c = evaluate(tables, placement, sched, m, link, k, recompute=rc, dp=space.dp)
        simulated += 1
        if fits(c, space) and (best is None or c.step_ms < best.step_ms):
            best = c
    return SearchResult(best, len(flat), simulated)


# ----------------------------------------------------------------------------- plan files


@dataclass(frozen=True)
class Plan:
    placement: tuple[int, ...]
    num_ranks: int
    schedule: str
    microbatches: int
    recompute: bool = False
    dp: int = 1
    virtual_stages: tuple[tuple[int, ...], ...] = ()
    predicted_step_ms: float = 0.0
    single_device_ms: float = 0.0
    expert_step_ms: float | None = None
    link: str = ""
    cost_table: dict[str, str] = field(default_factory=dict)
    method: str = "exact"
    created: str = ""


def make_plan(
    c: Candidate,
    tables: Sequence[CostTable],
    num_ranks: int,
    link: Link,
    *,
    method: str,
    dp: int = 1,
    single_ms: float = 0.0,
    expert_ms: float | None = None,
) -> Plan:
    groups = placement_runs(c.placement)
    t0 = tables[0]
    return Plan(
        placement=c.placement, num_ranks=num_ranks, schedule=c.schedule,
        microbatches=c.microbatches, recompute=c.recompute, dp=dp,
        virtual_stages=tuple(tuple(g) for g in groups), predicted_step_ms=c.step_ms,
        single_device_ms=single_ms, expert_step_ms=expert_ms, link=link.spec,
        cost_table={"hash": digest(list(tables)), "device": t0.device, "model": t0.model,
                    "source": t0.source},
        method=method, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )  # fmt: skip


def save_plan(path: str | Path, plan: Plan) -> None:
    doc = {"kind": PLAN_KIND, "version": PLAN_VERSION, **asdict(plan)}
    Path(path).write_text(json.dumps(doc, indent=1) + "\n")


def load_plan(path: str | Path, num_stages: int, num_ranks: int | None = None) -> Plan:
    """Read a plan and check it runs ``num_stages`` stages (``PlacementError`` otherwise)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise PlacementError(f"cannot read plan {path}: {e}") from e
    if not isinstance(doc, dict) or doc.get("kind") != PLAN_KIND:
        raise PlacementError(f"{path}: not a plan file (kind != {PLAN_KIND!r})")
    if doc.pop("version", None) != PLAN_VERSION:
        raise PlacementError(f"{path}: plan version must be {PLAN_VERSION}")
    doc.pop("kind")
    try:
        plan = _plan_from_doc(doc)
    except (TypeError, ValueError) as e:
        raise PlacementError(f"{path}: malformed plan: {' '.join(str(e).split())}") from e
    _validate_plan(plan, num_stages, num_ranks, str(path))
    return plan


def _plan_from_doc(doc: dict[str, Any]) -> Plan:
    doc["placement"] = tuple(int(r) for r in doc["placement"])
    doc["virtual_stages"] = tuple(tuple(int(s) for s in g) for g in doc.get("virtual_stages", []))
    for name, kind in (("num_ranks", int), ("microbatches", int), ("dp", int)):
        if name in doc and (not isinstance(doc[name], kind) or isinstance(doc[name], bool)):
            raise ValueError(f"{name}={doc[name]!r} is not an integer")
    return Plan(**doc)


def _validate_plan(plan: Plan, num_stages: int, num_ranks: int | None, where: str) -> None:
    p, k = plan.placement, plan.num_ranks
    if len(p) != num_stages:
        raise PlacementError(f"{where}: plan places {len(p)} stages, the model has {num_stages}")
    if num_ranks is not None and k != num_ranks:
        raise PlacementError(f"{where}: plan is for {k} ranks, running with {num_ranks}")
    if plan.schedule not in SCHEDULES:
        raise PlacementError(f"{where}: schedule {plan.schedule!r} is not one of {SCHEDULES}")
    if k < 1 or sorted(set(p)) != list(range(k)):
        raise PlacementError(f"{where}: placement {list(p)} must use every rank 0..{k - 1}")
    if plan.dp < 1:
        raise PlacementError(f"{where}: dp={plan.dp} must be >= 1")
    groups = group_virtual_stages(p, k)
    validate_schedule(plan.schedule, k, plan.microbatches, len(groups) // k)
