"""Event-by-event simulation of one pipelined training step.

Each rank executes its ordered action list (``parallel.schedules``).  ``F`` of virtual
stage ``v`` for micro-batch ``m`` starts when its rank is free and the activation of
``F(v-1, m)`` has arrived; ``B(v, m)`` waits for the gradient of ``B(v+1, m)`` (the last
stage's ``B`` follows its own ``F``).  A message between ranks takes
``latency + bytes / bandwidth`` (sends are asynchronous, links do not contend); on one rank
it is free.  After its last backward a rank all-reduces the tied embedding/generator
gradient with the other rank holding it (if any) and, with ``dp > 1``, its gradients
across the data-parallel replicas (ring all-reduce on the same link model).

Schedule ``greedy`` is a dynamic dataflow executor (like TensorFlow's, the environment of
the learned placer): any placement; a free rank runs the ready backward with the lowest
micro-batch first, else the ready forward with the lowest micro-batch, with at most
``R - v`` micro-batches in flight on virtual stage ``v`` (1F1B-like memory).  Its executed
per-rank orders are returned, so a runtime that takes explicit orders can replay it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from parallel.costs import CostTable
from parallel.errors import PlacementError
from parallel.schedules import (
    BACKWARD,
    FORWARD,
    SCHEDULES,
    Action,
    Orders,
    group_virtual_stages,
    schedule_orders,
)

ALL_SCHEDULES: tuple[str, ...] = (*SCHEDULES, "greedy")


@dataclass(frozen=True)
class Link:
    name: str
    bandwidth_bytes_per_s: float
    latency_s: float

    def transfer_ms(self, nbytes: int) -> float:
        if nbytes <= 0:
            return 0.0
        return (self.latency_s + nbytes / self.bandwidth_bytes_per_s) * 1e3

    @property
    def spec(self) -> str:
        if self.name in LINK_PRESETS or self.name == "zero":
            return self.name
        return f"custom:{self.bandwidth_bytes_per_s / 1e9:g}:{self.latency_s * 1e6:g}"


LINK_PRESETS: dict[str, Link] = {
    "nvlink": Link("nvlink", 300e9, 5e-6),
    "pcie": Link("pcie", 25e9, 10e-6),
    "eth100": Link("eth100", 12.5e9, 30e-6),
}
ZERO_LINK = Link("zero", math.inf, 0.0)


def parse_link(spec: str) -> Link:
    """``nvlink`` | ``pcie`` | ``eth100`` | ``zero`` | ``custom:GB_PER_S:LATENCY_US``."""
    if spec in LINK_PRESETS:
        return LINK_PRESETS[spec]
    if spec == "zero":
        return ZERO_LINK
    parts = spec.split(":")
    if len(parts) == 3 and parts[0] == "custom":
        try:
            gbps, lat_us = float(parts[1]), float(parts[2])
        except ValueError:
            gbps = lat_us = -1.0
        if gbps > 0 and lat_us >= 0 and math.isfinite(gbps) and math.isfinite(lat_us):
            return Link(spec, gbps * 1e9, lat_us * 1e-6)
    raise PlacementError(
        f"bad link {spec!r}: use {', '.join(LINK_PRESETS)}, zero or custom:GB_PER_S:LATENCY_US"
    )


@dataclass(frozen=True)
class Event:
    rank: int
    action: Action
    start_ms: float
    end_ms: float


@dataclass(frozen=True)
class SimResult:
    step_ms: float
    busy_ms: tuple[float, ...]
    busy_frac: tuple[float, ...]
    bubble_frac: float
    peak_bytes: tuple[int, ...]
    static_bytes: tuple[int, ...]
    comm_ms: tuple[float, ...]  # end-of-step all-reduce time per rank (tied + dp)
    events: tuple[Event, ...]
    orders: tuple[tuple[Action, ...], ...]
    virtual_stages: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Pipeline:
    """Virtual-stage view of a placement: costs per virtual stage for one micro-batch."""

    rank_of: tuple[int, ...]
    fwd_ms: tuple[float, ...]
    bwd_ms: tuple[float, ...]
    out_bytes: tuple[int, ...]
    act_keep: tuple[int, ...]  # held from F until B
    act_extra: tuple[int, ...]  # re-materialised during B (recompute)
    num_ranks: int

    def ready_ms(self, a: Action, end: dict[tuple[str, int, int], float], link: Link) -> float:
        """Arrival time of ``a``'s input, or ``-1`` if its producer has not run."""
        v, m, last = a.stage, a.mb, len(self.rank_of) - 1
        if a.kind == FORWARD:
            if v == 0:
                return 0.0
            src, nbytes = v - 1, self.out_bytes[v - 1]
            key = (FORWARD, src, m)
        else:
            if (FORWARD, v, m) not in end:
                return -1.0
            src, nbytes = (v, 0) if v == last else (v + 1, self.out_bytes[v])
            key = (FORWARD, v, m) if v == last else (BACKWARD, src, m)
        t = end.get(key)
        if t is None:
            return -1.0
        same = self.rank_of[src] == self.rank_of[v]
        return t if same else t + link.transfer_ms(nbytes)

    def duration_ms(self, a: Action) -> float:
        return self.fwd_ms[a.stage] if a.kind == FORWARD else self.bwd_ms[a.stage]


def build_pipeline(
    costs: CostTable,
    groups: Sequence[Sequence[int]],
    placement: Sequence[int],
    num_ranks: int,
    recompute: bool = False,
) -> Pipeline:
    st = costs.stages
    fwd = [sum(st[s].fwd_ms for s in g) for g in groups]
    full = [sum(st[s].act_bytes_per_mb for s in g) for g in groups]
    keep = [sum(st[s].act_bytes_per_mb_recompute for s in g) for g in groups] if recompute else full
    bwd = [
        sum(st[s].bwd_ms for s in g) + (f if recompute else 0.0)
        for g, f in zip(groups, fwd, strict=True)
    ]
    return Pipeline(
        rank_of=tuple(placement[g[0]] for g in groups),
        fwd_ms=tuple(fwd),
        bwd_ms=tuple(bwd),
        out_bytes=tuple(st[g[-1]].out_bytes_per_mb for g in groups),
        act_keep=tuple(keep),
        act_extra=tuple(f - k for f, k in zip(full, keep, strict=True)),
        num_ranks=num_ranks,
    )


def _check_orders(pipe: Pipeline, orders: Orders, microbatches: int) -> None:
    nv = len(pipe.rank_of)
    want = {(k, v, m) for k in (FORWARD, BACKWARD) for v in range(nv) for m in range(microbatches)}
    seen: set[tuple[str, int, int]] = set()
    for r, ops in enumerate(orders):
        for a in ops:
            key = (a.kind, a.stage, a.mb)
            if key not in want or key in seen or pipe.rank_of[a.stage] != r:
                raise PlacementError(f"bad schedule: action {a} on rank {r} (duplicate/foreign)")
            seen.add(key)
    if seen != want:
        missing = sorted(want - seen)[:3]
        raise PlacementError(f"bad schedule: missing actions {missing}")


def run_orders(pipe: Pipeline, orders: Orders, microbatches: int, link: Link) -> list[Event]:
    """Execute fixed per-rank orders; ``PlacementError`` on deadlock."""
    if len(orders) != pipe.num_ranks:
        raise PlacementError(f"orders for {len(orders)} ranks, expected {pipe.num_ranks}")
    _check_orders(pipe, orders, microbatches)
    end: dict[tuple[str, int, int], float] = {}
    free = [0.0] * pipe.num_ranks
    ptr = [0] * pipe.num_ranks
    events: list[Event] = []
    remaining = sum(len(o) for o in orders)
    while remaining:
        progressed = False
        for r, ops in enumerate(orders):
            while ptr[r] < len(ops):
                a = ops[ptr[r]]
                ready = pipe.ready_ms(a, end, link)
                if ready < 0:
                    break
                start = max(free[r], ready)
                free[r] = end[(a.kind, a.stage, a.mb)] = start + pipe.duration_ms(a)
                events.append(Event(r, a, start, free[r]))
                ptr[r] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            heads = [f"rank{r}:{ops[ptr[r]]}" for r, ops in enumerate(orders) if ptr[r] < len(ops)]
            raise PlacementError(f"schedule deadlocks; blocked actions {' '.join(heads)}")
    return events


def run_greedy(pipe: Pipeline, microbatches: int, link: Link) -> list[Event]:
    """Dynamic dataflow execution (see module doc); deadlock-free by construction."""
    nv = len(pipe.rank_of)
    pool: list[dict[Action, float]] = [{} for _ in range(pipe.num_ranks)]
    for m in range(microbatches):
        pool[pipe.rank_of[0]][Action(0, FORWARD, m)] = 0.0
    inflight = [0] * nv
    end: dict[tuple[str, int, int], float] = {}
    free = [0.0] * pipe.num_ranks
    events: list[Event] = []

    def prio(a: Action) -> tuple[int, int, int]:
        return (0, a.mb, -a.stage) if a.kind == BACKWARD else (1, a.mb, a.stage)

    for _ in range(2 * nv * microbatches):
        best: tuple[float, int, Action] | None = None
        for r, cand in enumerate(pool):
            ok = [
                (t, a)
                for a, t in cand.items()
                if a.kind == BACKWARD or inflight[a.stage] < nv - a.stage
            ]
            if not ok:
                continue
            now = [a for t, a in ok if t <= free[r]]
            if now:
                start, a = free[r], min(now, key=prio)
            else:
                start = min(t for t, _ in ok)
                a = min((a for t, a in ok if t == start), key=prio)
            if best is None or start < best[0]:
                best = (start, r, a)
        if best is None:  # pragma: no cover - excluded by the in-flight argument above
            raise PlacementError("greedy schedule deadlocked")
        start, r, a = best
        del pool[r][a]
        free[r] = end[(a.kind, a.stage, a.mb)] = start + pipe.duration_ms(a)
        events.append(Event(r, a, start, free[r]))
        inflight[a.stage] += 1 if a.kind == FORWARD else -1
        nxt = _released(a, nv)
        if nxt is not None:
            pool[pipe.rank_of[nxt.stage]][nxt] = pipe.ready_ms(nxt, end, link)
    return events


def _released(a: Action, nv: int) -> Action | None:
    if a.kind == FORWARD:
        return (
            Action(a.stage + 1, FORWARD, a.mb)
            if a.stage + 1 < nv
            else Action(a.stage, BACKWARD, a.mb)
        )
    return Action(a.stage - 1, BACKWARD, a.mb) if a.stage > 0 else None


def static_bytes(costs: CostTable, placement: Sequence[int], num_ranks: int) -> list[int]:
    out = [0] * num_ranks
    for s, r in zip(costs.stages, placement, strict=True):
        out[r] += s.static_bytes
    last = costs.stages[-1]
    if costs.tied_param_bytes and placement[0] == placement[-1] and last.param_bytes:
        out[placement[0]] -= round(costs.tied_param_bytes * last.static_bytes / last.param_bytes)
    return out


def peak_bytes(pipe: Pipeline, events: Sequence[Event], static: Sequence[int]) -> list[int]:
    live, peak = [0] * pipe.num_ranks, [0] * pipe.num_ranks
    for e in sorted(events, key=lambda e: (e.rank, e.start_ms)):
        r, v = e.rank, e.action.stage
        if e.action.kind == FORWARD:
            live[r] += pipe.act_keep[v]
            peak[r] = max(peak[r], live[r])
        else:
            peak[r] = max(peak[r], live[r] + pipe.act_extra[v])
            live[r] -= pipe.act_keep[v]
    return [s + p for s, p in zip(static, peak, strict=True)]


def _allreduce_ms(link: Link, nbytes: int, parties: int) -> float:
    if parties < 2 or nbytes <= 0:
        return 0.0
    steps = 2 * (parties - 1)
    return (steps * link.latency_s + steps / parties * nbytes / link.bandwidth_bytes_per_s) * 1e3


def simulate(
    costs: CostTable,
    placement: Sequence[int],
    schedule: str,
    microbatches: int,
    link: Link,
    *,
    num_ranks: int | None = None,
    recompute: bool = False,
    dp: int = 1,
    orders: Orders | None = None,
) -> SimResult:
    """Simulate one training step of ``costs`` (full batch split into ``microbatches``).

    ``orders`` (optional, ``schedule="custom"``) replays explicit per-rank orders over the
    placement's virtual stages.
    """
    k = num_ranks if num_ranks is not None else max(placement) + 1
    if len(placement) != costs.num_stages:
        raise PlacementError(
            f"placement has {len(placement)} stages, cost table has {costs.num_stages}"
        )
    if schedule not in (*ALL_SCHEDULES, "custom"):
        raise PlacementError(
            f"unknown schedule {schedule!r}; choose from {', '.join(ALL_SCHEDULES)}"
        )
    if dp < 1:
        raise PlacementError(f"dp must be >= 1, got {dp}")
    table = costs.for_microbatches(microbatches)
    if schedule in ("greedy", "custom"):
        if any(not 0 <= r < k for r in placement):
            raise PlacementError(f"placement ranks {list(placement)} outside 0..{k - 1}")
        groups = placement_runs(placement)
    else:
        groups = group_virtual_stages(placement, k)
    pipe = build_pipeline(table, groups, placement, k, recompute)
    if schedule == "greedy":
        events = run_greedy(pipe, microbatches, link)
    else:
        if schedule == "custom":
            if orders is None:
                raise PlacementError("schedule 'custom' needs explicit orders")
        else:
            orders = schedule_orders(schedule, k, microbatches, len(groups) // k)
        events = run_orders(pipe, orders, microbatches, link)
    return _result(table, placement, pipe, events, groups, link, dp)


def placement_runs(placement: Sequence[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for s, r in enumerate(placement):
        if runs and placement[runs[-1][0]] == r:
            runs[-1].append(s)
        else:
            runs.append([s])
    return runs


def _result(
    table: CostTable,
    placement: Sequence[int],
    pipe: Pipeline,
    events: list[Event],
    groups: Sequence[Sequence[int]],
    link: Link,
    dp: int,
) -> SimResult:
    k = pipe.num_ranks
    finish, busy = [0.0] * k, [0.0] * k
    ordered: list[list[Action]] = [[] for _ in range(k)]
    for e in sorted(events, key=lambda e: (e.rank, e.start_ms)):
        finish[e.rank] = max(finish[e.rank], e.end_ms)
        busy[e.rank] += e.end_ms - e.start_ms
        ordered[e.rank].append(e.action)
    done, comm = list(finish), [0.0] * k
    a, b = placement[0], placement[-1]
    if table.tied_param_bytes and a != b:
        comm[a] = comm[b] = _allreduce_ms(link, table.tied_param_bytes, 2)
        done[a] = done[b] = max(finish[a], finish[b]) + comm[a]
    static = static_bytes(table, placement, k)
    grads = [0] * k
    for s, r in zip(table.stages, placement, strict=True):
        grads[r] += s.grad_bytes
    dp_ms = [_allreduce_ms(link, g, dp) for g in grads]
    step = max(d + x for d, x in zip(done, dp_ms, strict=True))
    return SimResult(
        step_ms=step,
        busy_ms=tuple(busy),
        busy_frac=tuple(x / step if step > 0 else 0.0 for x in busy),
        bubble_frac=1.0 - sum(busy) / (k * step) if step > 0 else 0.0,
        peak_bytes=tuple(peak_bytes(pipe, events, static)),
        static_bytes=tuple(static),
        comm_ms=tuple(c + x for c, x in zip(comm, dp_ms, strict=True)),
        events=tuple(events),
        orders=tuple(tuple(o) for o in ordered),
        virtual_stages=tuple(tuple(g) for g in groups),
    )
