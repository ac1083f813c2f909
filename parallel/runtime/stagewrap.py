"""What wraps the model's stages for ``torch.distributed.pipelining``.

* :class:`StageChunk` - one *virtual stage*: a run of consecutive model stages chained as in
  the single-device model (``x = s(*x)``), optional activation checkpointing
  (``torch.utils.checkpoint``, ``use_reentrant=False``), contiguous outputs (gloo and NCCL
  send only contiguous tensors), and, for virtual stage 0, the batch-first root inputs
  turned back to the model's layout (time-major).
* :class:`PipeStage` - torch's manual ``PipelineStage`` plus what the engine needs:
  contiguous input gradients (autograd may hand back permuted gradients, e.g. through an
  ``einsum``; their strides would become the peer's receive buffer layout), a per-step
  shape guard (a bucket's buffers are sized at its first step: any other shape later would
  be silently wrong), and timeline hooks.

Inputs that get no gradient are torch's business: integer tensors (``src_len``) carry
``requires_grad=False`` metadata, so neither side posts a gradient transfer; a float input a
stage does not use (the generator's ``ctx``) gets a zero gradient sent back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.pipelining import PipelineStage
from torch.utils.checkpoint import checkpoint

from parallel.runtime.timeline import TimelineRecorder


class ShapeGuardError(RuntimeError):
    """A tensor crossing a stage boundary does not have its bucket's shape."""


def _as_tuple(out: Any) -> tuple[Tensor, ...]:
    if isinstance(out, Tensor):
        return (out,)
    if isinstance(out, (tuple, list)) and all(isinstance(t, Tensor) for t in out):
        return tuple(out)
    raise TypeError(
        f"a pipeline stage must return a tensor or a tuple of tensors, got {type(out).__name__}"
    )


def _contiguous(out: Any) -> Tensor | tuple[Tensor, ...]:
    if isinstance(out, Tensor):
        return out.contiguous()
    return tuple(t.contiguous() for t in _as_tuple(out))


class StageChunk(nn.Module):
    """Consecutive model stages run as one pipeline (virtual) stage."""

    def __init__(
        self,
        stages: Sequence[nn.Module],
        indices: Sequence[int],
        *,
        recompute: bool = False,
        root_batch_dims: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.parts = nn.ModuleList(stages)
        self.indices = tuple(indices)
        self.recompute = recompute
        self.root_batch_dims = tuple(root_batch_dims) if root_batch_dims is not None else None

    def _run(self, *xs: Tensor) -> Tensor | tuple[Tensor, ...]:
        out: Any = xs
        for part in self.parts:
            out = part(*_as_tuple(out))
        return _contiguous(out)

    def forward(self, *xs: Tensor) -> Tensor | tuple[Tensor, ...]:
        if self.root_batch_dims is not None:  # inputs arrive batch-first (for chunking)
            xs = tuple(
                (x.movedim(0, d) if d != 0 else x).contiguous()
                for x, d in zip(xs, self.root_batch_dims, strict=True)
            )
        if self.recompute and torch.is_grad_enabled():
            out: Any = checkpoint(self._run, *xs, use_reentrant=False)
            return out  # type: ignore[no-any-return]
        return self._run(*xs)


class PipeStage(PipelineStage):
    """``PipelineStage`` with contiguous gradients, a shape guard and timeline hooks."""

    def __init__(
        self,
        submodule: nn.Module,
        stage_index: int,
        num_stages: int,
        device: torch.device,
        group: dist.ProcessGroup | None,
        *,
        recorder: TimelineRecorder | None = None,
        bucket: str = "",
    ) -> None:
        super().__init__(submodule, stage_index, num_stages, device, group=group)
        self.recorder = recorder
        self.bucket = bucket

    # -- contiguity of gradients (metadata inference and runtime)
    def _compute_input_grads(
        self,
        outputs: list[Tensor],
        all_fwd_inputs: list[Tensor],
        grad_outputs: list[Tensor | None] | None = None,
    ) -> tuple[Tensor | None, ...]:
        grads = super()._compute_input_grads(outputs, all_fwd_inputs, grad_outputs)
        return tuple(g.contiguous() if g is not None else None for g in grads)

    # -- shape guard
    def _guard(self, outputs: tuple[Tensor, ...], mb: int) -> None:
        # torch 2.13 keeps the inferred metadata in _stage_meta; older ones in _outputs_meta
        meta = getattr(self, "_stage_meta", None)
        metas = getattr(meta, "outputs", None) or getattr(self, "_outputs_meta", None)
        if metas is None:
            return
        got = [tuple(t.shape) for t in outputs]
        want = [tuple(m.shape) for m in metas]
        if got != want or any(t.dtype != m.dtype for t, m in zip(outputs, metas, strict=False)):
            raise ShapeGuardError(
                f"stage {self.stage_index} (bucket {self.bucket}) micro-batch {mb}: outputs have "
                f"shapes {got} {[str(t.dtype) for t in outputs]} but this bucket's pipeline "
                f"was built for {want} {[str(m.dtype) for m in metas]}; every shape must be a "
                "function of the bucket's input shapes"
            )

    # -- compute
    def forward_one_chunk(
        self,
        fwd_chunk_id: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None = None,
        save_forward_output: bool = True,
    ) -> Any:
        rec = self.recorder
        if rec is not None and rec.enabled:
            with rec.compute("F", self.stage_index, fwd_chunk_id, recv="recv_F"):
                out = super().forward_one_chunk(fwd_chunk_id, args, kwargs, save_forward_output)
        else:
            out = super().forward_one_chunk(fwd_chunk_id, args, kwargs, save_forward_output)
        self._guard(_as_tuple(out), fwd_chunk_id)
        return out

    def backward_one_chunk(
        self,
        bwd_chunk_id: int,
        loss: Any = None,
        full_backward: bool = True,
        last_backward: bool = False,
    ) -> None:
        rec = self.recorder
        if rec is not None and rec.enabled:
            with rec.compute("B", self.stage_index, bwd_chunk_id, recv="recv_B"):
                super().backward_one_chunk(bwd_chunk_id, loss, full_backward, last_backward)
        else:
            super().backward_one_chunk(bwd_chunk_id, loss, full_backward, last_backward)
        grads = self.bwd_cache.get(bwd_chunk_id)
        if grads is not None:
            self.bwd_cache[bwd_chunk_id] = tuple(
                g.contiguous() if isinstance(g, Tensor) else g for g in grads
            )

    def backward_weight_one_chunk(self, bwd_chunk_id: int, last_backward: bool = False) -> None:
        rec = self.recorder
        if rec is not None and rec.enabled:
            with rec.compute("W", self.stage_index, bwd_chunk_id):
                super().backward_weight_one_chunk(bwd_chunk_id, last_backward)
        else:
            super().backward_weight_one_chunk(bwd_chunk_id, last_backward)

    # -- communication (timeline only)
    def get_fwd_recv_ops(self, fwd_chunk_id: int) -> list[dist.P2POp]:
        ops = super().get_fwd_recv_ops(fwd_chunk_id)
        if ops and self.recorder is not None:
            self.recorder.recv_posted("recv_F", self.stage_index, fwd_chunk_id)
        return ops

    def get_bwd_recv_ops(self, bwd_chunk_id: int) -> list[dist.P2POp]:
        ops = super().get_bwd_recv_ops(bwd_chunk_id)
        if ops and self.recorder is not None:
            self.recorder.recv_posted("recv_B", self.stage_index, bwd_chunk_id)
        return ops

    def get_fwd_send_ops(self, fwd_chunk_id: int) -> list[dist.P2POp]:
        ops = super().get_fwd_send_ops(fwd_chunk_id)
        if ops and self.recorder is not None and self.recorder.enabled:
            n = sum(op.tensor.numel() * op.tensor.element_size() for op in ops)
            self.recorder.instant("send_F", self.stage_index, fwd_chunk_id, n)
        return ops

    def get_bwd_send_ops(self, bwd_chunk_id: int) -> list[dist.P2POp]:
        ops = super().get_bwd_send_ops(bwd_chunk_id)
        if ops and self.recorder is not None and self.recorder.enabled:
            n = sum(op.tensor.numel() * op.tensor.element_size() for op in ops)
            self.recorder.instant("send_B", self.stage_index, bwd_chunk_id, n)
        return ops
