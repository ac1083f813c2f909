"""Stage profiler: a measured :class:`parallel.planning.costs.CostTable` for one shape bucket.

:func:`profile_stages` runs the stage list as the single-device model does
(``x = stage(*x)``, the loss on the last stage's first output) on one micro-batch and
measures, per stage:

* ``fwd_ms`` / ``bwd_ms``: median over ``repeats`` passes (``warmup`` passes first, not
  timed).  Every stage gets its inputs as fresh leaves (floating tensors detached with
  ``requires_grad``), so its forward and its backward can be timed alone, like a pipeline
  stage: the backward runs stage by stage from the last one, feeding each stage the
  gradients its successor left on those leaves (zeros for a float output nobody used, as
  the engine sends).  The loss belongs to the last stage (forward and backward).  GPU
  times are taken between ``torch.cuda.synchronize`` calls (the pass itself:
  :mod:`parallel.planning.profile_pass`).
* ``fwd_floor_ms`` / ``bwd_floor_ms``: the same at micro-batch 1 (the latency floor that
  :meth:`CostTable.at_micro_batch` scales against), capped by the measured time.
* ``param_bytes`` / ``grad_bytes`` / ``optimizer_bytes``: the stage's distinct parameters,
  those that train, and ``optimizer_states`` (Adam: 2) copies of the latter.  A parameter
  held by stage 0 and the last stage (the tied embedding) counts in both, and its size is
  the table's ``tied_param_bytes`` (the convention of :mod:`parallel.planning.costs`).
* ``act_bytes_per_mb``: bytes alive from the forward until the backward: the stage's inputs
  plus every tensor autograd saves for the backward (``saved_tensors_hooks``), each storage
  once, parameters excluded.  ``act_bytes_per_mb_recompute``: the inputs alone (what
  activation checkpointing keeps).
* ``out_bytes_per_mb``: bytes of the outputs sent to the next stage (0 for the last stage,
  whose output goes to the loss).

The stages are moved to ``device`` and run in training mode (restored afterwards); their
gradients and the global RNG state are left as they were.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from parallel.errors import PlacementError
from parallel.planning.costs import COST_TABLE_KIND, COST_TABLE_VERSION, CostTable, StageCost
from parallel.planning.profile_pass import LossFn, median_ms, one_pass

__all__ = [
    "LossFn",
    "StaticBytes",
    "cost_tables_json",
    "device_label",
    "format_table",
    "profile_stages",
    "static_costs",
]


@dataclass(frozen=True)
class StaticBytes:
    """Parameter, gradient and optimizer-state bytes of one stage."""

    param: int
    grad: int
    optimizer: int


# ----------------------------------------------------------------------------- helpers


def device_label(device: torch.device) -> str:
    """``cpu-<threads>t`` or the CUDA device's name (the ``device`` field of a table)."""
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return f"{device.type}-{torch.get_num_threads()}t"


def _batch_size(inputs: Sequence[Tensor], dims: Sequence[int]) -> int:
    sizes = {int(x.shape[d]) for x, d in zip(inputs, dims, strict=True)}
    if len(sizes) != 1:
        raise PlacementError(
            f"inputs disagree on the batch size: shapes {[tuple(x.shape) for x in inputs]} "
            f"batch dims {list(dims)}"
        )
    return sizes.pop()


def _slice(
    inputs: Sequence[Tensor], dims: Sequence[int], target: Tensor, target_dim: int, b: int
) -> tuple[tuple[Tensor, ...], Tensor]:
    """The first ``b`` rows, each in its own storage (so storages measure their bytes)."""
    xs = tuple(x.narrow(d, 0, b).clone() for x, d in zip(inputs, dims, strict=True))
    return xs, target.narrow(target_dim, 0, b).clone()


def static_costs(
    stages: Sequence[nn.Module], optimizer_states: int = 2
) -> tuple[list[StaticBytes], int]:
    """Per-stage parameter/gradient/optimizer bytes, and the bytes stage 0 shares with the
    last stage (``tied_param_bytes``)."""
    out = []
    for stage in stages:
        params = list(stage.parameters())  # distinct within the stage
        pb = sum(p.numel() * p.element_size() for p in params)
        gb = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
        out.append(StaticBytes(pb, gb, optimizer_states * gb))
    first = {id(p): p for p in stages[0].parameters()}
    tied = 0
    if len(stages) > 1:
        tied = sum(p.numel() * p.element_size() for p in stages[-1].parameters() if id(p) in first)
    return out, tied


@contextmanager
def _prepared(stages: Sequence[nn.Module], device: torch.device) -> Iterator[None]:
    """Training mode, own gradients and RNG while profiling; all restored afterwards."""
    modes = [s.training for s in stages]
    params = [p for s in stages for p in s.parameters()]
    grads = [p.grad for p in params]
    rng_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        for s in stages:
            s.to(device)
            s.train(True)
        try:
            yield
        finally:
            for s, mode in zip(stages, modes, strict=True):
                s.train(mode)
            for p, g in zip(params, grads, strict=True):
                p.grad = g


def _sync_fn(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


# ----------------------------------------------------------------------------- public


def profile_stages(
    stages: Sequence[nn.Module],
    example_inputs: tuple[Tensor, ...],
    target: Tensor,
    loss_fn: LossFn,
    *,
    micro_batch: int,
    repeats: int = 5,
    warmup: int = 2,
    device: torch.device | str = "cpu",
    batch_dims: Sequence[int] | None = None,
    target_batch_dim: int = 1,
    floor: bool = True,
    names: Sequence[str] | None = None,
    model: str = "model",
    src_len: int = 0,
    tgt_len: int = 0,
    weight: float = 1.0,
    notes: str = "",
    optimizer_states: int = 2,
) -> CostTable:
    """Measure every stage on the first ``micro_batch`` rows of ``example_inputs``.

    ``example_inputs`` / ``target`` is one (mini-)batch of ``batch`` rows (the table's
    ``batch``); batch dims follow the engine's convention (dim 1 of 2-D+ tensors, dim 0 of
    1-D ones) unless ``batch_dims`` / ``target_batch_dim`` say otherwise.  ``loss_fn(out,
    target)`` takes the last stage's first output.  See the module doc for what is measured.
    """
    if not stages:
        raise PlacementError("profile_stages needs at least one stage")
    if repeats < 1 or warmup < 0:
        raise PlacementError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    if names is not None and len(names) != len(stages):
        raise PlacementError(f"{len(names)} names for {len(stages)} stages")
    dev = torch.device(device)
    dims = tuple(batch_dims) if batch_dims is not None else _default_dims(example_inputs)
    batch = _batch_size(example_inputs, dims)
    if not 1 <= micro_batch <= batch:
        raise PlacementError(f"micro_batch={micro_batch} must be between 1 and batch={batch}")
    inputs = tuple(x.to(dev) for x in example_inputs)
    tgt = target.to(dev)
    sync = _sync_fn(dev)
    with _prepared(stages, dev):
        static, tied = static_costs(stages, optimizer_states)
        params = {p.untyped_storage().data_ptr() for s in stages for p in s.parameters()}
        xs, ts = _slice(inputs, dims, tgt, target_batch_dim, micro_batch)
        sizes = one_pass(stages, xs, ts, loss_fn, sync, exclude=params)
        fwd, bwd = median_ms(stages, xs, ts, loss_fn, sync, repeats, max(warmup - 1, 0))
        fwd_floor, bwd_floor = fwd, bwd
        if floor and micro_batch > 1:
            x1, t1 = _slice(inputs, dims, tgt, target_batch_dim, 1)
            f1, b1 = median_ms(stages, x1, t1, loss_fn, sync, repeats, 1)
            fwd_floor = [min(a, b) for a, b in zip(f1, fwd, strict=True)]
            bwd_floor = [min(a, b) for a, b in zip(b1, bwd, strict=True)]
    labels = list(names) if names is not None else [_stage_name(s) for s in stages]
    costs = tuple(
        StageCost(
            name=labels[i],
            fwd_ms=fwd[i],
            bwd_ms=bwd[i],
            param_bytes=static[i].param,
            grad_bytes=static[i].grad,
            optimizer_bytes=static[i].optimizer,
            act_bytes_per_mb=sizes.act_bytes[i],
            act_bytes_per_mb_recompute=sizes.in_bytes[i],
            out_bytes_per_mb=sizes.out_bytes[i],
            fwd_floor_ms=fwd_floor[i],
            bwd_floor_ms=bwd_floor[i],
        )
        for i in range(len(stages))
    )
    return CostTable(
        model=model,
        device=device_label(dev),
        dtype=_dtype_name(stages),
        src_len=src_len,
        tgt_len=tgt_len,
        micro_batch=micro_batch,
        batch=batch,
        stages=costs,
        tied_param_bytes=tied,
        weight=weight,
        source="measured",
        notes=notes,
    )


def _default_dims(inputs: Sequence[Tensor]) -> tuple[int, ...]:
    return tuple(1 if x.dim() >= 2 else 0 for x in inputs)


def _stage_name(stage: nn.Module) -> str:
    name = getattr(stage, "name", None)
    return name if isinstance(name, str) else type(stage).__name__


def _dtype_name(stages: Sequence[nn.Module]) -> str:
    for s in stages:
        for p in s.parameters():
            if p.is_floating_point():
                return str(p.dtype).removeprefix("torch.")
    return "float32"


def cost_tables_json(tables: Sequence[CostTable]) -> str:
    """The cost-table file's text (the format of
    :func:`parallel.planning.costs.save_cost_tables`)."""
    doc = {
        "kind": COST_TABLE_KIND,
        "version": COST_TABLE_VERSION,
        "tables": [t.to_dict() for t in tables],
    }
    return json.dumps(doc, indent=1) + "\n"


def format_table(table: CostTable) -> str:
    """A short human-readable view of one table."""
    head = (
        f"{table.model} on {table.device}: Ts={table.src_len} Tt={table.tgt_len} "
        f"batch={table.batch} micro_batch={table.micro_batch}"
    )
    rows = [head, f"  {'stage':<16}{'fwd ms':>9}{'bwd ms':>9}{'params MB':>11}"
            f"{'act MB':>9}{'out KB':>9}"]  # fmt: skip
    for s in table.stages:
        rows.append(
            f"  {s.name:<16}{s.fwd_ms:>9.3f}{s.bwd_ms:>9.3f}{s.param_bytes / 2**20:>11.2f}"
            f"{s.act_bytes_per_mb / 2**20:>9.2f}{s.out_bytes_per_mb / 2**10:>9.1f}"
        )
    total = sum(s.fwd_ms + s.bwd_ms for s in table.stages)
    rows.append(f"  fwd+bwd per micro-batch: {total:.3f} ms")
    return "\n".join(rows)
