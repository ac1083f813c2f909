"""Parameters shared between stages (tied weights) in a pipelined model.

The single-device GNMT shares one ``Parameter`` between stage 0 (embedding) and the
generator (output projection).  Pipelined, every rank that holds one of those stages keeps
its own copy; after backward the copies' gradients are summed over the ranks holding them
(a process subgroup per set of holders and data-parallel replica), so every copy gets the
single-device gradient and the (identical) optimizer updates keep the copies equal.

Ties are found automatically by ``Parameter`` identity across the full stage list, which
every rank builds identically; a tie whose holders all sit on one rank needs nothing (the
stages share the object and autograd accumulates into it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Tie:
    """One shared parameter: ``(stage, name)`` for every stage that holds it."""

    holders: tuple[tuple[int, str], ...]
    numel: int

    @property
    def stages(self) -> tuple[int, ...]:
        return tuple(sorted({s for s, _ in self.holders}))


def find_ties(stages: Sequence[nn.Module]) -> list[Tie]:
    """Parameters that appear in more than one stage (by object identity)."""
    seen: dict[int, list[tuple[int, str]]] = {}
    params: dict[int, nn.Parameter] = {}
    for s, stage in enumerate(stages):
        for name, p in stage.named_parameters(remove_duplicate=True):
            seen.setdefault(id(p), []).append((s, name))
            params[id(p)] = p
    ties = []
    for pid, holders in seen.items():
        if len({s for s, _ in holders}) > 1:
            ties.append(Tie(tuple(holders), params[pid].numel()))
    return ties


class TieSync:
    """All-reduces (sums) the gradients of tied parameters between the ranks holding them.

    Collective at construction: every rank must construct it with the same ties, placement
    and mesh layout (global rank ``dp_rank * pp + pp_rank``), because ``new_group`` is.
    """

    def __init__(
        self,
        ties: Sequence[Tie],
        stage_ranks: Sequence[int],
        local_params: dict[tuple[int, str], nn.Parameter],
        *,
        pp: int,
        dp: int,
        pp_rank: int,
        dp_rank: int,
        timeout_s: float,
    ) -> None:
        self.ties = list(ties)
        # ties grouped by the set of pipeline ranks holding them
        by_ranks: dict[tuple[int, ...], list[Tie]] = {}
        for tie in self.ties:
            ranks = tuple(sorted({stage_ranks[s] for s in tie.stages}))
            if len(ranks) > 1:
                by_ranks.setdefault(ranks, []).append(tie)
        self.cross_rank = sorted(by_ranks)
        self._pp_rank = pp_rank
        self._groups: list[
            tuple[tuple[int, ...], dist.ProcessGroup | None, list[nn.Parameter]]
        ] = []
        for ranks in self.cross_rank:
            mine: list[nn.Parameter] = []
            for tie in by_ranks[ranks]:
                for s, name in tie.holders:
                    if stage_ranks[s] == pp_rank and (s, name) in local_params:
                        mine.append(local_params[(s, name)])
                        break
            for d in range(dp):  # every rank calls new_group for every group, in order
                global_ranks = [d * pp + r for r in ranks]
                group = dist.new_group(global_ranks, timeout=timedelta(seconds=timeout_s))
                if d == dp_rank and pp_rank in ranks:
                    self._groups.append((ranks, group, mine))

    @property
    def needs_sync(self) -> bool:
        return bool(self._groups)

    def not_owned(self) -> set[int]:
        """ids of local tied parameters that a lower pipeline rank counts (e.g. in norms)."""
        return {
            id(p) for ranks, _, params in self._groups if ranks[0] != self._pp_rank for p in params
        }

    def all_reduce(self) -> None:
        for _, group, params in self._groups:
            all_reduce_grads(params, group)


def all_reduce_grads(params: Sequence[nn.Parameter], group: dist.ProcessGroup | None) -> None:
    """Sum the gradients of ``params`` over ``group`` in one flat all-reduce (None -> 0)."""
    grads: list[torch.Tensor] = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads]) if len(grads) > 1 else grads[0].reshape(-1)
    if len(grads) == 1 and flat.data_ptr() == grads[0].data_ptr():
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)  # in place through the view
        return
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n
