"""``train(cfg) -> metrics``: the entry point of ``nmt-train``.

Reads top-down: set up (seed, data, model, optimizer), maybe resume, then the shared loop
(:mod:`nmt.train.loop`) over shape-bucketed batches until a stop condition, validating and
checkpointing on the way. The run state and its step are :class:`nmt.train.trainer.Trainer`;
pipelined training (``parallel.pp * parallel.dp > 1``) is :mod:`nmt.train.pipelined`.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from nmt.checkpoint import files as ckpt_io
from nmt.config import AppConfig
from nmt.machine.calibrate import announce
from nmt.train.build import seed_everything
from nmt.train.loop import resume_path, run_loop
from nmt.train.metrics import MetricsLog
from nmt.train.pipelined import train_pipelined
from nmt.train.setup import install_faults, setup_run
from nmt.train.single import one_device_trainer
from nmt.train.wave_threads import wave_threads_trainer
from nmt.train.wavefront_ranks import train_wavefront

log = logging.getLogger("nmt.train.run")


def train(cfg: AppConfig) -> dict[str, Any]:
    """Train per ``cfg``; returns the final metrics."""
    setup = setup_run(cfg)
    if setup.pipelined:
        return train_pipelined(setup)
    if setup.wave_ranks and not setup.cfg.parallel.wave_threads:
        return train_wavefront(setup)
    seed_everything(setup.cfg.train.seed)  # model init independent of data prep and calibration
    if setup.wave_ranks:  # the wavefront's ranks as threads of this process
        t = wave_threads_trainer(setup.cfg, setup.corpus, setup.out_dir)
    else:
        t = one_device_trainer(setup.cfg, setup.corpus, setup.out_dir)
    install_faults(t.engine.parameters(), lambda: t.step, 0)
    if ckpt_io.remove_stale_temp(t.ckpt_dir):  # left by a run killed while saving
        log.info("removed unfinished checkpoint temp files in %s", t.ckpt_dir)
    start_from = resume_path(setup.cfg, t.ckpt_dir)
    if start_from is not None:
        t.resume(start_from)
        print(f"resumed from {start_from} at step {t.step}", file=sys.stderr)
    metrics = MetricsLog(setup.out_dir, t.step if start_from is not None else None)
    if setup.choice is not None:  # train.precision=auto: what was chosen, and why
        announce(setup.choice)
        record = {"precision": setup.choice.name, "calibration": setup.choice.record()}
        metrics.write({"step": t.step, **record})
    return run_loop(t, metrics)
