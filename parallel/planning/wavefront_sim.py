"""Wavefront (time-chunk) simulation of one training step (GNMT's own scheme).

The batch is cut along time into C chunks (balanced lengths: the first ``T % C`` chunks are
one step longer).  Every layer calls its kernel once per chunk and carries its recurrent
state to the next chunk, so layer ``l`` works on chunk ``c`` while layer ``l+1`` works on
chunk ``c-1``: task ``F(l, c)`` runs after ``F(l-1, c)`` (its input chunk) and ``F(l, c-1)``
(the carried state).  The backward runs the chunks in reverse with the same diagonal:
``B(l, c)`` after ``B(l+1, c)`` (the gradient of its output chunk) and ``B(l, c+1)`` (the
gradient of the carried state); the top layer starts its backward when its whole forward is
done (the loss).  Barriers: a ``whole`` layer (GNMT's bidirectional bottom encoder layer)
needs the whole sequence and runs as one task; a ``gather`` layer (``Dec1+Attention``:
attention reads every encoder output) starts its first chunk only after every chunk of the
layer below, and the gradient it sends back is complete only after its last backward chunk.
The decoder layers and the generator then wave along the target chunks.

Cost of one chunk of ``n`` of a layer's ``T`` steps (milliseconds)::

    o + (full - o) * n / T        (o = the per-call overhead, capped at ``full``)

``full`` is the layer's whole-sequence forward (or backward) time from the cost table, for
the whole batch; ``o`` (``ChunkOverhead``, measured by the ``chunk_overhead`` benchmark) is
the fixed time of one kernel call that the whole-sequence time already contains once, so C chunks
cost ``full + (C - 1) * o`` in total and ``C = 1`` is the sequential layer.  A ``whole`` layer
is one call (no overhead added).  Each task's output goes to the next layer's device as one
message (``Link.transfer_ms`` of the chunk's share of ``out_bytes``; the gradient back has
the same size; sends are asynchronous, links do not contend, as in ``parallel.planning.simulate``).
Each device runs one task at a time: among its ready tasks the earliest start wins, ties
go backward first, then the lower diagonal (deeper layer first).  After its last task the
device pair holding the first and the last layer (if different) all-reduces the tied
parameter's gradient.

The wavefront across processes (``nmt-train parallel=wavefront parallel.pp=N``) is this
model with per-chunk loss (``WaveLayer.chunk_loss``: the generator's backward of a chunk
follows its forward at once), links measured between the processes, and the measured time
after the wave (``step_extra_ms``); ``python -m scripts.bench wavefront`` feeds it measured
per-layer chunk costs and compares its prediction with the measured step.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from parallel.errors import PlacementError
from parallel.planning.costs import CostTable
from parallel.planning.links import Link, allreduce_ms


@dataclass(frozen=True)
class ChunkOverhead:
    """Fixed time of one extra layer call (one chunk), milliseconds, forward and backward."""

    fwd_ms: float = 0.0
    bwd_ms: float = 0.0
    source: str = ""  # where the numbers come from (a JSON file, or how they were estimated)

    @property
    def total_ms(self) -> float:
        return self.fwd_ms + self.bwd_ms

    def scaled(self, factor: float) -> ChunkOverhead:
        return ChunkOverhead(self.fwd_ms * factor, self.bwd_ms * factor, self.source)


@dataclass(frozen=True)
class WaveLayer:
    """One layer (pipeline stage) of the chain, with whole-sequence, whole-batch costs."""

    name: str
    fwd_ms: float
    bwd_ms: float
    out_bytes: int  # what it sends to the next layer for the whole sequence (gradient: same)
    steps: int  # time steps of its sequence (source length for the encoder, target: decoder)
    recurrent: bool = True  # carries state: chunk c after chunk c-1 (backward: c after c+1)
    whole: bool = False  # needs the whole sequence: one task (bidirectional layer)
    gather: bool = False  # first chunk needs every chunk of the layer below (attention)
    # the top layer's backward of chunk c needs only its forward of chunk c (the loss of each
    # chunk is its own: the generator of the processes' wavefront runs F and B per chunk, in
    # the order 0, C-1, C-2, ..., 1)
    chunk_loss: bool = False
    # with ``whole``: the layer runs on every device at once, each on an equal share of the
    # batch's sentences (one task per device, 1/D of the cost, 1/D of ``out_bytes`` each;
    # the wavefront's ``parallel.encoder_split``); ``placement`` of it is not used
    split: bool = False


class WaveTask(NamedTuple):
    device: int
    layer: int
    kind: str  # "F" or "B"
    chunk: int
    start_ms: float
    end_ms: float


@dataclass(frozen=True)
class WaveResult:
    step_ms: float  # makespan, tied all-reduce included
    chunks: int
    busy_ms: tuple[float, ...]  # per device
    busy_frac: tuple[float, ...]
    bubble_frac: float  # 1 - total busy / (devices * step)
    comm_ms: tuple[float, ...]  # end-of-step all-reduce per device
    placement: tuple[int, ...]
    events: tuple[WaveTask, ...]


def chunk_lengths(steps: int, chunks: int) -> list[int]:
    """Balanced chunk lengths of ``steps`` time steps: the first ``steps % chunks`` are longer."""
    if not 1 <= chunks <= steps:
        raise PlacementError(f"time chunks must be in 1..{steps} (the length), got {chunks}")
    q, r = divmod(steps, chunks)
    return [q + (i < r) for i in range(chunks)]


def chunk_ms(full_ms: float, overhead_ms: float, length: int, steps: int) -> float:
    """Time of one chunk of ``length`` of ``steps`` steps (see the module doc)."""
    o = min(overhead_ms, full_ms)
    return o + (full_ms - o) * length / steps


_ENC1 = re.compile(r"Embed\+Enc_?1")
_ENC = re.compile(r"Enc_?\d+")
_DEC1 = re.compile(r"Dec_?1\+Attention")
_DEC = re.compile(r"Dec_?\d+")


def gnmt_wave_layers(costs: CostTable) -> list[WaveLayer]:
    """The wavefront view of a GNMT cost table, from its stage names: ``Embed+Enc1`` whole
    (bidirectional), ``Enc_i`` recurrent over the source, ``Dec1+Attention`` gathers the
    encoder output, ``Dec_i`` recurrent over the target, ``Generator`` per chunk, stateless."""
    out = []
    for s in costs.stages:
        kw: dict[str, bool] = {}
        if _ENC1.fullmatch(s.name):
            steps, kw = costs.src_len, {"whole": True, "recurrent": False}
        elif _ENC.fullmatch(s.name):
            steps = costs.src_len
        elif _DEC1.fullmatch(s.name):
            steps, kw = costs.tgt_len, {"gather": True}
        elif _DEC.fullmatch(s.name):
            steps = costs.tgt_len
        elif s.name == "Generator":
            steps, kw = costs.tgt_len, {"recurrent": False}
        else:
            raise PlacementError(f"wavefront: unknown GNMT stage name {s.name!r}")
        out.append(WaveLayer(s.name, s.fwd_ms, s.bwd_ms, s.out_bytes_per_mb, steps, **kw))
    return out


class _Graph(NamedTuple):
    """Tasks 0..n-1 with per-task duration, device, dependencies and priority."""

    key: list[tuple[int, str, int]]  # (layer, kind, chunk)
    dur: list[float]
    dev: list[int]
    deps: list[list[tuple[int, float]]]  # (producer task, message delay ms)
    prio: list[tuple[int, int, int]]


def _build(
    layers: Sequence[WaveLayer],
    placement: Sequence[int],
    chunks: int,
    link: Link,
    overhead: ChunkOverhead,
    devices: int,
) -> _Graph:
    n = len(layers)
    lens = [
        [ly.steps] * (devices if ly.split else 1) if ly.whole else chunk_lengths(ly.steps, chunks)
        for ly in layers
    ]
    fid: list[list[int]] = []
    bid: list[list[int]] = []
    g = _Graph([], [], [], [], [])
    for kind, ids in (("F", fid), ("B", bid)):
        for li, ly in enumerate(layers):
            full, o = (ly.fwd_ms, overhead.fwd_ms) if kind == "F" else (ly.bwd_ms, overhead.bwd_ms)
            row = []
            last = len(lens[li]) - 1
            for c, ln in enumerate(lens[li]):
                row.append(len(g.key))
                g.key.append((li, kind, c))
                share = len(lens[li]) if ly.split else 1
                g.dur.append(chunk_ms(full, 0.0 if ly.whole else o, ln, ly.steps) / share)
                g.dev.append(c if ly.split else placement[li])
                g.deps.append([])
                if kind == "F":
                    g.prio.append((1, li + c, -li))
                else:
                    g.prio.append((0, (n - 1 - li) + (last - c), li))
            ids.append(row)

    def msg(li: int, length: int, a: int = -1, b: int = -1) -> float:
        """Delay of ``length`` steps of layer li's output (or gradient) between li and li+1
        (between tasks ``a`` of li and ``b`` of li+1, where one of them is split)."""
        src = g.dev[a] if layers[li].split else placement[li]
        dst = g.dev[b] if layers[li + 1].split else placement[li + 1]
        if src == dst:
            return 0.0
        share = len(lens[li]) if layers[li].split else 1
        return link.transfer_ms(round(layers[li].out_bytes * length / layers[li].steps / share))

    for li, ly in enumerate(layers):
        last = len(lens[li]) - 1
        for c in range(last + 1):
            f, b = g.deps[fid[li][c]], g.deps[bid[li][c]]
            if li > 0:
                p = li - 1
                if ly.whole or ly.gather:
                    f += [(fid[p][j], msg(p, n_p, fid[p][j], fid[li][c]))
                          for j, n_p in enumerate(lens[p])]  # fmt: skip
                elif layers[p].split:
                    raise PlacementError(
                        f"wavefront: {ly.name} follows the split layer {layers[p].name} "
                        "without a barrier (whole or gather)"
                    )
                elif layers[p].whole:
                    f.append((fid[p][0], msg(p, lens[p][0])))
                elif layers[p].steps == ly.steps:
                    f.append((fid[p][c], msg(p, lens[p][c])))
                else:
                    raise PlacementError(
                        f"wavefront: {ly.name} ({ly.steps} steps) follows {layers[p].name} "
                        f"({layers[p].steps} steps) without a barrier (whole or gather)"
                    )
            if ly.recurrent and not ly.whole and c > 0:
                f.append((fid[li][c - 1], 0.0))
            if ly.chunk_loss and c > 0:  # order 0, C-1, C-2, ..., 1
                f.append((fid[li][0 if c == last else c + 1], 0.0))
            if li == n - 1 and ly.chunk_loss:
                b.append((fid[li][c], 0.0))
            elif li == n - 1:
                b += [(fid[li][j], 0.0) for j in range(last + 1)]
            else:
                q = layers[li + 1]
                nq = len(lens[li + 1])
                if q.whole or q.gather:
                    b += [(bid[li + 1][j], msg(li, ly.steps, bid[li][c], bid[li + 1][j]))
                          for j in range(nq)]  # fmt: skip
                elif ly.whole:
                    b += [(bid[li + 1][j], msg(li, ln)) for j, ln in enumerate(lens[li + 1])]
                else:
                    b.append((bid[li + 1][c], msg(li, lens[li][c])))
            if ly.recurrent and not ly.whole and c < last:
                b.append((bid[li][c + 1], 0.0))
    return g


def _run(g: _Graph, devices: int) -> list[float]:
    """List scheduling (module doc): start time of every task."""
    n = len(g.dur)
    waiting = [len(d) for d in g.deps]
    users: list[list[tuple[int, float]]] = [[] for _ in range(n)]
    for t, deps in enumerate(g.deps):
        for p, delay in deps:
            users[p].append((t, delay))
    ready_at = [0.0] * n
    ready: list[list[int]] = [[] for _ in range(devices)]
    for t in range(n):
        if not waiting[t]:
            ready[g.dev[t]].append(t)
    free = [0.0] * devices
    start = [0.0] * n
    for _ in range(n):
        best: tuple[float, tuple[int, int, int], int] | None = None
        for d in range(devices):
            for t in ready[d]:
                cand = (max(free[d], ready_at[t]), g.prio[t], t)
                if best is None or cand < best:
                    best = cand
        if best is None:  # pragma: no cover - the dependency graph is acyclic
            raise PlacementError("wavefront schedule deadlocked")
        s, _, t = best
        d = g.dev[t]
        ready[d].remove(t)
        start[t], free[d] = s, s + g.dur[t]
        for u, delay in users[t]:
            ready_at[u] = max(ready_at[u], free[d] + delay)
            waiting[u] -= 1
            if not waiting[u]:
                ready[g.dev[u]].append(u)
    return start


def simulate_wavefront(
    layers: Sequence[WaveLayer],
    placement: Sequence[int],
    chunks: int,
    link: Link,
    overhead: ChunkOverhead | None = None,
    *,
    num_devices: int | None = None,
    tied_param_bytes: int = 0,
    keep_events: bool = True,
    step_extra_ms: float = 0.0,
) -> WaveResult:
    """Makespan and busy fractions of one wavefront step (see the module doc).

    ``placement[l]`` is the device of layer ``l``; ``chunks`` is C (every non-``whole``
    layer is cut into ``C`` chunks of its own sequence); ``tied_param_bytes`` is the gradient
    all-reduced between the devices of the first and the last layer when they differ;
    ``step_extra_ms`` is measured time after the wave on every device (the processes'
    gradient all-reduce, clipping, optimizer), added to the makespan."""
    if len(placement) != len(layers) or not layers:
        raise PlacementError(f"placement has {len(placement)} entries for {len(layers)} layers")
    k = num_devices if num_devices is not None else max(placement) + 1
    if any(not 0 <= d < k for d in placement):
        raise PlacementError(f"placement {list(placement)} outside devices 0..{k - 1}")
    if any(ly.split and not ly.whole for ly in layers):
        raise PlacementError("wavefront: a split layer must be whole (one task per device)")
    ov = overhead if overhead is not None else ChunkOverhead()
    if min(ov.fwd_ms, ov.bwd_ms) < 0:
        raise PlacementError(f"chunk overhead must be >= 0, got {ov}")
    g = _build(layers, placement, chunks, link, ov, k)
    start = _run(g, k)
    finish, busy = [0.0] * k, [0.0] * k
    for t, s in enumerate(start):
        d = g.dev[t]
        busy[d] += g.dur[t]
        finish[d] = max(finish[d], s + g.dur[t])
    comm = [0.0] * k
    a, b = placement[0], placement[-1]
    if tied_param_bytes and a != b:
        comm[a] = comm[b] = allreduce_ms(link, tied_param_bytes, 2)
        finish[a] = finish[b] = max(finish[a], finish[b]) + comm[a]
    step = max(finish) + step_extra_ms
    events = (
        tuple(
            WaveTask(g.dev[t], *g.key[t], s, s + g.dur[t])
            for t, s in sorted(enumerate(start), key=lambda x: (x[1], x[0]))
        )
        if keep_events
        else ()
    )
    return WaveResult(
        step_ms=step,
        chunks=chunks,
        busy_ms=tuple(busy),
        busy_frac=tuple(x / step if step > 0 else 0.0 for x in busy),
        bubble_frac=1.0 - sum(busy) / (k * step) if step > 0 else 0.0,
        comm_ms=tuple(comm),
        placement=tuple(placement),
        events=events,
    )


def simulate_gnmt_wavefront(
    costs: CostTable,
    placement: Sequence[int],
    chunks: int,
    link: Link,
    overhead: ChunkOverhead | None = None,
    *,
    num_devices: int | None = None,
    keep_events: bool = True,
) -> WaveResult:
    """``simulate_wavefront`` of a GNMT cost table (whole batch: one micro-batch)."""
    table = costs.for_microbatches(1)
    return simulate_wavefront(
        gnmt_wave_layers(table),
        placement,
        chunks,
        link,
        overhead,
        num_devices=num_devices,
        tied_param_bytes=table.tied_param_bytes,
        keep_events=keep_events,
    )
