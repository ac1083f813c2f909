"""The task graph of one wavefront step and its list scheduling (the model is described in
:mod:`parallel.planning.wavefront_sim`): the layers (:class:`WaveLayer`), their chunk costs,
the tasks with their dependencies and message delays, and the start time of every task."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from parallel.errors import PlacementError
from parallel.planning.links import Link


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
    # chunk is its own: the generator of the processes' wavefront runs F and B per chunk;
    # alone on its device in the order 0, C-1, C-2, ..., 1; on the device of the layer
    # below (all of it, or a share): in that layer's backward, chunk c just before its
    # backward of chunk c; a share elsewhere: C-1, C-2, ..., 0 after the device's other
    # layers)
    chunk_loss: bool = False
    # the layer's sentences shared out over the devices (``shares``): each chunk is one task
    # per device with that share of the cost and of the messages; a split ``whole`` layer is
    # the wavefront's ``parallel.encoder_split``, a split generator its ``generator_share``
    split: bool = False
    # a split layer's share of the sentences per device (empty: equal shares)
    shares: tuple[float, ...] = ()
    # a ``gather`` layer's memory: the layer ``memory_from`` below (1: its input, whose every
    # chunk it needs first; more: a split ``whole`` layer further down, while the layer below
    # still feeds it chunk by chunk), and the devices of that layer's parts it reads (empty:
    # all); the processes' ``parallel.attention_split``: Dec1 reads its own device's part,
    # an attention layer on Dec2's device the part there
    memory_from: int = 1
    memory_parts: tuple[int, ...] = ()

    def reads(self, device: int) -> bool:
        """Whether this layer reads its memory layer's part on ``device``."""
        return not self.memory_parts or device in self.memory_parts


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


Parts = list[tuple[int, float]]  # (device, share of the sentences) per task of a chunk


class Graph(NamedTuple):
    """Tasks 0..n-1 with per-task duration, device, dependencies and priority."""

    key: list[tuple[int, str, int]]  # (layer, kind, chunk)
    dur: list[float]
    dev: list[int]
    deps: list[list[tuple[int, float]]]  # (producer task, message delay ms)
    prio: list[tuple[int, int, int]]


def parts_of(layers: Sequence[WaveLayer], placement: Sequence[int], devices: int) -> list[Parts]:
    """(device, share of the sentences) of each layer's tasks: one part, or one per device
    with a share for a split layer."""
    out: list[Parts] = []
    for li, ly in enumerate(layers):
        if not ly.split:
            out.append([(placement[li], 1.0)])
            continue
        shares = ly.shares or tuple([1.0 / devices] * devices)
        if len(shares) != devices or abs(sum(shares) - 1.0) > 1e-9 or min(shares) < 0:
            raise PlacementError(f"wavefront: {ly.name}: shares {shares} for {devices} devices")
        if li > 0 and layers[li - 1].split:
            raise PlacementError(f"wavefront: split layers {layers[li - 1].name} and {ly.name} "
                                 "follow each other")  # fmt: skip
        out.append([(d, f) for d, f in enumerate(shares) if f > 0])
    return out


def build(
    layers: Sequence[WaveLayer],
    placement: Sequence[int],
    chunks: int,
    link: Link,
    overhead: ChunkOverhead,
    devices: int,
) -> Graph:
    n = len(layers)
    for li, ly in enumerate(layers):
        m = li - ly.memory_from
        if ly.memory_from > 1 and not (ly.gather and m >= 0 and layers[m].whole
                                       and layers[li - 1].steps == ly.steps):  # fmt: skip
            raise PlacementError(
                f"wavefront: {ly.name}: memory_from={ly.memory_from} needs a gather layer, "
                "a whole layer there and its input below"
            )
    lens = [[ly.steps] if ly.whole else chunk_lengths(ly.steps, chunks) for ly in layers]
    parts = parts_of(layers, placement, devices)
    fid: list[list[list[int]]] = []  # [layer][chunk][part] -> task
    bid: list[list[list[int]]] = []
    g = Graph([], [], [], [], [])
    for kind, ids in (("F", fid), ("B", bid)):
        for li, ly in enumerate(layers):
            full, o = (ly.fwd_ms, overhead.fwd_ms) if kind == "F" else (ly.bwd_ms, overhead.bwd_ms)
            row: list[list[int]] = []
            last = len(lens[li]) - 1
            for c, ln in enumerate(lens[li]):
                row.append([])
                for dev, share in parts[li]:
                    row[-1].append(len(g.key))
                    g.key.append((li, kind, c))
                    g.dur.append(chunk_ms(full, 0.0 if ly.whole else o, ln, ly.steps) * share)
                    g.dev.append(dev)
                    g.deps.append([])
                    if kind == "F":
                        g.prio.append((1, li + c, -li))
                    else:
                        g.prio.append((0, (n - 1 - li) + (last - c), li))
            ids.append(row)

    def share_of(t: int) -> float:
        """Task t's share of the sentences (1 unless its layer is split)."""
        layer = g.key[t][0]
        return dict(parts[layer])[g.dev[t]] if layers[layer].split else 1.0

    def after(task: int, producers: list[int], li: int, length: int) -> None:
        """``task`` needs every task of ``producers``: ``length`` steps of layer li's output
        (or its gradient) between a task of layer li and one of li+1, the split side's share
        of the sentences."""
        for q in producers:
            delay = 0.0
            if g.dev[q] != g.dev[task]:
                size = layers[li].out_bytes * length / layers[li].steps
                delay = link.transfer_ms(round(size * share_of(q) * share_of(task)))
            g.deps[task].append((q, delay))

    for li in range(n):
        # the layer's own device with no other (unsplit) layer: a generator alone
        alone = [dev == placement[li] and all(placement[j] != dev for j in range(n)
                                              if j != li and not layers[j].split)
                 for dev, _ in parts[li]]  # fmt: skip
        for c in range(len(lens[li])):
            for k in range(len(parts[li])):
                f_task, b_task = fid[li][c][k], bid[li][c][k]
                dev = parts[li][k][0]
                later = deferred(layers, placement, li, dev)
                order = ("deferred" if later else "alone" if alone[k]
                         else "share" if layers[li].chunk_loss else "")  # fmt: skip
                _forward_deps(g, layers, lens, fid, li, c, k, f_task, after, order)
                _backward_deps(g, layers, lens, fid, bid, li, c, k, b_task, after)
                if layers[li].chunk_loss and not alone[k]:  # after the device's other layers
                    g.prio[f_task] = (1, n + len(lens[li]) + c, -li)
                if later and c < len(lens[li]) - 1:
                    # the device that holds the layer below runs its part of chunk c just
                    # before that layer's backward of chunk c (after the one of chunk c+1)
                    g.deps[f_task].append((bid[li - 1][c + 1][0], 0.0))
                if order == "share" and c == 0:
                    _share_before_backward(g, layers, placement, lens, bid, li, dev, f_task)
    return g


def _share_before_backward(
    g: Graph,
    layers: Sequence[WaveLayer],
    placement: Sequence[int],
    lens: list[list[int]],
    bid: list[list[list[int]]],
    li: int,
    dev: int,
    last_share: int,
) -> None:
    """A helper's share runs whole before its device's own backward: the backward of the
    device's top unsplit layer below ``li`` (its last chunk, the first it runs) waits for
    ``last_share`` (the share's chunk 0, the last it runs)."""
    below = [j for j in range(li) if placement[j] == dev and not layers[j].split]
    if below:
        j = below[-1]
        g.deps[bid[j][len(lens[j]) - 1][0]].append((last_share, 0.0))


def deferred(layers: Sequence[WaveLayer], placement: Sequence[int], li: int, dev: int) -> bool:
    """Whether layer li's part on device ``dev`` runs in the backward of the layer below: a
    per-chunk-loss layer's part (all of it, or a split share) on that layer's device."""
    ly = layers[li]
    return ly.chunk_loss and li > 0 and dev == placement[li - 1]


def _forward_deps(
    g: Graph,
    layers: Sequence[WaveLayer],
    lens: list[list[int]],
    fid: list[list[list[int]]],
    li: int,
    c: int,
    k: int,
    task: int,
    after: Callable[[int, list[int], int, int], None],
    order: str,
) -> None:
    """What the forward of layer li's chunk c (part k) waits for."""
    ly, last = layers[li], len(lens[li]) - 1
    if li > 0:
        p = li - 1
        if ly.gather:
            m = li - ly.memory_from
            for j, n_m in enumerate(lens[m]):
                after(task, [t for t in fid[m][j] if ly.reads(g.dev[t])], m, n_m)
            if m < p:  # and its input chunk by chunk
                after(task, fid[p][c], p, lens[p][c])
        elif ly.whole:
            for j, n_p in enumerate(lens[p]):
                after(task, fid[p][j], p, n_p)
        elif layers[p].split:
            raise PlacementError(
                f"wavefront: {ly.name} follows the split layer {layers[p].name} "
                "without a barrier (whole or gather)"
            )
        elif layers[p].whole:
            after(task, fid[p][0], p, lens[p][0])
        elif layers[p].steps == ly.steps:
            after(task, fid[p][c], p, lens[p][c])
        else:
            raise PlacementError(
                f"wavefront: {ly.name} ({ly.steps} steps) follows {layers[p].name} "
                f"({layers[p].steps} steps) without a barrier (whole or gather)"
            )
    if order == "deferred":  # ordered by the backward of the layer below (see build)
        return
    if order == "share":  # a helper's share: C-1, C-2, ..., 0
        if c < last:
            g.deps[task].append((fid[li][c + 1][k], 0.0))
    elif ly.recurrent and not ly.whole and c > 0:
        g.deps[task].append((fid[li][c - 1][k], 0.0))
    elif ly.chunk_loss and c > 0:  # a generator alone on its device: 0, C-1, C-2, ..., 1
        g.deps[task].append((fid[li][0 if c == last else c + 1][k], 0.0))


def _backward_deps(
    g: Graph,
    layers: Sequence[WaveLayer],
    lens: list[list[int]],
    fid: list[list[list[int]]],
    bid: list[list[list[int]]],
    li: int,
    c: int,
    k: int,
    task: int,
    after: Callable[[int, list[int], int, int], None],
) -> None:
    """What the backward of layer li's chunk c (part k) waits for."""
    ly, n, last = layers[li], len(layers), len(lens[li]) - 1
    if li == n - 1 and ly.chunk_loss:
        g.deps[task].append((fid[li][c][k], 0.0))
    elif li == n - 1:
        g.deps[task] += [(t, 0.0) for row in fid[li] for t in row]
    else:
        q = layers[li + 1]
        readers = [r for r in range(li + 1, n) if layers[r].gather
                   and r - layers[r].memory_from == li
                   and layers[r].reads(g.dev[task])]  # fmt: skip
        if readers:  # the memory's gradient: every chunk of its readers
            for r in readers:
                for j in range(len(lens[r])):
                    after(task, bid[r][j], li, ly.steps)
        elif q.whole:
            for j in range(len(lens[li + 1])):
                after(task, bid[li + 1][j], li, ly.steps)
        elif ly.whole:
            for j, ln in enumerate(lens[li + 1]):
                after(task, bid[li + 1][j], li, ln)
        else:
            after(task, bid[li + 1][c], li, lens[li][c])
    if ly.recurrent and not ly.whole and c < last:
        g.deps[task].append((bid[li][c + 1][k], 0.0))


def run(g: Graph, devices: int) -> list[float]:
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
