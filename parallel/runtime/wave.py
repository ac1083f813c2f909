"""The wavefront across processes: time chunks between ranks on c10d point-to-point.

A pipeline stage of the wavefront is a group of layers that keeps each layer's recurrent
state from one time chunk to the next. Its forward takes the chunks in increasing order
(:meth:`Carried.forward`); its backward takes them in reverse (:meth:`Carried.backward`) and
hands the gradient of the carried state back to the previous chunk. Every chunk has its own
autograd graph: the state that enters a chunk, and every tensor received from another rank,
is a detached leaf, so the backward of one chunk stops at the chunk's edges and yields the
gradients to pass on. With ``recompute`` a chunk keeps no activation inside it (only its
inputs, outputs and carried state); its forward runs again inside its backward
(``torch.utils.checkpoint``).

Transport: :class:`Wire`, ``isend`` / ``irecv`` of ``torch.distributed`` (gloo on a CPU,
NCCL on GPUs) under the process group's timeout. Not ``torch.distributed.pipelining``: its
stages are stateless functions of one micro-batch, its micro-batches split the batch
dimension, and its schedules run backwards in an order of their own; a stage that carries
state from micro-batch to micro-batch, whose backward must go last chunk first and return
the state's gradient to the previous chunk, and whose order is the diagonal of the
wavefront, is outside what its schedule and stage classes express. Tensors travel as float32
(exact for bf16, fp16 and fp32) so that a receiver only needs their shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from parallel.runtime.timeline import TimelineRecorder

Chunk = tuple[Tensor, ...]
State = tuple[Tensor, ...]
# (chunk index, chunk inputs, carried state or None at chunk 0) -> (outputs, state)
ChunkFn = Callable[[int, Chunk, State | None], tuple[Chunk, State]]

T = TypeVar("T")
MAX_CHUNKS = 256
FWD, BWD = 0, 1  # message kinds: activations forward, gradients backward


def tag(kind: int, boundary: int, chunk: int, index: int) -> int:
    """Message tag: ``kind`` FWD / BWD, the receiving layer ``boundary``, the
    chunk, the tensor's index in the message."""
    return ((kind * 128 + boundary) * MAX_CHUNKS + chunk) * 8 + index


def leaf(t: Tensor) -> Tensor:
    """``t`` detached; a leaf that collects its gradient when ``t`` is floating point."""
    out = t.detach()
    return out.requires_grad_() if out.is_floating_point() else out


@dataclass
class Pending:
    """Posted receives of one message: ``wait()`` -> its tensors (float32)."""

    buffers: list[Tensor]
    works: list[Any]

    def wait(self) -> list[Tensor]:
        for w in self.works:
            w.wait()
        return self.buffers


@dataclass
class Wire:
    """Chunk messages to and from other ranks; sends stay in flight until :meth:`flush`.
    Ranks are those of ``group`` (the default group: global ranks), e.g. one data-parallel
    replica's pipeline."""

    device: torch.device
    group: dist.ProcessGroup | None = None
    sent: list[tuple[Any, Tensor]] = field(default_factory=list)

    def send(self, tensors: Sequence[Tensor], dst: int, kind: int, boundary: int, c: int) -> None:
        """Post ``tensors`` (``[t,B,...]`` each) to rank ``dst`` as message (kind, boundary, c)."""
        for i, t in enumerate(tensors):
            buf = t.detach().to(torch.float32).contiguous()
            work = dist.isend(buf, group=self.group, group_dst=dst, tag=tag(kind, boundary, c, i))
            self.sent.append((work, buf))

    def post(
        self, shapes: Sequence[tuple[int, ...]], src: int, kind: int, boundary: int, c: int
    ) -> Pending:
        """Post the receives of message (kind, boundary, c) from ``src``."""
        bufs = [torch.empty(s, dtype=torch.float32, device=self.device) for s in shapes]
        works = [
            dist.irecv(b, group=self.group, group_src=src, tag=tag(kind, boundary, c, i))
            for i, b in enumerate(bufs)
        ]
        return Pending(bufs, works)

    def flush(self) -> None:
        """Wait until every posted send has left."""
        for work, _ in self.sent:
            work.wait()
        self.sent.clear()


@dataclass
class Saved:
    """What the backward of one chunk needs."""

    inputs: Chunk
    state_in: State | None
    outputs: Chunk
    state_out: State


class Carried:
    """A rank's consecutive stateful layers as one function over the chunks (see the
    module docstring); ``unit`` names it in the timeline; ``recompute``: each chunk's forward
    runs again in its backward instead of keeping its activations."""

    def __init__(
        self,
        fn: ChunkFn,
        unit: int,
        timeline: TimelineRecorder | None = None,
        recompute: bool = False,
    ) -> None:
        self.fn, self.unit, self.timeline, self.recompute = fn, unit, timeline, recompute
        self.saved: dict[int, Saved] = {}
        self._state: State | None = None  # the last forward chunk's state
        self._carry: list[Tensor | None] | None = None  # the state's gradient, backward

    def forward(self, c: int, inputs: Chunk) -> Chunk:
        """Chunk ``c`` (in order from 0): ``inputs`` -> outputs, the state carried on."""
        state_in = None if self._state is None else tuple(leaf(s) for s in self._state)
        with timed(self.timeline, "F", self.unit, c):
            outputs, state_out = saving(self.recompute, self.fn, c, inputs, state_in)
        self.saved[c] = Saved(inputs, state_in, outputs, state_out)
        self._state = state_out
        return outputs

    def backward(self, c: int, out_grads: Sequence[Tensor | None]) -> list[Tensor | None]:
        """Chunk ``c`` (in reverse, from the last): gradients of the outputs (None: none)
        -> gradients of the inputs (None where an input is not a leaf needing one)."""
        s = self.saved.pop(c)
        tensors: list[Tensor] = []
        grads: list[Tensor] = []
        for out, g in zip(s.outputs, out_grads, strict=True):
            if g is not None and out.requires_grad:
                tensors.append(out)
                grads.append(g.to(out.dtype))
        if self._carry is not None:  # from chunk c + 1's backward
            for out, g in zip(s.state_out, self._carry, strict=True):
                if g is not None and out.requires_grad:
                    tensors.append(out)
                    grads.append(g.to(out.dtype))
        with timed(self.timeline, "B", self.unit, c):
            if tensors:
                torch.autograd.backward(tensors, grads)
        self._carry = None if s.state_in is None else [x.grad for x in s.state_in]
        if c == 0:
            self._state = self._carry = None
        return [x.grad if x.is_leaf and x.requires_grad else None for x in s.inputs]


def saving(recompute: bool, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``; with ``recompute`` (and autograd on) under ``torch.utils.checkpoint``:
    only the inputs are kept, and ``fn`` runs again in the backward (``fn`` must then give
    the same result twice: dropout masks are seeded, :mod:`nmt.models.dropout`)."""
    if recompute and torch.is_grad_enabled():
        # the masks come from their own generators: no global RNG state to keep (and none
        # to race for between the threads of parallel.wave_threads)
        result: T = checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False)
        return result
    return fn(*args)


def timed(timeline: TimelineRecorder | None, kind: str, unit: int, c: int) -> Any:
    """``timeline.compute(kind, unit, c)``, or nothing without a timeline."""
    return nullcontext() if timeline is None else timeline.compute(kind, unit, c)
