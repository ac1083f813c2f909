"""One training run: :class:`Trainer` holds what every run has (settings, data position,
optimizer and schedule, counters, checkpoint folder) and drives the step; an
:class:`Engine` is what this process trains and how: the whole model on one device
(:class:`nmt.train.single.SingleDevice`) or one rank's stages of a pipeline
(:class:`nmt.train.pipelined.PipelineRank`). The loop (:mod:`nmt.train.loop`) only sees the
:class:`Trainer`.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from data.batching import Batch, Batcher
from nmt.checkpoint import files as ckpt_io
from nmt.config import AppConfig
from nmt.errors import UserError
from nmt.prepare.splits import Corpus
from nmt.train.schedule import rebase_lr, schedule_from_config

log = logging.getLogger("nmt.train.run")


@dataclass(frozen=True)
class Computed:
    """One step's forward and backward: loss and nll per target token over all the step's
    batches, and why the update must be skipped (``None``: it may go ahead)."""

    loss: float
    nll: float
    bad: str | None = None


class Engine(Protocol):
    """What a process trains. ``compute`` runs forward and backward over the step's batches
    and clips the gradients; ``apply`` takes the optimizer step; the rest are the collective
    (pipelined) or local (one device) versions of validation, stop agreement, checkpoints."""

    device: torch.device
    is_main: bool
    batches_per_step: int  # batches drawn per optimizer step (accumulate, or one per replica)

    def parameters(self) -> list[torch.nn.Parameter]: ...

    def compute(
        self, drawn: list[Batch], ntokens: int, optimizer: torch.optim.Optimizer, step: int
    ) -> Computed: ...

    def apply(self, optimizer: torch.optim.Optimizer) -> None: ...

    def validate(self, t: Trainer) -> dict[str, Any]: ...

    def agree(self, stop: str | None, run_seconds: float) -> tuple[str | None, float]: ...

    def save(self, t: Trainer, best: bool) -> None: ...

    def resume(self, t: Trainer, path: Path) -> None: ...

    def finish(self, t: Trainer) -> dict[str, Any]: ...


class Trainer:
    """State of one run whatever its engine: settings, data, optimizer, schedule, counters."""

    def __init__(self, cfg: AppConfig, corpus: Corpus, out_dir: Path, engine: Engine) -> None:
        self.cfg, self.corpus, self.out_dir, self.engine = cfg, corpus, out_dir, engine
        tc = cfg.train
        self.is_main = engine.is_main  # prints, metrics and plots come from it only
        self.step_tokens = 0  # target tokens of the last step's batches (all replicas)
        src, tgt = corpus.ids["train"]
        self.batcher = Batcher(
            src,
            tgt,
            cfg.data.batch_tokens,
            cfg.data.pad_multiple,
            cfg.parallel.microbatches,
            tc.seed,
        )
        self.step = 0
        self.train_seconds = 0.0  # wall time spent training, summed over resumes
        self.run_seconds = 0.0  # train_seconds up to now (the schedule's clock; the loop sets it)
        self.schedule = schedule_from_config(tc, len(self.batcher), engine.batches_per_step)
        self.optimizer = adam(list(engine.parameters()), tc.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_lambda)
        self.best: dict[str, Any] = {"bleu": None, "val_loss": None, "step": 0, "stale": 0}
        self.bad_steps = 0  # non-finite losses in a row
        self.skipped_steps = 0  # non-finite losses skipped in this run, over resumes
        self.skipped_last = False  # the last train_step was skipped (nothing to log or save)
        self.ckpt_dir = out_dir / "checkpoints"
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)

    def _lr_lambda(self, step: int) -> float:
        """LR multiplier for optimizer step ``step``: a function of the step alone for step- and
        epoch-bounded runs (exact resume); minute-bounded runs also read ``run_seconds``."""
        return self.schedule.factor(step, self.run_seconds)

    # ------------------------------------------------------------------ one step
    def next_batches(self) -> list[Batch]:
        """The batches of one optimizer step: ``train.accumulate`` of them on one device, one
        per ``parallel.dp`` replica in a pipelined run (every rank draws them all)."""
        batches = [next(iter(self.batcher)) for _ in range(self.engine.batches_per_step)]
        self.step_tokens = sum(b.ntokens for b in batches)
        return batches

    def train_step(self, batches: Batch | list[Batch]) -> tuple[float, float]:
        """Forward/backward over the step's batches, then one update; returns (loss per token,
        nll per token), both over all the batches. A non-finite loss or gradient norm skips
        the update and is counted."""
        drawn = [batches] if isinstance(batches, Batch) else batches
        # Divide by the step's token count: accumulation and micro-batching never change it.
        ntokens = max(sum(b.ntokens for b in drawn), 1)
        out = self.engine.compute(drawn, ntokens, self.optimizer, self.step)
        if out.bad is not None:
            return self.skip_step(out.loss, out.bad)
        self.bad_steps = 0
        self.skipped_last = False
        self.engine.apply(self.optimizer)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return out.loss, out.nll

    def skip_step(self, loss_value: float, what: str) -> tuple[float, float]:
        """Drop this step's gradients (no update), count it, stop after too many in a row."""
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped_last = True
        self.bad_steps += 1
        self.skipped_steps += 1
        if self.bad_steps >= self.cfg.train.max_bad_steps:
            last = self.ckpt_dir / "last.pt"
            kept = f"last good checkpoint: {last}" if last.is_file() else "no checkpoint yet"
            raise UserError(
                f"{self.bad_steps} non-finite steps in a row at step {self.step} "
                f"(train.max_bad_steps={self.cfg.train.max_bad_steps}); stopping ({kept})"
            )
        if self.is_main:
            log.warning(
                "step %d: non-finite %s, update skipped (%d in a row)",
                self.step,
                what,
                self.bad_steps,
            )
        return loss_value, float("nan")

    # ------------------------------------------------------------------ the engine's part
    def validate(self) -> dict[str, Any]:
        return self.engine.validate(self)

    def agree(self, stop: str | None) -> str | None:
        """The stop decision every process takes (pipelined runs follow rank 0's, and its
        clock)."""
        stop, self.run_seconds = self.engine.agree(stop, self.run_seconds)
        return stop

    def save(self, best: bool) -> None:
        self.engine.save(self, best)

    def resume(self, path: Path) -> None:
        self.engine.resume(self, path)

    def finish(self) -> dict[str, Any]:
        """End-of-run work beyond the common loop (pipelined runs write their timeline)."""
        return self.engine.finish(self)

    # ------------------------------------------------------------------ checkpoints
    def run_state(self) -> dict[str, Any]:
        """What an exact resume needs besides the weights (single-device checkpoints and
        pipeline shards alike): optimizer, schedule, RNG, data position, counters."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": ckpt_io.rng_state(),
            "data": self.batcher.state_dict(),
            "step": self.step,
            "train_seconds": self.train_seconds,
            "best": dict(self.best),
            "skipped_steps": self.skipped_steps,
        }

    def load_run_state(self, ck: dict[str, Any]) -> None:
        """Inverse of :meth:`run_state`; a new ``train.lr`` of this run wins."""
        self.optimizer.load_state_dict(ck["optimizer"])
        for group in self.optimizer.param_groups:  # this machine's kernel, not the writer's
            group["fused"], group["foreach"] = self.optimizer.defaults["fused"], None
        self.scheduler.load_state_dict(ck["scheduler"])
        self.batcher.load_state_dict(ck["data"])
        self.step, self.train_seconds, self.best = ck["step"], ck["train_seconds"], ck["best"]
        self.skipped_steps = int(ck.get("skipped_steps", 0))
        ckpt_io.set_rng_state(ck["rng"])
        self.run_seconds = self.train_seconds
        lr = self.cfg.train.lr
        factor = self.schedule.factor(self.step, self.run_seconds)
        old = rebase_lr(self.optimizer, self.scheduler, lr, factor)
        if old is not None and self.is_main:
            print(f"train.lr={lr:g} replaces the resumed run's {old:g}", file=sys.stderr)

    def start_from_weights(self, ck: dict[str, Any]) -> None:
        """Weights-only resume: step and clock from ``ck``; the lr schedule goes on from that
        step (not from step 0); optimizer state and data position start fresh."""
        self.step = int(ck.get("step", 0))
        self.train_seconds = self.run_seconds = float(ck.get("train_seconds", 0.0))
        self.scheduler.last_epoch = self.step
        factor = self.schedule.factor(self.step, self.run_seconds)
        rates = [base * factor for base in self.scheduler.base_lrs]
        for group, rate in zip(self.optimizer.param_groups, rates, strict=True):
            group["lr"] = rate
        self.scheduler._last_lr = rates


def adam(params: list[torch.nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam, fused where every parameter is on a CPU or a CUDA device (one kernel over all
    tensors: 4.7x faster than the per-tensor loop on a CPU core for gnmt_demo, ``python -m
    scripts.bench adam``)."""
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused or None)
