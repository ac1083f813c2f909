"""One timed forward + backward pass over a stage list: the measuring half of
:mod:`parallel.planning.profile` (whose module doc says what a cost table records).

Every stage gets its inputs as fresh leaves, so its forward and its backward are timed alone;
the backward runs stage by stage from the last one, each stage getting the gradients its
successor left on those leaves.  With ``exclude`` (the parameters' storages) a pass also
counts the bytes autograd saves per stage (``saved_tensors_hooks``, each storage once).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from parallel.errors import PlacementError

LossFn = Callable[[Tensor, Tensor], Tensor]

__all__ = ["LossFn", "Pass", "median_ms", "one_pass"]


@dataclass(frozen=True)
class Pass:
    """One forward+backward pass: seconds per stage, and (first pass only) bytes."""

    fwd_s: tuple[float, ...]
    bwd_s: tuple[float, ...]
    act_bytes: tuple[int, ...]
    in_bytes: tuple[int, ...]
    out_bytes: tuple[int, ...]


class _SavedBytes:
    """``saved_tensors_hooks`` pack hook that sums distinct storages (params excluded)."""

    def __init__(self, exclude: set[int]) -> None:
        self.exclude = exclude
        self.seen: set[int] = set()
        self.total = 0

    def add(self, t: Tensor) -> None:
        try:
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
        except (RuntimeError, NotImplementedError, TypeError):  # no storage (e.g. sparse)
            return
        if key and key not in self.exclude and key not in self.seen:
            self.seen.add(key)
            self.total += nbytes

    def pack(self, t: Tensor) -> Tensor:
        self.add(t)
        return t

    @staticmethod
    def unpack(t: Tensor) -> Tensor:
        return t


def _as_tuple(out: object) -> tuple[Tensor, ...]:
    if isinstance(out, Tensor):
        return (out,)
    if isinstance(out, (tuple, list)) and all(isinstance(t, Tensor) for t in out):
        return tuple(out)
    raise PlacementError(
        f"a stage must return a tensor or a tuple of tensors, got {type(out).__name__}"
    )


def _leaf(t: Tensor) -> Tensor:
    if t.is_floating_point():
        return t.detach().requires_grad_(True)
    return t


def _nbytes(ts: Sequence[Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def _zero_grads(stages: Sequence[nn.Module]) -> None:
    for s in stages:
        for p in s.parameters():
            p.grad = None


def _forward(
    stages: Sequence[nn.Module],
    inputs: tuple[Tensor, ...],
    target: Tensor,
    loss_fn: LossFn,
    sync: Callable[[], None],
    exclude: set[int] | None,
) -> tuple[list[tuple[Tensor, ...]], list[tuple[Tensor, ...]], Tensor, list[float], list[int]]:
    """Forward stage by stage: leaf inputs, outputs, the loss, seconds, saved bytes."""
    x = inputs
    leaves: list[tuple[Tensor, ...]] = []
    outs: list[tuple[Tensor, ...]] = []
    secs: list[float] = []
    act: list[int] = []
    loss: Tensor | None = None
    last = len(stages) - 1
    for i, stage in enumerate(stages):
        xin = tuple(_leaf(t) for t in x)
        saved = _SavedBytes(exclude or set())
        for t in xin:
            saved.add(t)
        sync()
        t0 = time.perf_counter()
        if exclude is None:
            out = _as_tuple(stage(*xin))
            loss = loss_fn(out[0], target) if i == last else None
        else:
            with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
                out = _as_tuple(stage(*xin))
                loss = loss_fn(out[0], target) if i == last else None
        sync()
        secs.append(time.perf_counter() - t0)
        leaves.append(xin)
        outs.append(out)
        act.append(saved.total)
        x = out
    if loss is None:  # pragma: no cover - stages is never empty here
        raise PlacementError("no stages to profile")
    return leaves, outs, loss, secs, act


def _backward_args(
    out: tuple[Tensor, ...], nxt: tuple[Tensor, ...]
) -> tuple[list[Tensor], list[Tensor]]:
    """(outputs, their gradients) of a stage from its successor's leaf inputs."""
    tensors: list[Tensor] = []
    grads: list[Tensor] = []
    for o, leaf in zip(out, nxt, strict=True):
        if not o.requires_grad:
            continue
        tensors.append(o)
        grads.append(leaf.grad if leaf.grad is not None else torch.zeros_like(o))
    return tensors, grads


def one_pass(
    stages: Sequence[nn.Module],
    inputs: tuple[Tensor, ...],
    target: Tensor,
    loss_fn: LossFn,
    sync: Callable[[], None],
    exclude: set[int] | None = None,
) -> Pass:
    """One timed forward + backward; with ``exclude`` (parameter storages) also bytes."""
    _zero_grads(stages)
    leaves, outs, loss, fwd, act = _forward(stages, inputs, target, loss_fn, sync, exclude)
    n = len(stages)
    bwd = [0.0] * n
    for i in reversed(range(n)):
        if i == n - 1:
            tensors, grads = [loss], [torch.ones_like(loss)]
        else:
            tensors, grads = _backward_args(outs[i], leaves[i + 1])
        sync()
        t0 = time.perf_counter()
        if tensors:
            torch.autograd.backward(tensors, grads)
        sync()
        bwd[i] = time.perf_counter() - t0
    out_bytes = [_nbytes(o) for o in outs[:-1]] + [0]
    return Pass(tuple(fwd), tuple(bwd), tuple(act), tuple(_nbytes(x) for x in leaves),
                tuple(out_bytes))  # fmt: skip


def median_ms(
    stages: Sequence[nn.Module],
    inputs: tuple[Tensor, ...],
    target: Tensor,
    loss_fn: LossFn,
    sync: Callable[[], None],
    repeats: int,
    warmup: int,
) -> tuple[list[float], list[float]]:
    """Per-stage median forward and backward ms of ``repeats`` passes after ``warmup``."""
    for _ in range(warmup):
        one_pass(stages, inputs, target, loss_fn, sync)
    runs = [one_pass(stages, inputs, target, loss_fn, sync) for _ in range(repeats)]
    n = len(stages)
    fwd = [1e3 * statistics.median(r.fwd_s[i] for r in runs) for i in range(n)]
    bwd = [1e3 * statistics.median(r.bwd_s[i] for r in runs) for i in range(n)]
    return fwd, bwd
