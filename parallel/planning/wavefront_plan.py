"""Choosing the time chunks C and the placement of a wavefront together.

TeraPipe (Li et al., ICML 2021) slices a sequence for a pipeline of ``K`` equal stages by
dynamic programming: with ``t(n)`` the time of a slice of ``n`` steps on one stage, the
latency of slices ``n_1..n_C`` is ``sum t(n_i) + (K - 1) * max t(n_i)``; for every
candidate maximum ``t_max`` a DP over prefix lengths minimises the sum with every slice at
most ``t_max`` (``terapipe_slices``).  For LSTM layers a time step costs the same wherever it
lies in the sequence (``t(n) = o + s * n``: per-call overhead plus steps), so the optimum is a
balanced cut into one number of chunks C (``best_uniform_chunks``), the issue's
``parallel.time_chunks``; the tests check both against brute force.

GNMT's stages are not equal (barriers, a heavier attention stage, placements with several
layers per device), so the planner (``plan_wavefront``) simulates candidate placements with
``parallel.planning.wavefront_sim``.  The chain splits into phases that run one after another
(``waves``: the bidirectional layer; the other encoder layers; the decoder from the attention
on), so devices are free to be reused across phases.  Each phase is cut into 1..``devices``
contiguous groups (``compositions``) placed by ``label`` (a phase's first group on the device
of the previous phase's last layer, the generator with the embedding); phases are improved
one at a time, then single layers are moved while that helps.  Checked against brute force
over every placement on small GNMTs: the optimum when no phase has more than one layer more
than there are devices; otherwise (gnmt3 on 2 devices) within 4%.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from parallel.errors import PlacementError
from parallel.planning.costs import CostTable
from parallel.planning.links import Link
from parallel.planning.wavefront_sim import (
    ChunkOverhead,
    WaveLayer,
    WaveResult,
    chunk_lengths,
    gnmt_wave_layers,
    simulate_wavefront,
)

SliceCost = Callable[[int], float]  # time (ms) of one slice of n steps on one stage


def slices_latency(slices: Sequence[int], slice_ms: SliceCost, stages: int) -> float:
    """Pipeline latency of ``slices`` over ``stages`` equal stages (TeraPipe's formula)."""
    times = [slice_ms(n) for n in slices]
    return sum(times) + (stages - 1) * max(times)


def terapipe_slices(steps: int, slice_ms: SliceCost, stages: int) -> tuple[float, tuple[int, ...]]:
    """TeraPipe's DP: the latency-optimal slicing of ``steps`` for ``stages`` equal stages.

    Returns (latency ms, slice lengths in order).  O(steps^3) evaluations of the DP."""
    if steps < 1 or stages < 1:
        raise PlacementError(f"need steps >= 1 and stages >= 1, got {steps}, {stages}")
    cost = [0.0] + [slice_ms(n) for n in range(1, steps + 1)]
    best: tuple[float, tuple[int, ...]] = (math.inf, ())
    for t_max in sorted(set(cost[1:])):
        total = [0.0] + [math.inf] * steps  # least sum of slice times covering a prefix
        last = [0] * (steps + 1)
        for end in range(1, steps + 1):
            for n in range(1, end + 1):
                if cost[n] <= t_max and total[end - n] + cost[n] < total[end]:
                    total[end], last[end] = total[end - n] + cost[n], n
        if math.isinf(total[steps]):
            continue
        latency = total[steps] + (stages - 1) * t_max
        if latency < best[0]:
            cut, end = [], steps
            while end:
                cut.append(last[end])
                end -= last[end]
            best = (latency, tuple(reversed(cut)))
    return best


def best_uniform_chunks(steps: int, slice_ms: SliceCost, stages: int) -> tuple[int, float]:
    """The number of balanced chunks C (``chunk_lengths``) with the least TeraPipe latency,
    and that latency (the smallest C on ties)."""
    lat = {
        c: slices_latency(chunk_lengths(steps, c), slice_ms, stages) for c in range(1, steps + 1)
    }
    c = min(lat, key=lambda c: (lat[c], c))
    return c, lat[c]


def waves(layers: Sequence[WaveLayer]) -> list[range]:
    """The chain cut into phases that run one after another: a ``whole`` layer is a phase of
    its own and a ``gather`` layer starts one (their dependencies allow no overlap)."""
    out: list[range] = []
    start = 0
    for i in range(1, len(layers) + 1):
        if i == len(layers) or layers[i].whole or layers[i].gather or layers[i - 1].whole:
            out.append(range(start, i))
            start = i
    return out


def compositions(n: int, max_parts: int) -> list[tuple[int, ...]]:
    """Group index of each of ``n`` items for every cut into 1..``max_parts`` contiguous
    non-empty groups."""
    out = []
    for parts in range(1, min(n, max_parts) + 1):
        for cuts in itertools.combinations(range(1, n), parts - 1):
            bounds = (0, *cuts, n)
            out.append(tuple(g for g in range(parts) for _ in range(bounds[g], bounds[g + 1])))
    return out


LABEL_MODES = ("tied", "share", "reuse")


def label(groups: Sequence[Sequence[int]], num_devices: int, mode: str) -> tuple[int, ...]:
    """Devices for per-phase group indices.  Phase 0's groups go on devices 0, 1, ...; a
    later phase's first group on the device of the previous phase's last layer (no transfer
    at the barrier), other groups on the lowest free devices.  The last phase's last group
    goes on the device of layer 0 (no tied all-reduce): ``tied`` gives it that device when
    it conflicts with the first group's share, ``share`` keeps the share, ``reuse`` keeps
    the share and puts the last group on layer 0's device even if the phase already uses it
    (a device may then hold two non-adjacent groups of the phase)."""
    out: list[int] = list(groups[0])
    for w, g in enumerate(groups[1:], start=1):
        k = max(g) + 1
        dev: list[int | None] = [None] * k
        share = out[-1]
        tied = out[0] if w == len(groups) - 1 else None
        if tied is None or mode == "reuse":
            dev[0] = share
        elif k == 1:
            dev[0] = tied if mode == "tied" else share
        elif tied != share:
            dev[0], dev[k - 1] = share, tied
        elif mode == "tied":
            dev[k - 1] = tied
        else:
            dev[0] = share
        used = {d for d in dev if d is not None}
        pool = [d for d in range(num_devices) if d not in used and d != tied]
        free = iter([*pool, *([tied] if tied is not None and tied not in used else [])])
        devs = [d if d is not None else next(free) for d in dev]
        if mode == "reuse" and tied is not None and k > 1 and devs[k - 2] != tied:
            devs[k - 1] = tied
        out += [devs[i] for i in g]
    return tuple(out)


@dataclass(frozen=True)
class WavePlan:
    placement: tuple[int, ...]
    chunks: int
    step_ms: float
    result: WaveResult
    considered: int  # simulations run


def chunk_options(layers: Sequence[WaveLayer]) -> list[int]:
    """1..the shortest chunked sequence (every C the runtime can cut)."""
    steps = [ly.steps for ly in layers if not ly.whole] or [1]
    return list(range(1, min(steps) + 1))


COARSE_CHUNKS = (1, 2, 4, 8, 16, 32)


def plan_wavefront(
    layers: Sequence[WaveLayer],
    num_devices: int,
    link: Link,
    overhead: ChunkOverhead | None = None,
    *,
    tied_param_bytes: int = 0,
    chunks: Sequence[int] | None = None,
    coarse: Sequence[int] | None = COARSE_CHUNKS,
) -> WavePlan:
    """The fastest (placement, C) found: phase by phase (``waves``), every cut of the phase
    into 1..``num_devices`` contiguous groups (``compositions``, devices by ``label`` in each
    of ``LABEL_MODES``), the other phases held, until no phase improves; then single layers
    moved to other devices while that helps.  Each placement is scored by its best C in
    ``coarse`` (within ``chunks``; ``None``: all of ``chunks``), then the chosen placement's
    C over all ``chunks`` (default ``chunk_options``).  Ties: fewer chunks, earlier found.
    ``considered`` counts the simulations."""
    options = list(chunks) if chunks is not None else chunk_options(layers)
    if not options or num_devices < 1:
        raise PlacementError(f"wavefront plan: devices={num_devices}, chunk options {options}")
    scout = [c for c in options if coarse is None or c in coarse] or options
    phases = waves(layers)
    count = 0
    cache: dict[tuple[int, ...], tuple[float, int]] = {}

    def best_c(p: tuple[int, ...], cs: Sequence[int]) -> tuple[float, int]:
        nonlocal count
        out = (math.inf, 0)
        for c in cs:
            count += 1
            r = simulate_wavefront(layers, p, c, link, overhead, num_devices=num_devices,
                                   tied_param_bytes=tied_param_bytes,
                                   keep_events=False)  # fmt: skip
            out = min(out, (r.step_ms, c))
        return out

    def score(groups: list[tuple[int, ...]]) -> tuple[tuple[float, int], tuple[int, ...]]:
        best: tuple[tuple[float, int], tuple[int, ...]] | None = None
        for mode in LABEL_MODES:
            p = label(groups, num_devices, mode)
            if p not in cache:
                cache[p] = best_c(p, scout)
            if best is None or cache[p] < best[0]:
                best = (cache[p], p)
        assert best is not None
        return best

    groups = [compositions(len(ph), num_devices)[-1] for ph in phases]  # most groups
    current = score(groups)
    for _ in range(len(phases) + 1):
        improved = False
        for w, ph in enumerate(phases):
            for g in compositions(len(ph), num_devices):
                got = score([*groups[:w], g, *groups[w + 1 :]])
                if got[0] < current[0]:
                    groups, current, improved = [*groups[:w], g, *groups[w + 1 :]], got, True
        if not improved:
            break
    for _ in range(len(layers)):  # then move single layers while that helps
        improved = False
        for i, d in itertools.product(range(len(layers)), range(num_devices)):
            p = (*current[1][:i], d, *current[1][i + 1 :])
            if p not in cache:
                cache[p] = best_c(p, scout)
            if cache[p] < current[0]:
                current, improved = (cache[p], p), True
        if not improved:
            break
    placement = current[1]
    step, c = best_c(placement, options)
    res = simulate_wavefront(layers, placement, c, link, overhead, num_devices=num_devices,
                             tied_param_bytes=tied_param_bytes)  # fmt: skip
    return WavePlan(placement, c, step, res, count)


def plan_gnmt_wavefront(
    costs: CostTable,
    num_devices: int,
    link: Link,
    overhead: ChunkOverhead | None = None,
    chunks: Sequence[int] | None = None,
) -> WavePlan:
    """``plan_wavefront`` of a GNMT cost table (whole batch)."""
    table = costs.for_microbatches(1)
    return plan_wavefront(gnmt_wave_layers(table), num_devices, link, overhead,
                          tied_param_bytes=table.tied_param_bytes, chunks=chunks)  # fmt: skip


def overhead_budget(
    layers: Sequence[WaveLayer],
    placement: Sequence[int],
    link: Link,
    overhead: ChunkOverhead,
    target_ms: float,
    *,
    num_devices: int | None = None,
    tied_param_bytes: int = 0,
    chunks: Sequence[int] | None = None,
    max_factor: float = 64.0,
) -> float:
    """The largest factor ``f`` such that some C reaches ``target_ms`` with
    ``overhead.scaled(f)`` on ``placement`` (bisection to 1e-3 relative; 0.0 if even zero
    overhead misses the target, ``max_factor`` if that still reaches it)."""
    options = list(chunks) if chunks is not None else chunk_options(layers)

    def reaches(f: float) -> bool:
        return any(
            simulate_wavefront(layers, placement, c, link, overhead.scaled(f),
                               num_devices=num_devices, tied_param_bytes=tied_param_bytes,
                               keep_events=False).step_ms <= target_ms
            for c in options
        )  # fmt: skip

    if not reaches(0.0):
        return 0.0
    if reaches(max_factor):
        return max_factor
    lo, hi = 0.0, max_factor
    while hi - lo > 1e-3 * max(hi, 1e-9):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if reaches(mid) else (lo, mid)
    return lo
