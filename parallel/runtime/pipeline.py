"""The pipelined training step: :class:`PipelineRunner`.

One runner per process.  Every process builds the *full* stage list (same seed, so the
copies of tied parameters start equal) and passes it with the placement; the runner keeps
this rank's stages, wraps each virtual stage in torch's manual ``PipelineStage`` and runs a
``torch.distributed.pipelining`` schedule (``ScheduleGPipe``, ``Schedule1F1B``,
``ScheduleInterleaved1F1B``, ``ScheduleLoopedBFS``; by name in
:mod:`parallel.runtime.torchsched`).

Semantics of :meth:`PipelineRunner.step` (``inputs``, ``target``, ``normaliser``):

* every rank of the job calls it with the same batch (the first pipeline rank uses
  ``inputs``, the last uses ``target``; the others only read their shapes);
* ``loss_fn(output, target)`` returns the loss *summed* over one micro-batch; the runner
  divides it by the normaliser summed over the data-parallel replicas, and sums gradients
  over replicas, so any micro-batch count and any ``dp`` gives the single-device gradient of
  ``sum(loss) / sum(normaliser)`` (schedules built with ``scale_grads=False``);
* tied parameters' gradients are summed over the ranks holding a copy
(:mod:`parallel.runtime.ties`);
* shapes are static per bucket: one set of stages + schedule per input-shape key, cached
  (LRU); the ranks of a pipeline check they agree on the key every step, and every stage
  checks its outputs against the bucket's (:class:`parallel.runtime.stagewrap.ShapeGuardError`);
* gradients already present (accumulation) are kept and added to.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from parallel.errors import PlacementError
from parallel.placement import Placement, check_batch, check_pipeline
from parallel.runtime.distenv import DistContext
from parallel.runtime.faults import failure_guard
from parallel.runtime.stagewrap import PipeStage, ShapeGuardError, StageChunk
from parallel.runtime.stepsync import GradStash, agree, gather_state_dict, total_loss
from parallel.runtime.ties import TieSync, all_reduce_grads, find_ties
from parallel.runtime.timeline import TimelineRecorder, TimelineSummary, gather_and_write
from parallel.runtime.torchsched import HAS_RETURN_OUTPUTS, check_torch, make_schedule

LossFn = Callable[[Tensor, Tensor], Tensor]
ShapeKey = tuple[tuple[tuple[int, ...], ...], tuple[int, ...]]


@dataclass
class _Bucket:
    stages: list[PipeStage]
    schedule: Any  # a torch.distributed.pipelining schedule
    microbatches: int


def default_batch_dims(inputs: Sequence[Tensor]) -> tuple[int, ...]:
    """Time-major convention: batch is dim 1 of 2-D+ tensors, dim 0 of 1-D ones."""
    return tuple(1 if x.dim() >= 2 else 0 for x in inputs)


class PipelineRunner:
    """Pipelined forward/backward over ``stages`` placed by ``placement`` (see module doc)."""

    def __init__(
        self,
        stages: Sequence[nn.Module],
        loss_fn: LossFn,
        *,
        ctx: DistContext,
        placement: Placement,
        schedule: str = "gpipe",
        microbatches: int = 1,
        recompute: bool = False,
        batch_dims: Sequence[int] | None = None,
        target_batch_dim: int = 1,
        max_buckets: int = 64,
    ) -> None:
        if placement.n_stages != len(stages):
            raise PlacementError(
                f"placement covers {placement.n_stages} stages, the model has {len(stages)}",
                placement=list(placement.stage_ranks),
                n_stages=len(stages),
            )
        if placement.pp != ctx.pp:
            raise PlacementError(
                f"placement is for pp={placement.pp}, the job runs pp={ctx.pp}",
                placement_pp=placement.pp,
                pp=ctx.pp,
            )
        check_pipeline(placement, schedule, microbatches)
        check_torch()
        self.ctx = ctx
        self.placement = placement
        self.schedule = schedule
        self.microbatches = microbatches
        self.recompute = recompute
        self.loss_fn = loss_fn
        self.batch_dims = tuple(batch_dims) if batch_dims is not None else None
        self.target_batch_dim = target_batch_dim
        self.max_buckets = max_buckets
        self.timeline = TimelineRecorder(ctx.rank, ctx.device)

        self.virtual = placement.virtual_on_rank(ctx.pp_rank)
        self.local_stages = [s for v in self.virtual for s in placement.groups[v]]
        self.holds_first = 0 in self.virtual
        self.holds_last = placement.n_virtual - 1 in self.virtual
        self._modules = {s: stages[s].to(ctx.device) for s in self.local_stages}
        self._chunks = {
            v: StageChunk(
                [self._modules[s] for s in placement.groups[v]],
                placement.groups[v],
                recompute=recompute,
            )
            for v in self.virtual
        }
        named: dict[tuple[int, str], nn.Parameter] = {}
        self._named: dict[str, nn.Parameter] = {}
        seen: set[int] = set()
        for s in self.local_stages:
            for name, p in self._modules[s].named_parameters():
                named[(s, name)] = p
                if id(p) not in seen:
                    seen.add(id(p))
                    self._named[f"{s}.{name}"] = p
        self._params = list(self._named.values())
        self._whole: StageChunk | None = None
        if ctx.pp == 1 and len(self.virtual) > 1:
            self._whole = StageChunk(self.local_modules(), self.local_stages)
        self.ties = TieSync(
            find_ties(stages),
            placement.stage_ranks,
            named,
            pp=ctx.pp,
            dp=ctx.dp,
            pp_rank=ctx.pp_rank,
            dp_rank=ctx.dp_rank,
            timeout_s=ctx.timeout_s,
        )
        self._buckets: OrderedDict[tuple[bool, ShapeKey], _Bucket] = OrderedDict()
        self._norm = 1.0
        self._loss_calls = 0

    # ------------------------------------------------------------------ parameters

    def local_modules(self) -> list[nn.Module]:
        """This rank's model stages (in stage order): the optimizer's business."""
        return [self._modules[s] for s in self.local_stages]

    def parameters(self) -> list[nn.Parameter]:
        """This rank's parameters, each once (a tie held twice on one rank counts once)."""
        return list(self._params)

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``("<stage>.<name>", p)`` with the single-device model's stage-list naming."""
        return iter(self._named.items())

    def train(self, mode: bool = True) -> None:
        for m in self.local_modules():
            m.train(mode)

    # ------------------------------------------------------------------ steps

    def step(self, inputs: Sequence[Tensor], target: Tensor, normaliser: float) -> float:
        """Forward + backward of one mini-batch; returns the loss (same on every rank).

        Afterwards this rank's parameters hold the gradient of
        ``sum(loss_fn) / sum over dp replicas of normaliser`` (tied and dp-reduced).
        """
        inputs = tuple(inputs)
        key = self._key(inputs, target, self.microbatches)
        with failure_guard(self.ctx.monitor, "pipeline step"):
            norm = agree(self.ctx, key, float(normaliser))
            bucket = self._bucket(key, True, self.microbatches)
            stash = GradStash(self._params)
            self._norm = norm
            losses = self._run(bucket, inputs, target, training=True)
            if self.ties.needs_sync:
                self.ties.all_reduce()
            if self.ctx.dp > 1:
                all_reduce_grads(self._params, self.ctx.dp_group)
            stash.restore()
            return total_loss(self.ctx, losses)

    def forward_only(self, inputs: Sequence[Tensor], target: Tensor) -> float:
        """Validation: the SUM of ``loss_fn`` over the batch (and dp replicas), no grads.

        Uses the largest micro-batch count <= ``microbatches`` that divides the batch, and
        a forward-only schedule (``schedule.eval()``); dropout is off while it runs.
        """
        inputs = tuple(inputs)
        b = self._batch_size(inputs)
        m = max(d for d in range(1, self.microbatches + 1) if b % d == 0)
        key = self._key(inputs, target, m)
        modes = [mod.training for mod in self.local_modules()]
        self.train(False)
        try:
            with failure_guard(self.ctx.monitor, "pipeline forward_only"):
                agree(self.ctx, key, 0.0)
                bucket = self._bucket(key, False, m)
                self._norm = 1.0
                with torch.no_grad():
                    losses = self._run(bucket, inputs, target, training=False)
                return total_loss(self.ctx, losses)
        finally:
            for mod, mode in zip(self.local_modules(), modes, strict=True):
                mod.train(mode)

    def clip_grad_norm_(self, max_norm: float) -> float:
        """Clip all gradients of the (whole, pipelined) model by their global L2 norm.

        Same formula as ``torch.nn.utils.clip_grad_norm_`` on the single-device model;
        returns the total norm before clipping (inf/nan when non-finite), same on all ranks.
        """
        skip = self.ties.not_owned()
        norms = [
            p.grad.detach().float().norm()
            for p in self._params
            if p.grad is not None and id(p) not in skip
        ]
        sq = torch.stack(norms).pow(2).sum() if norms else torch.zeros((), device=self.ctx.device)
        if self.ctx.pp > 1:
            with failure_guard(self.ctx.monitor, "gradient norm"):
                dist.all_reduce(sq, op=dist.ReduceOp.SUM, group=self.ctx.pp_group)
        total = sq.sqrt()
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        for p in self._params:
            if p.grad is not None:
                p.grad.mul_(coef.to(p.grad.dtype))
        return float(total)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Tensor]:
        """This rank's shard: ``"<stage>.<name>"`` keys of its stages (params and buffers)."""
        out: dict[str, Tensor] = {}
        for s in self.local_stages:
            for k, v in self._modules[s].state_dict().items():
                out[f"{s}.{k}"] = v
        return out

    def full_state_dict(self, prefix: str = "") -> dict[str, Tensor] | None:
        """Collective: the single-device state dict (``nn.ModuleList(stages)`` keys, with
        ``prefix``) on global rank 0, ``None`` elsewhere."""
        with failure_guard(self.ctx.monitor, "state dict gather"):
            return gather_state_dict(self.ctx, self.state_dict(), prefix)

    def load_full_state_dict(
        self, state: dict[str, Tensor], prefix: str = "", strict: bool = True
    ) -> None:
        """Load this rank's stages from a full single-device state dict (any placement)."""
        for s in self.local_stages:
            head = f"{prefix}{s}."
            sub = {k[len(head) :]: v for k, v in state.items() if k.startswith(head)}
            self._modules[s].load_state_dict(sub, strict=strict)

    # ------------------------------------------------------------------ timeline

    def write_timeline(self, out_dir: str | Path) -> TimelineSummary | None:
        """Collective: gather the recorded events of pipeline replica 0; global rank 0
        writes ``timeline.json`` and ``timeline.png`` into ``out_dir``."""
        rank_map = {self.ctx.global_rank(r, 0): r for r in range(self.ctx.pp)}
        return gather_and_write(
            self.timeline,
            out_dir,
            ranks=self.ctx.pp,
            microbatches=self.microbatches,
            stages_per_rank=self.placement.stages_per_rank,
            schedule=self.schedule,
            rank_map=rank_map,
        )

    # ------------------------------------------------------------------ internals

    def _batch_size(self, inputs: tuple[Tensor, ...]) -> int:
        dims = self.batch_dims or default_batch_dims(inputs)
        sizes = {int(x.shape[d]) for x, d in zip(inputs, dims, strict=True)}
        if len(sizes) != 1:
            raise ShapeGuardError(
                f"inputs disagree on the batch size: shapes {[tuple(x.shape) for x in inputs]} "
                f"batch dims {list(dims)}"
            )
        return sizes.pop()

    def _key(self, inputs: tuple[Tensor, ...], target: Tensor, microbatches: int) -> ShapeKey:
        check_batch(self._batch_size(inputs), microbatches)
        return tuple(tuple(x.shape) for x in inputs), tuple(target.shape)

    def _bucket(self, key: ShapeKey, training: bool, microbatches: int) -> _Bucket:
        k = (training, key)
        bucket = self._buckets.get(k)
        if bucket is not None:
            self._buckets.move_to_end(k)
            return bucket
        desc = f"{'train' if training else 'eval'} {key}"
        chunks, n_virtual = self._stage_chunks(training)
        stages = [
            PipeStage(
                chunk,
                v,
                n_virtual,
                self.ctx.device,
                self.ctx.pp_group,
                recorder=self.timeline,
                bucket=desc,
            )
            for v, chunk in chunks
        ]
        bucket = _Bucket(stages, self._make_schedule(stages, microbatches, training), microbatches)
        self._buckets[k] = bucket
        while len(self._buckets) > self.max_buckets:
            self._buckets.popitem(last=False)
        return bucket

    def _stage_chunks(self, training: bool) -> tuple[list[tuple[int, StageChunk]], int]:
        """(virtual index, chunk) pairs of this rank and the virtual stage count.

        Forward-only on one rank runs all stages as one chunk: torch's looped schedules
        still walk their backward actions in ``eval()``, which breaks for adjacent stages
        on the same rank.
        """
        if training or self._whole is None:
            return [(v, self._chunks[v]) for v in self.virtual], self.placement.n_virtual
        return [(0, self._whole)], 1

    def _make_schedule(self, stages: list[PipeStage], m: int, training: bool) -> Any:
        # forward only: fill-drain over this rank's chunk(s)
        fill_drain = "gpipe" if len(stages) == 1 else "looped_bfs"
        return make_schedule(self.schedule if training else fill_drain, stages, m, self._loss)

    def _loss(self, output: Tensor, target_mb: Tensor) -> Tensor:
        tgt = target_mb.movedim(0, self.target_batch_dim).contiguous()
        mb = self._loss_calls % max(self.microbatches, 1)
        self._loss_calls += 1
        with self.timeline.compute("loss", self.placement.n_virtual - 1, mb):
            return self.loss_fn(output, tgt) / self._norm

    def _run(
        self, bucket: _Bucket, inputs: tuple[Tensor, ...], target: Tensor, *, training: bool
    ) -> list[Tensor]:
        dev = self.ctx.device
        args: tuple[Tensor, ...] = ()
        if self.holds_first:
            dims = self.batch_dims or default_batch_dims(inputs)
            self._chunks[0].root_batch_dims = dims
            if self._whole is not None:
                self._whole.root_batch_dims = dims
            args = tuple(
                x.to(dev, non_blocking=True).movedim(d, 0).contiguous()
                for x, d in zip(inputs, dims, strict=True)
            )
        tgt = None
        if self.holds_last:
            tgt = target.to(dev, non_blocking=True).movedim(self.target_batch_dim, 0).contiguous()
        losses: list[Tensor] = []
        self._loss_calls = 0
        self.timeline.begin_step()
        kw: dict[str, Any] = {"target": tgt, "losses": losses}
        if HAS_RETURN_OUTPUTS:  # do not keep the last stage's outputs (torch >= 2.8)
            kw["return_outputs"] = False
        if training:
            bucket.schedule.step(*args, **kw)
        else:
            bucket.schedule.eval(*args, **kw)
        return losses
