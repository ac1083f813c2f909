"""Public API of the pipeline engine (one import for the training loop).

    ctx = init_distributed(dp=cfg.dp, pp=cfg.pp, backend=cfg.backend, timeout_s=cfg.timeout_s)
    placement, schedule, m = resolve(cfg.placement, n_stages=len(stages), pp=cfg.pp, ...)
    runner = PipelineRunner(stages, loss_sum_fn, ctx=ctx, placement=placement,
                            schedule=schedule, microbatches=m, recompute=cfg.recompute)
    opt = torch.optim.Adam(runner.parameters())
    loss = runner.step((src, src_len, tgt_in), tgt_out, ntokens)
    runner.clip_grad_norm_(5.0); opt.step(); opt.zero_grad()
    ctx.close()

Modules: :mod:`parallel.placement` (where stages go), :mod:`parallel.runtime.pipeline` (the
step), :mod:`parallel.runtime.torchsched` (torch schedules by name),
:mod:`parallel.runtime.stagewrap` (torch stage wrappers), :mod:`parallel.runtime.ties` (tied
weights), :mod:`parallel.runtime.distenv` (process groups / mesh),
:mod:`parallel.runtime.faults` (dead ranks), :mod:`parallel.runtime.launch` (worker processes),
:mod:`parallel.runtime.timeline` (timelines).
"""

from __future__ import annotations

from parallel.errors import PlacementError
from parallel.placement import (
    Placement,
    check_batch,
    check_pipeline,
    contiguous,
    from_plan,
    gnmt,
    resolve,
)
from parallel.runtime.distenv import DistContext, init_distributed
from parallel.runtime.faults import PeerFailure
from parallel.runtime.launch import WorkerFailure, in_worker, launch, run_worker
from parallel.runtime.pipeline import LossFn, PipelineRunner
from parallel.runtime.stagewrap import ShapeGuardError
from parallel.runtime.ties import Tie, find_ties
from parallel.runtime.timeline import TimelineRecorder, TimelineSummary, theory_bubble

__all__ = [
    "DistContext",
    "LossFn",
    "PeerFailure",
    "PipelineRunner",
    "Placement",
    "PlacementError",
    "ShapeGuardError",
    "Tie",
    "TimelineRecorder",
    "TimelineSummary",
    "WorkerFailure",
    "check_batch",
    "check_pipeline",
    "contiguous",
    "find_ties",
    "from_plan",
    "gnmt",
    "in_worker",
    "init_distributed",
    "launch",
    "resolve",
    "run_worker",
    "theory_bubble",
]
