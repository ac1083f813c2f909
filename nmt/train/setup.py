"""``setup_run(cfg) -> RunSetup``: what every training run settles before it builds a model,
once, in the process that ``nmt-train`` started: settings checked, the plan applied, the
pipeline layout resolved, the run folder made, the corpus prepared and the precision
measured. Single-device training and every pipeline rank start from the same
:class:`RunSetup`; nothing downstream changes the config.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from nmt.config import AppConfig
from nmt.errors import UserError
from nmt.machine.calibrate import Choice
from nmt.prepare.splits import Corpus, prepare_corpus
from nmt.train.build import autocast_dtype, pick_device, resolve_precision, seed_everything
from nmt.train.loop import make_run_dir
from nmt.train.placement import Layout, apply_plan, resolve_layout
from nmt.train.schedule import schedule_from_config
from nmt.train.wave_checks import check_wave_ranks


@dataclass(frozen=True)
class RunSetup:
    """A run ready to build its model: ``cfg`` as resolved (plan applied, ``train.precision``
    chosen, ``train.out_dir`` set, ``parallel.microbatches`` the layout's), the prepared
    corpus, the precision measurement behind ``auto`` and, for pipelined runs, the layout."""

    cfg: AppConfig
    corpus: Corpus
    out_dir: Path
    choice: Choice | None
    layout: Layout | None

    @property
    def pipelined(self) -> bool:
        return self.layout is not None

    @property
    def wave_ranks(self) -> bool:
        """The wavefront across ``parallel.pp`` ranks (processes, or threads with
        ``parallel.wave_threads``)."""
        return self.cfg.parallel.pp > 1 and self.cfg.parallel.time_chunks > 1


def setup_run(cfg: AppConfig) -> RunSetup:
    """Check, resolve and prepare (see the module docstring); bad settings fail here, before
    any data is prepared or any worker started."""
    schedule_from_config(cfg.train, 0)
    cfg = apply_plan(cfg)  # parallel=auto: the ranks come from the plan
    autocast_dtype(cfg.train.precision, pick_device(cfg.train.device))
    layout = None
    if cfg.parallel.encoder_split and not (cfg.parallel.pp > 1 and cfg.parallel.time_chunks > 1):
        raise UserError(
            "parallel.encoder_split=true needs the wavefront across ranks "
            "(parallel=wavefront: parallel.pp >= 2 and parallel.time_chunks > 1)"
        )
    if cfg.parallel.wave_threads and not (cfg.parallel.pp > 1 and cfg.parallel.time_chunks > 1):
        raise UserError(
            "parallel.wave_threads=true needs the wavefront's ranks "
            "(parallel=wavefront: parallel.pp >= 2 and parallel.time_chunks > 1)"
        )
    if cfg.parallel.attention_split and not cfg.parallel.encoder_split:
        raise UserError("parallel.attention_split=true needs parallel.encoder_split=true")
    if cfg.parallel.encoder_shares is not None and not cfg.parallel.encoder_split:
        raise UserError("parallel.encoder_shares needs parallel.encoder_split=true")
    if cfg.parallel.pp * cfg.parallel.dp > 1 and cfg.parallel.time_chunks > 1:
        check_wave_ranks(cfg)  # the wavefront across processes: no pipeline layout
    elif cfg.parallel.pp * cfg.parallel.dp > 1:
        check_pipelined(cfg)
        layout = resolve_layout(cfg)
    out_dir = make_run_dir(Path(cfg.train.out_dir or "runs/latest").expanduser())
    seed_everything(cfg.train.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    corpus = prepare_corpus(cfg.data, cfg.train.seed)
    choice = resolve_precision(cfg)  # train.precision=auto on a CPU: measured here
    train = replace(cfg.train, out_dir=str(out_dir))
    if choice is not None:
        train = replace(train, precision=choice.name)
    parallel = cfg.parallel
    if layout is not None:
        parallel = replace(parallel, microbatches=layout.microbatches)
    return RunSetup(replace(cfg, train=train, parallel=parallel), corpus, out_dir, choice, layout)


def check_pipelined(cfg: AppConfig) -> None:
    """Settings that apply to one device only."""
    if cfg.train.precision == "fp16":
        raise UserError(
            "train.precision=fp16 is not supported in pipelined runs (its loss scale would "
            "have to agree across ranks); use bf16"
        )
    if cfg.train.accumulate != 1:
        raise UserError(
            f"train.accumulate={cfg.train.accumulate} applies to one device; pipelined runs "
            "take one batch per parallel.dp replica (split by parallel.microbatches)"
        )


INJECT_ENV = "PIPENMT_INJECT_NAN"  # test-only fault injection, see install_faults


def install_faults(
    params: Iterable[torch.nn.Parameter], step: Callable[[], int], rank: int
) -> None:
    """Fault injection for tests, installed once at set-up (the step knows nothing of it).
    ``PIPENMT_INJECT_NAN=3,5@1``: rank 1's gradients turn NaN at steps 3 and 5 (the first
    attempt only), as a fault on one rank would, and the others must skip the step with it;
    ``4-@1``: at every attempt from step 4 on. ``step()`` reads the run's step."""
    spec = os.environ.get(INJECT_ENV, "")
    steps, _, who = spec.partition("@")
    if not spec or rank != int(who or 0):
        return
    first = next((p for p in params if p.requires_grad), None)
    if first is None:
        return
    poisoned: set[int] = set()

    def poison(param: torch.Tensor) -> None:
        now = step()
        if steps.endswith("-"):
            hit = now >= int(steps[:-1])
        else:  # the first attempt at a listed step (a skipped step is tried again)
            hit = str(now) in steps.split(",") and now not in poisoned
        if hit and param.grad is not None:
            poisoned.add(now)
            param.grad.fill_(float("nan"))

    first.register_post_accumulate_grad_hook(poison)  # type: ignore[no-untyped-call]
