"""The training loop every run shares (one device or pipelined): step, log, validate,
checkpoint, stop - ``run_loop(trainer, metrics) -> result``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from nmt.config import AppConfig
from nmt.errors import UserError
from nmt.train.metrics import MetricsLog, plot_curves
from nmt.train.trainer import Trainer

# The clock of the time budget (``max_minutes``, the schedule's progress, ``wall_s``); tests
# replace it to make minute-bounded runs deterministic.
clock: Callable[[], float] = time.monotonic


def resume_path(cfg: AppConfig, ckpt_dir: Path) -> Path | None:
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


def run_loop(t: Trainer, metrics: MetricsLog) -> dict[str, Any]:
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
        loss, nll = t.train_step(t.next_batches())
        if t.skipped_last:  # non-finite loss: no update, nothing to log or save at this step
            metrics.write({"step": t.step, "skipped_nonfinite": t.skipped_steps})
            continue
        window_tokens += t.step_tokens
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
