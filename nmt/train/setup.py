"""``setup_run(cfg) -> RunSetup``: what every training run settles before it builds a model,
once, in the process that ``nmt-train`` started: settings checked, the plan applied, the
pipeline layout resolved, the run folder made, the corpus prepared and the precision
measured. Single-device training and every pipeline rank start from the same
:class:`RunSetup`; nothing downstream changes the config.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from nmt.config import AppConfig
from nmt.errors import UserError
from nmt.machine.calibrate import Choice
from nmt.prepare.splits import Corpus, prepare_corpus
from nmt.train.loop import make_run_dir
from nmt.train.placement import Layout, apply_plan, resolve_layout
from nmt.train.schedule import schedule_from_config
from nmt.train.trainer import autocast_dtype, pick_device, resolve_precision, seed_everything


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


def setup_run(cfg: AppConfig) -> RunSetup:
    """Check, resolve and prepare (see the module docstring); bad settings fail here, before
    any data is prepared or any worker started."""
    schedule_from_config(cfg.train, 0)
    cfg = apply_plan(cfg)  # parallel=auto: the ranks come from the plan
    autocast_dtype(cfg.train.precision, pick_device(cfg.train.device))
    layout = None
    if cfg.parallel.pp * cfg.parallel.dp > 1:
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
    if cfg.parallel.time_chunks > 1:
        raise UserError(
            f"parallel.time_chunks={cfg.parallel.time_chunks} runs in one process (the layers "
            "of one model wave over time); with parallel.pp/dp > 1 use time_chunks=1"
        )
    if cfg.train.accumulate != 1:
        raise UserError(
            f"train.accumulate={cfg.train.accumulate} applies to one device; pipelined runs "
            "take one batch per parallel.dp replica (split by parallel.microbatches)"
        )
