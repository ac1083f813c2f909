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

A ``split`` layer shares its sentences out over the devices (``WaveLayer.shares``): each of
its chunks is one task per device, with that share of the cost and of the messages. A split
whole layer is the processes' ``parallel.encoder_split``; a split generator their
``generator_share``. A gather layer's memory may be a split whole layer further down
(``WaveLayer.memory_from``), of which it reads the parts on some devices
(``memory_parts``): with the processes' ``parallel.attention_split`` Dec1 reads device 0's
part and an attention layer on Dec2's device the part there, and each part's backward waits
only for its own reader. Generator chunks on the device of the layer below (all of them, or a
share) run just before that layer's backward of the same chunk, last chunk first, as the
runtime defers them; a share on another device runs last chunk first after its forward.
The task graph and its list scheduling live in :mod:`parallel.planning.wavefront_graph`.

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
from parallel.planning.wavefront_graph import (
    ChunkOverhead,
    WaveLayer,
    build,
    chunk_lengths,
    chunk_ms,
    run,
)

__all__ = [
    "ChunkOverhead",
    "WaveLayer",
    "WaveResult",
    "WaveTask",
    "chunk_lengths",
    "chunk_ms",
    "gnmt_wave_layers",
    "simulate_gnmt_wavefront",
    "simulate_wavefront",
]


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
        out.append(
            WaveLayer(
                s.name,
                s.fwd_ms,
                s.bwd_ms,
                s.out_bytes_per_mb,
                steps,
                recurrent=kw.get("recurrent", True),
                whole=kw.get("whole", False),
                gather=kw.get("gather", False),
            )  # fmt: skip
        )
    return out


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
    ov = overhead if overhead is not None else ChunkOverhead()
    if min(ov.fwd_ms, ov.bwd_ms) < 0:
        raise PlacementError(f"chunk overhead must be >= 0, got {ov}")
    g = build(layers, placement, chunks, link, ov, k)
    start = run(g, k)
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
