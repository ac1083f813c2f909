"""What the config says about placing the model on pipeline ranks, checked in the parent
process before any worker starts (bad settings fail here, exit 2): the stage list's
arguments, the placement/schedule/micro-batches, recompute, and ``parallel=auto``'s ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from nmt.config import AppConfig
from nmt.errors import UserError
from nmt.models import registry as arch
from nmt.train.build import check_model_config
from parallel.placement import Placement
from parallel.planning.plan import load_plan
from parallel.runtime.engine import from_plan, resolve


def n_stages(cfg: AppConfig) -> int:
    """The number of pipeline stages of ``cfg.model`` (its architecture's stage list); an
    impossible model is a one-line error here, before any worker starts."""
    return len(arch.stage_names(check_model_config(cfg.model)))


def resolve_placement(cfg: AppConfig) -> tuple[Any, str, int]:
    """Placement, schedule and micro-batch count, checked before any process starts."""
    pc, m = cfg.parallel, cfg.model
    model_arch = check_model_config(m).arch
    if str(pc.placement) == "gnmt" and model_arch != "gnmt":
        raise UserError(
            f"parallel.placement=gnmt is GNMT's expert layer-per-device placement, not for "
            f"model.arch={model_arch}; use placement=contiguous, parallel.balance=[...] or "
            "placement=auto with a plan"
        )
    return resolve(
        str(pc.placement),
        n_stages=n_stages(cfg),
        pp=int(pc.pp),
        schedule=str(pc.schedule),
        microbatches=int(pc.microbatches),
        balance=list(pc.balance) if pc.balance is not None else None,
        plan=str(pc.plan) if pc.plan else None,
        n_enc=int(m.enc_layers),
        n_dec=int(m.dec_layers),
    )


def apply_plan(cfg: AppConfig) -> AppConfig:
    """``parallel=auto`` / ``parallel.plan=FILE``: the number of pipeline ranks (and, unless
    ``parallel.dp`` is set, the replicas) come from the plan; returns the config with them.
    A placement that cannot apply is a one-line error, never a silent single-device run."""
    pc = cfg.parallel
    placement, plan_path = str(pc.placement), str(pc.plan) if pc.plan else None
    if plan_path and placement == "contiguous" and pc.balance is None:
        placement = "auto"  # a plan alone means placement=auto
    if placement == "auto":
        if not plan_path:
            raise UserError("parallel.placement=auto needs a plan file: parallel.plan=PATH")
        plan = load_plan(plan_path, n_stages(cfg))
        if int(pc.pp) not in (1, plan.num_ranks):
            raise UserError(
                f"parallel.pp={pc.pp} but the plan {plan_path} is for {plan.num_ranks} ranks"
            )
        dp = plan.dp if int(pc.dp) == 1 else pc.dp
        return replace(cfg, parallel=replace(pc, placement="auto", pp=plan.num_ranks, dp=dp))
    if plan_path:
        raise UserError(f"parallel.plan applies to parallel.placement=auto, not {placement}")
    if int(pc.pp) * int(pc.dp) == 1 and (placement != "contiguous" or pc.balance):
        what = f"parallel.placement={placement}" if placement != "contiguous" else "balance"
        raise UserError(
            f"{what} needs parallel.pp > 1 (one process has nothing to place); "
            "set parallel.pp or use parallel=none"
        )
    return cfg


@dataclass(frozen=True)
class Layout:
    """How a pipelined run places its stages, resolved once before the ranks start."""

    placement: Placement
    schedule: str
    microbatches: int
    recompute: bool


def resolve_layout(cfg: AppConfig) -> Layout:
    """The run's :class:`Layout` (placement, schedule, micro-batches, recompute)."""
    placement, schedule, micro = resolve_placement(cfg)
    return Layout(placement, schedule, micro, recompute_setting(cfg))


def recompute_setting(cfg: AppConfig) -> bool:
    """``parallel.recompute``, or the plan's choice for ``placement=auto``."""
    pc = cfg.parallel
    if str(pc.placement) == "auto" and pc.plan:
        n = n_stages(cfg)
        return bool(cfg.parallel.recompute) or from_plan(str(pc.plan), n, int(pc.pp))[1].recompute
    return bool(cfg.parallel.recompute)
