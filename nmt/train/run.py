"""``train(cfg) -> metrics``: the entry point of ``nmt-train``.

Reads top-down: set up (seed, data, model, optimizer), maybe resume, then the shared loop
(:mod:`nmt.train.loop`) over shape-bucketed batches until a stop condition, validating and
checkpointing on the way. The run state and its step are :class:`nmt.train.trainer.Trainer`;
pipelined training (``parallel.pp * parallel.dp > 1``) is :mod:`nmt.train.pipelined`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import torch

from nmt.checkpoint import files as ckpt_io
from nmt.config import AppConfig
from nmt.machine.calibrate import announce
from nmt.prepare.splits import prepare_corpus
from nmt.train.loop import make_run_dir, resume_path, run_loop
from nmt.train.metrics import MetricsLog
from nmt.train.pipelined import train_pipelined
from nmt.train.placement import apply_plan
from nmt.train.schedule import schedule_from_config
from nmt.train.trainer import (
    Trainer,
    autocast_dtype,
    pick_device,
    resolve_precision,
    seed_everything,
)

log = logging.getLogger("nmt.train.run")


def train(cfg: AppConfig) -> dict[str, Any]:
    """Train per ``cfg`` (a Hydra DictConfig or an equivalent object); returns final metrics."""
    schedule_from_config(cfg.train, 0)  # bad schedule settings fail before data preparation
    apply_plan(cfg)  # parallel=auto: the ranks come from the plan
    autocast_dtype(str(cfg.train.precision), pick_device(str(cfg.train.device)))  # fail fast
    if int(cfg.parallel.pp) * int(cfg.parallel.dp) > 1:
        return train_pipelined(cfg)
    tc = cfg.train
    out_dir = make_run_dir(Path(str(tc.out_dir or "runs/latest")).expanduser())
    seed_everything(int(tc.seed))
    if int(tc.threads):
        torch.set_num_threads(int(tc.threads))
    corpus = prepare_corpus(cfg.data, int(tc.seed))
    choice = resolve_precision(cfg)  # train.precision=auto on a CPU: measured here
    if choice is not None:
        cfg.train.precision = choice.name
    seed_everything(int(tc.seed))  # model init independent of data prep and calibration
    t = Trainer(cfg, corpus, out_dir)
    if ckpt_io.remove_stale_temp(t.ckpt_dir):  # left by a run killed while saving
        log.info("removed unfinished checkpoint temp files in %s", t.ckpt_dir)
    start_from = resume_path(cfg, t.ckpt_dir)
    if start_from is not None:
        t.resume(start_from)
        print(f"resumed from {start_from} at step {t.step}", file=sys.stderr)
    metrics = MetricsLog(out_dir, t.step if start_from is not None else None)
    if choice is not None:  # train.precision=auto: what was chosen, and why
        announce(choice)
        metrics.write({"step": t.step, "precision": choice.name, "calibration": choice.record()})
    return run_loop(t, metrics)
