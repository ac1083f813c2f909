"""The state of one training run and its step: :class:`Trainer` (one device; the pipelined
:class:`nmt.train.pipelined.PipeTrainer` extends it), with the setup helpers it needs (seed,
device, precision, model from config) and the test hook that injects non-finite gradients.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.batching import Batch, Batcher
from data.tokenizer import EOS_ID, PAD_ID
from nmt.checkpoint import files as ckpt_io
from nmt.config import AppConfig, ModelConfig, TrainConfig, config_to_dict
from nmt.errors import UserError
from nmt.machine.calibrate import Choice, choose, training_workload
from nmt.machine.capability import bf16_lstm_runs, require_bf16
from nmt.models import registry as arch
from nmt.models.loss import label_smoothed_nll
from nmt.models.seq2seq import ModelSpec, Seq2Seq, log_unigram_prior
from nmt.models.wavefront import Wavefront
from nmt.prepare.splits import Corpus
from nmt.train import faults
from nmt.train.schedule import rebase_lr, schedule_from_config
from nmt.train.validate import validate

log = logging.getLogger("nmt.train.run")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device={name} but no CUDA device is available")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.precision``: ``auto`` = bf16 on GPU, fp32 on CPU (where
    :func:`resolve_precision` has not measured it); ``bf16`` also on CPU (torch's CPU autocast,
    where this CPU has a bf16 LSTM kernel); ``fp16`` (with a loss scaler) on GPU only."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise UserError(f"train.precision={precision!r}: expected auto, fp32, bf16 or fp16")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "fp16" and device.type != "cuda":
        raise UserError("train.precision=fp16 needs a CUDA device; on CPU use bf16 or fp32")
    if precision == "bf16":
        require_bf16("train.precision", device.type)
    return torch.float16 if precision == "fp16" else torch.bfloat16


def resolve_precision(cfg: AppConfig) -> Choice | None:
    """``train.precision=auto`` on a CPU: fp32 or bf16 autocast, whichever trains this model's
    batches faster here (:func:`nmt.machine.calibrate.choose`; bf16 only where it runs at all). None
    when nothing is left to measure (an explicit precision, a GPU)."""
    tc = cfg.train
    device = pick_device(str(tc.device))
    autocast_dtype(str(tc.precision), device)  # bad values fail here
    if str(tc.precision) != "auto" or device.type != "cpu":
        return None
    if not bf16_lstm_runs(device.type):
        return Choice("train", "fp32", key="no bf16 LSTM")
    names = ["fp32", "bf16"]
    if int(tc.threads):
        torch.set_num_threads(int(tc.threads))
    vocab, tokens = int(cfg.data.vocab_size), int(cfg.data.batch_tokens)
    amp = {"fp32": None, "bf16": torch.bfloat16}
    shape = {"model": config_to_dict(cfg)["model"], "vocab": vocab, "batch_tokens": tokens}
    models: list[Seq2Seq] = []  # built once, and only when the cache cannot answer

    def workload(name: str) -> Callable[[], object]:
        if not models:
            models.append(build_from_config(cfg.model, vocab))
        return training_workload(models[0], amp[name], tokens)

    return choose("train", shape, {n: functools.partial(workload, n) for n in names})


def check_accumulate(tc: TrainConfig) -> int:
    """``train.accumulate``: batches per optimizer step on one device (>= 1)."""
    n = tc.accumulate
    if n < 1:
        raise UserError(f"train.accumulate={n} must be >= 1")
    return n


def check_model_config(mcfg: ModelConfig) -> ModelSpec:
    """The model spec of ``cfg.model``; impossible sizes or an unknown ``model.arch`` are user
    errors (one line), not tracebacks from deep inside."""
    spec = ModelSpec.from_config(mcfg)
    problems = arch.problems(spec)
    if problems:
        raise UserError("; ".join(problems))
    return spec


def output_prior(mcfg: ModelConfig, corpus: Corpus) -> torch.Tensor | None:
    """The generator's initial bias per ``model.output_bias`` (prior | uniform)."""
    kind = mcfg.output_bias
    if kind == "uniform":
        return None
    if kind != "prior":
        raise UserError(f"model.output_bias={kind!r}: expected prior or uniform")
    return log_unigram_prior(corpus.ids["train"][1], corpus.tokenizer.vocab_size, EOS_ID)


def build_from_config(
    mcfg: ModelConfig, vocab_size: int, prior: torch.Tensor | None = None
) -> Seq2Seq:
    """The model of ``cfg.model`` (:func:`nmt.models.registry.build_model`), seeded by the
    caller."""
    return arch.build_model(check_model_config(mcfg), vocab_size, PAD_ID, prior)


class Trainer:
    """State of one single-device run: model, optimizer, schedule, data position, counters."""

    def __init__(self, cfg: AppConfig, corpus: Corpus, out_dir: Path) -> None:
        self.init_run(
            cfg, corpus, out_dir, check_accumulate(cfg.train), pick_device(cfg.train.device)
        )
        self.model = build_from_config(cfg.model, corpus.tokenizer.vocab_size, self.prior)
        self.model = self.model.to(self.device)
        chunks = cfg.parallel.time_chunks
        self.wavefront = Wavefront(self.model, chunks) if chunks > 1 else None
        self.init_optimizer(list(self.model.parameters()), rank=0)

    def init_run(
        self,
        cfg: AppConfig,
        corpus: Corpus,
        out_dir: Path,
        batches_per_step: int,
        device: torch.device,
    ) -> None:
        """What every run holds whatever this process trains: settings, data position,
        schedule, counters, checkpoint folder."""
        self.cfg, self.corpus, self.out_dir = cfg, corpus, out_dir
        tc = cfg.train
        self.batches_per_step = batches_per_step  # accumulate, or one per dp replica
        self.step_tokens = 0  # target tokens of the last step's batches (all replicas)
        self.device = device
        self.amp = autocast_dtype(str(tc.precision), self.device)
        self.prior = output_prior(cfg.model, corpus)
        self.scaler = torch.amp.GradScaler(enabled=self.amp == torch.float16)
        src, tgt = corpus.ids["train"]
        self.batcher = Batcher(
            src,
            tgt,
            int(cfg.data.batch_tokens),
            int(cfg.data.pad_multiple),
            int(cfg.parallel.microbatches),
            int(tc.seed),
        )
        self.step = 0
        self.train_seconds = 0.0  # wall time spent training, summed over resumes
        self.run_seconds = 0.0  # train_seconds up to now (the schedule's clock; _loop sets it)
        self.schedule = schedule_from_config(tc, len(self.batcher), self.batches_per_step)
        self.best: dict[str, Any] = {"bleu": None, "val_loss": None, "step": 0, "stale": 0}
        self.bad_steps = 0  # non-finite losses in a row
        self.skipped_steps = 0  # non-finite losses skipped in this run, over resumes
        self.skipped_last = False  # the last train_step was skipped (nothing to log or save)
        self.ckpt_dir = out_dir / "checkpoints"
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.is_main = True  # prints, metrics and plots come from the main process only

    def init_optimizer(self, params: list[torch.nn.Parameter], rank: int) -> None:
        """Adam and the schedule over the parameters this process trains (built once), and
        the test-only gradient faults (:mod:`nmt.train.faults`) when asked for."""
        self.optimizer = torch.optim.Adam(params, lr=float(self.cfg.train.lr))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_lambda)
        faults.install(params, lambda: self.step, rank)

    def validate(self) -> dict[str, Any]:
        return validate(self.model, self.corpus, self.cfg, self.device)

    def agree(self, stop: str | None) -> str | None:
        """The stop decision every process takes (pipelined runs follow rank 0)."""
        return stop

    def finish(self) -> dict[str, Any]:
        """End-of-run work beyond the common loop (pipelined runs write their timeline)."""
        return {}

    def next_batch(self) -> Batch:
        return next(iter(self.batcher))

    def next_batches(self) -> list[Batch]:
        """The batches of one optimizer step (``train.accumulate`` of them)."""
        batches = [self.next_batch() for _ in range(self.batches_per_step)]
        self.step_tokens = sum(b.ntokens for b in batches)
        return batches

    def _lr_lambda(self, step: int) -> float:
        """LR multiplier for optimizer step ``step``: a function of the step alone for step- and
        epoch-bounded runs (exact resume); minute-bounded runs also read ``run_seconds``."""
        return self.schedule.factor(step, self.run_seconds)

    # ------------------------------------------------------------------ one step
    def train_step(self, batch: Batch | list[Batch]) -> tuple[float, float]:
        """Forward/backward over the step's batches, then one update; returns (loss per token,
        nll per token), both over all the batches. A non-finite loss or gradient norm skips
        the update and is counted."""
        batches = [batch] if isinstance(batch, Batch) else batch
        # Divide by the step's token count: accumulation and micro-batching never change it.
        ntokens = max(sum(b.ntokens for b in batches), 1)
        self.model.train()
        loss_value, nll_value = 0.0, 0.0
        for one in batches:
            loss_sum, nll_sum = self.forward_loss(one)
            loss = loss_sum / ntokens
            torch.autograd.backward(self.scaler.scale(loss))
            loss_value += float(loss.detach())
            nll_value += float(nll_sum) / ntokens
        if not math.isfinite(loss_value):
            return self.skip_step(loss_value, "loss")
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), float(self.cfg.train.clip_norm)
        )
        if not self.scaler.is_enabled() and not math.isfinite(float(norm)):
            return self.skip_step(loss_value, "gradient norm")  # fp16: the scaler skips itself
        self.bad_steps = 0
        self.skipped_last = False
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return loss_value, nll_value

    def forward_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(label-smoothed loss sum, nll sum) of one batch, under the run's autocast."""
        b = batch.to(self.device)
        with torch.autocast(
            self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None
        ):
            eps = float(self.cfg.train.label_smoothing)
            if self.wavefront is not None:  # the same function, the layers waving over time
                return self.wavefront.loss(b.src, b.src_len, b.tgt_in, b.tgt_out, PAD_ID, eps)
            # generator + loss on the non-pad target positions only ([N,V], not [Tt,B,V])
            keep = b.tgt_out != PAD_ID
            logits = self.model.logits_at(b.src, b.src_len, b.tgt_in, keep)
            return label_smoothed_nll(logits, b.tgt_out[keep], PAD_ID, eps)

    def skip_step(self, loss_value: float, what: str) -> tuple[float, float]:
        """Drop this step's gradients (no update), count it, stop after too many in a row."""
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped_last = True
        self.bad_steps += 1
        self.skipped_steps += 1
        if self.bad_steps >= int(self.cfg.train.max_bad_steps):
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

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            **self.run_state(),
            "scaler": self.scaler.state_dict(),
            "config": config_to_dict(self.cfg),
            "spm": self.corpus.tokenizer.model_bytes(),
        }

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
        """Inverse of :meth:`run_state`; a new ``train.lr`` of this run wins (note_rebase)."""
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.batcher.load_state_dict(ck["data"])
        self.step, self.train_seconds, self.best = ck["step"], ck["train_seconds"], ck["best"]
        self.skipped_steps = int(ck.get("skipped_steps", 0))
        ckpt_io.set_rng_state(ck["rng"])
        self.run_seconds = self.train_seconds
        note_rebase(self, float(self.cfg.train.lr))

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

    def save(self, best: bool) -> None:
        state = self.state()
        ckpt_io.save(ckpt_io.step_file(self.ckpt_dir, self.step), state)
        ckpt_io.save(self.ckpt_dir / "last.pt", state)
        if best:
            ckpt_io.save(self.ckpt_dir / "best.pt", state)
        ckpt_io.prune(self.ckpt_dir, int(self.cfg.train.keep_last))

    def resume(self, path: Path) -> None:
        ck = ckpt_io.load(path, map_location=self.device)
        ckpt_io.check_compatible(
            ck, config_to_dict(self.cfg)["model"], self.corpus.tokenizer.model_bytes(), str(path)
        )
        self.model.load_state_dict(ck["model"])
        if "optimizer" not in ck:  # an exported pipelined checkpoint: weights only
            print(
                f"{path} holds weights only: optimizer and data position start fresh",
                file=sys.stderr,
            )
            self.start_from_weights(ck)
            return
        self.scaler.load_state_dict(ck["scaler"])
        self.load_run_state(ck)


def note_rebase(t: Any, lr: float) -> None:
    """``train.lr`` of this run wins over the base rate saved with the resumed scheduler."""
    old = rebase_lr(t.optimizer, t.scheduler, lr, t.schedule.factor(t.step, t.run_seconds))
    if old is not None and t.is_main:
        print(f"train.lr={lr:g} replaces the resumed run's {old:g}", file=sys.stderr)
