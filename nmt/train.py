"""Single-device training loop: ``train(cfg) -> metrics``.

Reads top-down: set up (seed, data, model, optimizer), maybe resume, then loop over
shape-bucketed batches until a stop condition, validating and checkpointing on the way.
Pipelined training (``parallel.pp * parallel.dp > 1``) is in :mod:`nmt.train_pipeline`.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from data.batching import Batch, Batcher
from data.tokenizer import EOS_ID, PAD_ID
from nmt import checkpoint as ckpt_io
from nmt.config import config_to_dict
from nmt.corpus import Corpus, prepare_corpus
from nmt.errors import UserError
from nmt.loss import label_smoothed_nll
from nmt.lr import schedule_from_config
from nmt.metrics import MetricsLog, plot_curves
from nmt.model import GNMT, build_model, log_unigram_prior
from nmt.validate import validate

log = logging.getLogger("nmt.train")

# The clock of the time budget (``max_minutes``, the schedule's progress, ``wall_s``); tests
# replace it to make minute-bounded runs deterministic.
clock: Callable[[], float] = time.monotonic


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
    """bf16/fp16 autocast on GPU only (``auto`` = bf16 on GPU, fp32 on CPU)."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise UserError(f"train.precision={precision!r}: expected auto, fp32, bf16 or fp16")
    if device.type != "cuda" or precision == "fp32":
        return None
    return {"auto": torch.bfloat16, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def check_model_config(mcfg: Any) -> None:
    """Impossible model sizes are user errors (one line), not tracebacks from deep inside."""
    problems = [
        f"model.{k}={getattr(mcfg, k)} must be >= {low}"
        for k, low in (("hidden", 1), ("enc_layers", 2), ("dec_layers", 1))
        if int(getattr(mcfg, k)) < low
    ]
    if not 0.0 <= float(mcfg.dropout) < 1.0:
        problems.append(f"model.dropout={mcfg.dropout} must be in [0, 1)")
    if problems:
        raise UserError("; ".join(problems))


def output_prior(mcfg: Any, corpus: Corpus) -> torch.Tensor | None:
    """The generator's initial bias per ``model.output_bias`` (prior | uniform)."""
    kind = str(getattr(mcfg, "output_bias", "uniform"))
    if kind == "uniform":
        return None
    if kind != "prior":
        raise UserError(f"model.output_bias={kind!r}: expected prior or uniform")
    return log_unigram_prior(corpus.ids["train"][1], corpus.tokenizer.vocab_size, EOS_ID)


def build_from_config(mcfg: Any, vocab_size: int, prior: torch.Tensor | None = None) -> GNMT:
    check_model_config(mcfg)
    return build_model(
        vocab_size,
        int(mcfg.hidden),
        int(mcfg.enc_layers),
        int(mcfg.dec_layers),
        float(mcfg.dropout),
        bool(mcfg.tie_embeddings),
        float(mcfg.init_range),
        PAD_ID,
        prior,
    )


class Trainer:
    """State of one single-device run: model, optimizer, schedule, data position, counters."""

    batches_per_step = 1  # batches drawn per optimizer step (pipelined: the dp replicas)

    def __init__(self, cfg: Any, corpus: Corpus, out_dir: Path) -> None:
        self.cfg, self.corpus, self.out_dir = cfg, corpus, out_dir
        tc = cfg.train
        self.device = pick_device(str(tc.device))
        self.amp = autocast_dtype(str(tc.precision), self.device)
        self.prior = output_prior(cfg.model, corpus)
        self.model = build_from_config(cfg.model, corpus.tokenizer.vocab_size, self.prior)
        self.model = self.model.to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=float(tc.lr))
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
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_lambda)
        self.best: dict[str, Any] = {"bleu": None, "val_loss": None, "step": 0, "stale": 0}
        self.bad_steps = 0  # non-finite losses in a row
        self.skipped_steps = 0  # non-finite losses skipped in this run, over resumes
        self.skipped_last = False  # the last train_step was skipped (nothing to log or save)
        self.ckpt_dir = out_dir / "checkpoints"
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.is_main = True  # prints, metrics and plots come from the main process only

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

    def _lr_lambda(self, step: int) -> float:
        """LR multiplier for optimizer step ``step``: a function of the step alone for step- and
        epoch-bounded runs (exact resume); minute-bounded runs also read ``run_seconds``."""
        return self.schedule.factor(step, self.run_seconds)

    # ------------------------------------------------------------------ one step
    def train_step(self, batch: Batch) -> tuple[float, float]:
        """Forward/backward/update on one batch; returns (loss per token, nll per token).
        A non-finite loss skips the update and is counted."""
        self.model.train()
        b = batch.to(self.device)
        with torch.autocast(
            self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None
        ):
            # generator + loss on the non-pad target positions only ([N,V], not [Tt,B,V])
            keep = b.tgt_out != PAD_ID
            logits = self.model.logits_at(b.src, b.src_len, b.tgt_in, keep)
            loss_sum, nll_sum = label_smoothed_nll(
                logits, b.tgt_out[keep], PAD_ID, float(self.cfg.train.label_smoothing)
            )
        # Divide by the whole batch's token count: micro-batching can never change the gradient.
        loss = loss_sum / max(batch.ntokens, 1)
        self.scaler.scale(loss).backward()
        loss_value = float(loss.detach())
        self.skipped_last = not math.isfinite(loss_value)
        if self.skipped_last:
            self.optimizer.zero_grad(set_to_none=True)
            self.bad_steps += 1
            self.skipped_steps += 1
            if self.bad_steps >= int(self.cfg.train.max_bad_steps):
                last = self.ckpt_dir / "last.pt"
                kept = f"last good checkpoint: {last}" if last.is_file() else "no checkpoint yet"
                raise UserError(
                    f"{self.bad_steps} non-finite losses in a row at step {self.step} "
                    f"(train.max_bad_steps={self.cfg.train.max_bad_steps}); stopping ({kept})"
                )
            log.warning("step %d: non-finite loss skipped (%d in a row)", self.step, self.bad_steps)
            return loss_value, float("nan")
        self.bad_steps = 0
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.cfg.train.clip_norm))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return loss_value, float(nll_sum) / max(batch.ntokens, 1)

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": ckpt_io.rng_state(),
            "data": self.batcher.state_dict(),
            "step": self.step,
            "train_seconds": self.train_seconds,
            "best": dict(self.best),
            "skipped_steps": self.skipped_steps,
            "config": config_to_dict(self.cfg),
            "spm": self.corpus.tokenizer.model_bytes(),
        }

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
            self.step = int(ck.get("step", 0))
            return
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        self.batcher.load_state_dict(ck["data"])
        self.step, self.train_seconds, self.best = ck["step"], ck["train_seconds"], ck["best"]
        self.skipped_steps = int(ck.get("skipped_steps", 0))
        ckpt_io.set_rng_state(ck["rng"])


def resume_path(cfg: Any, ckpt_dir: Path) -> Path | None:
    """``train.resume``: none | auto (``last.pt`` of this run folder, if any) | a path."""
    mode = str(cfg.train.resume)
    if mode == "none":
        return None
    if mode == "auto":
        last = ckpt_dir / "last.pt"
        return last if last.is_file() else None
    return Path(mode).expanduser()


def should_stop(t: Trainer, started: float) -> str | None:
    tc = t.cfg.train
    if int(tc.max_steps) and t.step >= int(tc.max_steps):
        return f"max_steps={tc.max_steps}"
    if int(tc.max_epochs) and t.batcher.epoch >= int(tc.max_epochs):
        return f"max_epochs={tc.max_epochs}"
    if float(tc.max_minutes) and t.train_seconds + clock() - started >= 60 * float(tc.max_minutes):
        return f"max_minutes={tc.max_minutes}"
    if int(tc.patience) and t.best["stale"] >= int(tc.patience):
        return f"no dev improvement in {tc.patience} validations"
    return None


def sync(t: Trainer, started: float) -> str | None:
    """Read the budget clock into ``t.run_seconds`` (the schedule's progress) and take the
    stop decision; pipelined runs take both from rank 0, so every rank uses the same lr."""
    t.run_seconds = t.train_seconds + clock() - started
    return t.agree(should_stop(t, started))


def run_validation(t: Trainer, metrics: MetricsLog) -> bool:
    """Dev loss (+ BLEU); returns True when this is the best model so far."""
    result = t.validate()
    metrics.write({"step": t.step, **result, "wall_s": t.run_seconds})
    key, value = (
        ("bleu", result.get("val_bleu"))
        if result.get("val_bleu") is not None
        else ("val_loss", -result["val_loss"])
    )
    prev = t.best.get(key)
    improved = prev is None or value > prev
    t.best.update(
        {key: value, "step": t.step, "stale": 0} if improved else {"stale": t.best["stale"] + 1}
    )
    bleu = result.get("val_bleu")
    if not t.is_main:
        return improved
    print(
        f"step {t.step} | dev loss {result['val_loss']:.3f} | dev BLEU "
        f"{'-' if bleu is None else f'{bleu:.2f}'}{' (best)' if improved else ''}",
        file=sys.stderr,
    )
    return improved


def make_run_dir(out_dir: Path) -> Path:
    """Create the run folder (and ``checkpoints/``); an unusable path is a one-line error."""
    try:
        (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create run folder {out_dir}: {err.strerror or err}") from None
    return out_dir


def train(cfg: Any) -> dict[str, Any]:
    """Train per ``cfg`` (a Hydra DictConfig or an equivalent object); returns final metrics."""
    schedule_from_config(cfg.train, 0)  # bad schedule settings fail before data preparation
    if int(cfg.parallel.pp) * int(cfg.parallel.dp) > 1:
        from nmt.train_pipeline import train_pipelined

        return train_pipelined(cfg)
    tc = cfg.train
    out_dir = make_run_dir(Path(str(tc.out_dir or "runs/latest")).expanduser())
    seed_everything(int(tc.seed))
    if int(tc.threads):
        torch.set_num_threads(int(tc.threads))
    corpus = prepare_corpus(cfg.data, int(tc.seed))
    seed_everything(int(tc.seed))  # model init independent of what data prep consumed
    t = Trainer(cfg, corpus, out_dir)
    if ckpt_io.remove_stale_temp(t.ckpt_dir):  # left by a run killed while saving
        log.info("removed unfinished checkpoint temp files in %s", t.ckpt_dir)
    start_from = resume_path(cfg, t.ckpt_dir)
    if start_from is not None:
        t.resume(start_from)
        print(f"resumed from {start_from} at step {t.step}", file=sys.stderr)
    metrics = MetricsLog(out_dir, t.step if start_from is not None else None)
    return _loop(t, metrics)


def _loop(t: Trainer, metrics: MetricsLog) -> dict[str, Any]:
    tc = t.cfg.train
    log_every, eval_every = max(1, int(tc.log_every)), int(tc.eval_every)
    save_every = int(tc.save_every) or eval_every
    started = clock()
    window_tokens, window_start, last_loss = 0, time.monotonic(), float("nan")
    total = t.schedule.total_steps or None
    bar = tqdm(
        total=total,
        initial=t.step,
        unit="step",
        file=sys.stderr,
        disable=None if t.is_main else True,
        desc="train",
    )
    stop = sync(t, started)
    while stop is None:
        batch = t.next_batch()
        loss, nll = t.train_step(batch)
        if t.skipped_last:  # non-finite loss: no update, nothing to log or save at this step
            metrics.write({"step": t.step, "skipped_nonfinite": t.skipped_steps})
            continue
        window_tokens += batch.ntokens
        last_loss = loss
        bar.update(1)
        if t.step % log_every == 0:
            now = time.monotonic()
            rec = {
                "step": t.step,
                "loss": loss,
                "ppl": math.exp(min(nll, 50)),
                "tokens": window_tokens,
                "tok_per_s": window_tokens / max(now - window_start, 1e-9),
                "lr": t.scheduler.get_last_lr()[0],
                "wall_s": t.train_seconds + clock() - started,
                "ms_per_step": 1000 * (now - window_start) / log_every,
            }
            metrics.write(rec)
            if t.is_main:
                bar.write(
                    f"step {t.step} | loss {loss:.3f} | ppl {rec['ppl']:.1f} | "
                    f"{rec['tok_per_s']:.0f} tok/s | lr {rec['lr']:.2e} | "
                    f"{rec['ms_per_step']:.0f} ms/step",
                    file=sys.stderr,
                )
            window_tokens, window_start = 0, time.monotonic()
        stop = sync(t, started)
        best = False
        if eval_every and (t.step % eval_every == 0 or stop is not None):
            best = run_validation(t, metrics)
            stop = stop or sync(t, started)
        if (save_every and t.step % save_every == 0) or stop is not None:
            now = clock()
            t.train_seconds, started = t.train_seconds + now - started, now
            t.save(best)
    bar.close()
    extra = t.finish()
    metrics.close()
    if t.is_main:
        plot_curves(metrics.records(), t.out_dir / "loss.png")
        print(f"stopped: {stop}; step {t.step}; checkpoints in {t.ckpt_dir}", file=sys.stderr)
    return {
        "step": t.step,
        "loss": last_loss,
        "stop": stop,
        "best": t.best,
        "best_dev_bleu": t.best.get("bleu"),
        "minutes": t.train_seconds / 60,
        "skipped_steps": t.skipped_steps,
        "out_dir": str(t.out_dir),
        "checkpoint": str(t.ckpt_dir / "last.pt"),
        **extra,
    }
