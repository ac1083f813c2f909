"""Event-by-event simulation of one pipelined training step.

Each rank executes its ordered action list (``parallel.schedules``).  ``F`` of virtual
stage ``v`` for micro-batch ``m`` starts when its rank is free and the activation of
``F(v-1, m)`` has arrived; ``B(v, m)`` waits for the gradient of ``B(v+1, m)`` (the last
stage's ``B`` follows its own ``F``).  A message between ranks takes
``latency + bytes / bandwidth`` (sends are asynchronous, links do not contend); on one rank
it is free.  After its last backward a rank all-reduces the tied embedding/generator
gradient with the other rank holding it (if any) and, with ``dp > 1``, its gradients
across the data-parallel replicas (ring all-reduce on the same link model,
:mod:`parallel.planning.links`).

Schedule ``greedy`` is a dynamic dataflow executor (like TensorFlow's, the environment of
the learned placer): any placement; a free rank runs the ready backward with the lowest
micro-batch first, else the ready forward with the lowest micro-batch, with at most
``R - v`` micro-batches in flight on virtual stage ``v`` (1F1B-like memory).  Its executed
per-rank orders are returned, so a runtime that takes explicit orders can replay it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from parallel.errors import PlacementError
from parallel.planning.costs import CostTable
from parallel.planning.links import Link, allreduce_ms
from parallel.schedules import (
    BACKWARD,
    FORWARD,
    SCHEDULES,
    Action,
    cached_orders,
    group_virtual_stages,
)

ALL_SCHEDULES: tuple[str, ...] = (*SCHEDULES, "greedy")


class Event(NamedTuple):
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

    def transfers_ms(self, link: Link) -> tuple[list[float], list[float]]:
        """Input transfer time of F(v) (from v-1) and of B(v) (from v+1), per stage."""
        r, nv = self.rank_of, len(self.rank_of)
        xf = [0.0] * nv
        xb = [0.0] * nv
        for v in range(nv - 1):
            if r[v] != r[v + 1]:
                xf[v + 1] = xb[v] = link.transfer_ms(self.out_bytes[v])
        return xf, xb


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


def _check_orders(pipe: Pipeline, orders: Sequence[Sequence[Action]], microbatches: int) -> None:
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


_Prep = tuple[tuple[tuple[int, int, int], ...], ...]  # per rank: (producer id, own id, slot)


def _ids(a: Action, nv: int, m: int) -> tuple[int, int, int]:
    """Producer id (-1: none), own id and slot (F: v, B: nv+v) of ``a``; ids are slot*M+mb.
    B(v) needs only B(v+1): that implies F(v) on the same rank ran before."""
    v = a.stage
    if a.kind == FORWARD:
        return (v - 1) * m + a.mb if v else -1, v * m + a.mb, v
    dep = v * m + a.mb if v == nv - 1 else (nv + v + 1) * m + a.mb
    return dep, (nv + v) * m + a.mb, nv + v


def _prepare(orders: Sequence[Sequence[Action]], nv: int, m: int) -> _Prep:
    return tuple(tuple(_ids(a, nv, m) for a in ops) for ops in orders)


@lru_cache(maxsize=512)
def _prepared(schedule: str, k: int, m: int, v: int) -> _Prep:
    return _prepare(cached_orders(schedule, k, m, v), k * v, m)


def _execute(
    prep: _Prep, pipe: Pipeline, link: Link, orders: Sequence[Sequence[Action]], m: int
) -> tuple[list[list[float]], list[float]]:
    """Start times per rank and action, and each rank's finish time."""
    xf, xb = pipe.transfers_ms(link)
    dur, extra = [*pipe.fwd_ms, *pipe.bwd_ms], [*xf, *xb]
    end = [-1.0] * (2 * len(pipe.rank_of) * m)
    starts = [[0.0] * len(ops) for ops in prep]
    free = [0.0] * pipe.num_ranks
    ptr = [0] * pipe.num_ranks
    remaining = sum(len(o) for o in prep)
    while remaining:
        progressed = False
        for r, ops in enumerate(prep):
            i, t, st = ptr[r], free[r], starts[r]
            while i < len(ops):
                dep, own, slot = ops[i]
                if dep >= 0:
                    e = end[dep]
                    if e < 0:
                        break
                    e += extra[slot]
                    if e > t:
                        t = e
                st[i] = t
                t += dur[slot]
                end[own] = t
                i += 1
            if i != ptr[r]:
                remaining -= i - ptr[r]
                ptr[r], free[r], progressed = i, t, True
        if not progressed:
            heads = [f"rank{r}:{ops[ptr[r]]}" for r, ops in enumerate(orders) if ptr[r] < len(ops)]
            raise PlacementError(f"schedule deadlocks; blocked actions {' '.join(heads)}")
    return starts, free


def run_orders(
    pipe: Pipeline,
    orders: Sequence[Sequence[Action]],
    microbatches: int,
    link: Link,
) -> list[Event]:
    """Execute explicit per-rank orders (checked); ``PlacementError`` on deadlock."""
    if len(orders) != pipe.num_ranks:
        raise PlacementError(f"orders for {len(orders)} ranks, expected {pipe.num_ranks}")
    _check_orders(pipe, orders, microbatches)
    prep = _prepare(orders, len(pipe.rank_of), microbatches)
    starts, _ = _execute(prep, pipe, link, orders, microbatches)
    return _events(pipe, orders, prep, starts)


def _events(
    pipe: Pipeline, orders: Sequence[Sequence[Action]], prep: _Prep, starts: list[list[float]]
) -> list[Event]:
    dur = [*pipe.fwd_ms, *pipe.bwd_ms]
    return [
        Event(r, a, t, t + dur[p[2]])
        for r, (ops, st, pr) in enumerate(zip(orders, starts, prep, strict=True))
        for a, t, p in zip(ops, st, pr, strict=True)
    ]


def run_greedy(pipe: Pipeline, microbatches: int, link: Link) -> list[Event]:
    """Dynamic dataflow execution (see module doc); deadlock-free by construction.

    Per virtual stage, forwards (and backwards) become ready in micro-batch order, so each
    rank only looks at the head of its stages' FIFO queues."""
    nv = len(pipe.rank_of)
    queues: list[deque[tuple[float, int]]] = [deque() for _ in range(2 * nv)]  # slot: F v | B v
    queues[0].extend((0.0, m) for m in range(microbatches))
    slots_of: list[list[int]] = [[] for _ in range(pipe.num_ranks)]
    for v, r in enumerate(pipe.rank_of):
        slots_of[r] += [nv + v, v]
    inflight = [0] * nv
    xf, xb = pipe.transfers_ms(link)
    dur, extra = [*pipe.fwd_ms, *pipe.bwd_ms], [*xf, *xb]
    free = [0.0] * pipe.num_ranks
    events: list[Event] = []
    for _ in range(2 * nv * microbatches):
        best: tuple[float, tuple[int, int, int], int, int] | None = None
        for r, slots in enumerate(slots_of):
            for slot in slots:
                q = queues[slot]
                if not q or (slot < nv and inflight[slot] >= nv - slot):
                    continue
                t, m = q[0]
                start = max(t, free[r])  # B before F, lower mb, deeper B / shallower F
                prio = (0, m, nv - slot) if slot >= nv else (1, m, slot)
                if best is None or (start, prio) < (best[0], best[1]):
                    best = (start, prio, r, slot)
        if best is None:  # pragma: no cover - excluded by the in-flight argument
            raise PlacementError("greedy schedule deadlocked")
        start, _, r, slot = best
        _, m = queues[slot].popleft()
        free[r] = start + dur[slot]
        fwd = slot < nv
        v = slot if fwd else slot - nv
        events.append(Event(r, Action(v, FORWARD if fwd else BACKWARD, m), start, free[r]))
        inflight[v] += 1 if fwd else -1
        nxt = (slot + 1 if v + 1 < nv else nv + v) if fwd else (slot - 1 if v > 0 else -1)
        if nxt >= 0:
            queues[nxt].append((free[r] + extra[nxt], m))
    return events


def static_bytes(costs: CostTable, placement: Sequence[int], num_ranks: int) -> list[int]:
    out = [0] * num_ranks
    for s, r in zip(costs.stages, placement, strict=True):
        out[r] += s.static_bytes
    last = costs.stages[-1]
    if costs.tied_param_bytes and placement[0] == placement[-1] and last.param_bytes:
        out[placement[0]] -= round(costs.tied_param_bytes * last.static_bytes / last.param_bytes)
    return out


def _peaks(pipe: Pipeline, prep: _Prep, static: Sequence[int]) -> list[int]:
    nv, keep, more = len(pipe.rank_of), pipe.act_keep, pipe.act_extra
    out = []
    for ops, base in zip(prep, static, strict=True):
        live = peak = 0
        for _, _, slot in ops:
            if slot < nv:
                live += keep[slot]
                if live > peak:
                    peak = live
            else:
                if live + more[slot - nv] > peak:
                    peak = live + more[slot - nv]
                live -= keep[slot - nv]
        out.append(base + peak)
    return out


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
    orders: Sequence[Sequence[Action]] | None = None,
    keep_events: bool = True,
) -> SimResult:
    """Simulate one training step of ``costs`` (full batch split into ``microbatches``).

    ``orders`` (optional, ``schedule="custom"``) replays explicit per-rank orders over the
    placement's virtual stages.  ``keep_events=False`` skips the event list (faster).
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
    nv = len(groups)
    if schedule == "greedy":
        ev = run_greedy(pipe, microbatches, link)
        ranked: list[list[Action]] = [[] for _ in range(k)]
        starts: list[list[float]] = [[] for _ in range(k)]
        for e in ev:
            ranked[e.rank].append(e.action)
            starts[e.rank].append(e.start_ms)
        orders = ranked
        prep = _prepare(orders, nv, microbatches)
        finish = [max((e.end_ms for e in ev if e.rank == r), default=0.0) for r in range(k)]
    else:
        if schedule == "custom":
            if orders is None:
                raise PlacementError("schedule 'custom' needs explicit orders")
            if len(orders) != k:
                raise PlacementError(f"orders for {len(orders)} ranks, expected {k}")
            _check_orders(pipe, orders, microbatches)
            prep = _prepare(orders, nv, microbatches)
        else:
            orders = cached_orders(schedule, k, microbatches, nv // k)
            prep = _prepared(schedule, k, microbatches, nv // k)
        starts, finish = _execute(prep, pipe, link, orders, microbatches)
    events = _events(pipe, orders, prep, starts) if keep_events else []
    return _result(table, placement, pipe, prep, finish, groups, link, dp, events, orders)


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
    prep: _Prep,
    finish: list[float],
    groups: Sequence[Sequence[int]],
    link: Link,
    dp: int,
    events: list[Event],
    orders: Sequence[Sequence[Action]],
) -> SimResult:
    k = pipe.num_ranks
    m = sum(len(o) for o in prep) // (2 * len(pipe.rank_of))  # micro-batches
    busy = [0.0] * k
    for f, b_ms, r in zip(pipe.fwd_ms, pipe.bwd_ms, pipe.rank_of, strict=True):
        busy[r] += m * (f + b_ms)
    done, comm = list(finish), [0.0] * k
    a, b = placement[0], placement[-1]
    if table.tied_param_bytes and a != b:
        comm[a] = comm[b] = allreduce_ms(link, table.tied_param_bytes, 2)
        done[a] = done[b] = max(finish[a], finish[b]) + comm[a]
    static = static_bytes(table, placement, k)
    grads = [0] * k
    for s, r in zip(table.stages, placement, strict=True):
        grads[r] += s.grad_bytes
    dp_ms = [allreduce_ms(link, g, dp) for g in grads]
    step = max(d + x for d, x in zip(done, dp_ms, strict=True))
    return SimResult(
        step_ms=step,
        busy_ms=tuple(busy),
        busy_frac=tuple(x / step if step > 0 else 0.0 for x in busy),
        bubble_frac=1.0 - sum(busy) / (k * step) if step > 0 else 0.0,
        peak_bytes=tuple(_peaks(pipe, prep, static)),
        static_bytes=tuple(static),
        comm_ms=tuple(c + x for c, x in zip(comm, dp_ms, strict=True)),
        events=tuple(events),
        orders=tuple(tuple(o) for o in orders),
        virtual_stages=tuple(tuple(g) for g in groups),
    )
