"""The small per-step collectives around a pipelined step.

* :func:`agree` - one all-reduce before the schedule runs: the ranks of each pipeline check
  they were handed the same batch shapes (else every rank raises ``ShapeGuardError`` naming
  each rank's shapes, before any stage buffer is touched), and the loss normaliser is summed
  over the data-parallel replicas;
* :func:`total_loss` - one all-reduce after it: the last pipeline ranks' micro-batch losses,
  summed over replicas, on every rank;
* :class:`GradStash` - keeps gradients accumulated before a step out of that step's tie /
  data-parallel all-reduces, and adds them back afterwards;
* :func:`gather_state_dict` - a full single-device state dict on rank 0.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from parallel.runtime.distenv import DistContext
from parallel.runtime.stagewrap import ShapeGuardError


def agree(ctx: DistContext, key: Any, normaliser: float) -> float:
    """Check pipeline ranks share ``key``; return the normaliser summed over dp."""
    if ctx.world_size == 1:
        return normaliser
    # sum x and sum x^2 over a pipeline's ranks: all equal iff pp * sum(x^2) == sum(x)^2
    x = float(zlib.crc32(repr(key).encode()) & 0xFFFFF)
    buf = torch.zeros(3 * ctx.dp, dtype=torch.float64, device=ctx.device)
    buf[3 * ctx.dp_rank : 3 * ctx.dp_rank + 3] = torch.tensor(
        [x, x * x, normaliser], dtype=torch.float64
    )
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    vals = buf.tolist()
    for d in range(ctx.dp):
        s, s2 = vals[3 * d], vals[3 * d + 1]
        if ctx.pp * s2 != s * s:
            if d == ctx.dp_rank:
                keys: list[Any] = [None] * ctx.pp
                dist.all_gather_object(keys, key, group=ctx.pp_group)
                raise ShapeGuardError(
                    "pipeline ranks were given different batch shapes this step: "
                    + "; ".join(f"rank {r}: {k}" for r, k in enumerate(keys))
                )
            raise ShapeGuardError(
                f"data-parallel replica {d}: its pipeline ranks disagree on this step's "
                "batch shapes"
            )
    return float(sum(vals[2::3])) / ctx.pp


def total_loss(ctx: DistContext, losses: Sequence[Tensor]) -> float:
    """Sum of this rank's micro-batch losses, summed over all ranks (only the last
    pipeline rank of each replica has any): the replicas' total, on every rank."""
    local = (
        torch.stack([t.detach().double() for t in losses]).sum()
        if losses
        else torch.zeros((), dtype=torch.float64, device=ctx.device)
    )
    if ctx.world_size > 1:
        dist.all_reduce(local, op=dist.ReduceOp.SUM)
    return float(local)


class GradStash:
    """Set existing gradients aside (``p.grad = None``) and add them back later."""

    def __init__(self, params: Sequence[nn.Parameter]) -> None:
        self.params = params
        self.saved: dict[int, Tensor] = {}
        for p in params:
            if p.grad is not None:
                self.saved[id(p)] = p.grad
                p.grad = None

    def restore(self) -> None:
        if not self.saved:
            return
        for p in self.params:
            old = self.saved.get(id(p))
            if old is not None:
                if p.grad is not None:
                    old.add_(p.grad)
                p.grad = old
        self.saved = {}


def _stage_sort_key(key: str, prefix: str) -> tuple[int, str]:
    head, _, rest = key[len(prefix) :].partition(".")
    return (int(head), rest) if head.isdigit() else (1 << 30, key)


def gather_state_dict(
    ctx: DistContext, shard: dict[str, Tensor], prefix: str = ""
) -> dict[str, Tensor] | None:
    """Collective: merge the replica-0 shards (``"<stage>.<name>"`` keys) on global rank 0."""
    mine = {prefix + k: v.detach().cpu() for k, v in shard.items()} if ctx.dp_rank == 0 else {}
    if ctx.world_size == 1:
        return mine
    gathered: list[Any] | None = [None] * ctx.world_size if ctx.rank == 0 else None
    dist.gather_object(mine, gathered, dst=0)
    if gathered is None:
        return None
    full: dict[str, Tensor] = {}
    for part in gathered:
        full.update(part)
    return dict(sorted(full.items(), key=lambda kv: _stage_sort_key(kv[0], prefix)))
