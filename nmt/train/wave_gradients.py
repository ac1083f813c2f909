"""The shared gradients of the wavefront's processes, summed while the encoder's backward runs.

Every process of :mod:`nmt.train.wavefront_ranks` holds the whole model; the gradients of
the parameters several processes use (the tied embedding, the generator, the layers of
ranks 1..N-1, the encoder when it is split) are summed over every process. After a rank's
decoder backward only the encoder's backward is left, and it changes only the encoder's
gradients. So :class:`SharedGradients` sums in two all-reduces on a process group of its
own:

- ``early`` (called when the decoder's backward is done): every shared gradient but the
  encoder's, in the background (``async_op``) while the encoder's backward computes. The
  tied embedding's gradient so far (generator, target embedding) goes with it and is then
  reset, so the encoder's backward collects only the source embedding's part;
- ``finish`` (after the backward): the encoder's gradients and, of the embedding, only the
  rows of the source tokens (the source embedding's gradient is zero elsewhere), then waits
  for ``early`` and adds the two.

The sum is the one-all-reduce sum regrouped (the embedding's rows added in two parts), equal
up to rounding; ``early`` never called (``parallel.overlap_gradients=false``) means one
all-reduce at ``finish``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor


class SharedGradients:
    """``shared`` summed over the processes of ``group`` (module docstring); ``encoder``: the
    parameters that the encoder's backward may still change (those of them in ``shared`` are
    summed late); ``embedding``: the source embedding's weight (taken apart only where it
    is summed late)."""

    def __init__(
        self,
        shared: Sequence[Tensor],
        encoder: Sequence[Tensor],
        embedding: Tensor,
        group: dist.ProcessGroup | None,
    ) -> None:
        ids = {id(p) for p in encoder}
        late = [p for p in shared if id(p) in ids]
        self.embedding = embedding if any(p is embedding for p in late) else None
        self.early_params = [p for p in shared if id(p) not in ids]
        self.late_params = [p for p in late if p is not self.embedding]
        self.group = group
        self._pending: tuple[dist.Work, Tensor] | None = None

    def early(self) -> None:
        """Start summing every gradient that is final (see the module docstring)."""
        if not self.early_params and self.embedding is None:
            return  # nothing to start (the same on every process)
        flat = flatten(self.early_params + self.embedding_list())
        work = dist.all_reduce(flat, group=self.group, async_op=True)
        assert work is not None
        self._pending = (work, flat)
        if self.embedding is not None:
            self.embedding.grad = None  # the encoder's backward adds its part alone

    def finish(self, rows: Tensor) -> None:
        """Sum what is left and put every summed gradient in place; ``rows``: the distinct
        source tokens that reached the embedding after :meth:`early` (the same on every
        process)."""
        if self._pending is None:  # no early part: one all-reduce of everything
            sum_over(self.early_params + self.late_params + self.embedding_list(), self.group)
            return
        (work, early), self._pending = self._pending, None
        emb, params = self.embedding, self.late_params
        size = sum(p.numel() for p in params)
        if emb is None:
            late = flatten(params)
        else:
            late = flatten(params, rows_of(emb, rows), emb.grad is not None)
        if late.numel():  # nothing late where the encoder has no shared gradient
            dist.all_reduce(late, group=self.group)
        work.wait()
        unflatten(self.early_params + self.embedding_list(), early)
        end = size + (0 if emb is None else rows.numel() * emb.size(1))  # then the flags
        unflatten(params, late[:size], late[end : end + len(params)])
        if emb is not None and float(late[-1]) > 0:
            if emb.grad is None:
                emb.grad = torch.zeros_like(emb)
            part = late[size:end].view(rows.numel(), -1)
            emb.grad.index_add_(0, rows, part.to(emb.dtype))

    def embedding_list(self) -> list[Tensor]:
        return [] if self.embedding is None else [self.embedding]


def rows_of(weight: Tensor, rows: Tensor) -> Tensor:
    """``weight``'s gradient at ``rows`` (zeros without one)."""
    if weight.grad is None:
        return torch.zeros(rows.numel(), weight.size(1), device=weight.device)
    return weight.grad.index_select(0, rows)


def flatten(
    params: Sequence[Tensor], extra: Tensor | None = None, extra_has: bool = False
) -> Tensor:
    """One flat float32 tensor: the gradients of ``params`` (zeros where missing), then
    ``extra``, then one presence flag per parameter (and ``extra_has``'s with ``extra``)."""
    device = params[0].device if params else extra.device if extra is not None else None
    flags = [float(p.grad is not None) for p in params] + ([float(extra_has)] * (extra is not None))
    parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
    more = [] if extra is None else [extra.reshape(-1)]
    return torch.cat([*(t.float() for t in parts + more), torch.tensor(flags, device=device)])


def unflatten(params: Sequence[Tensor], flat: Tensor, flags: Tensor | None = None) -> None:
    """Each parameter's gradient a view of ``flat`` (in order; None where no process had
    one: the presence flags at ``flat``'s end, or ``flags``)."""
    if not params:
        return
    present = (flat[-len(params) :] if flags is None else flags).tolist()
    offset = 0
    for p, n in zip(params, present, strict=True):
        size = p.numel()
        p.grad = flat[offset : offset + size].view_as(p).to(p.dtype) if n > 0 else None
        offset += size


def sum_over(params: Sequence[Tensor], group: dist.ProcessGroup | None) -> None:
    """Each of ``params``' gradients summed over the processes of ``group`` in one
    all-reduce (a missing one counts as zeros; one that no process has stays None)."""
    if not params:
        return
    flat = flatten(params)
    dist.all_reduce(flat, group=group)
    unflatten(params, flat)


def squared_norm(grads: list[Tensor]) -> float:
    """Sum of the squared entries of ``grads``: per-tensor norms in one fused call (as
    ``clip_grad_norm_`` takes them), squared and summed in float64."""
    if not grads:
        return 0.0
    norms = torch._foreach_norm([g.detach() for g in grads])
    return float(torch.stack(norms).double().pow(2).sum())
