"""Learning-rate schedule that knows the run's budget: linear warm-up, then a decay over the
part of the run that is left, whichever bound (steps, epochs, minutes) ends it first.

Progress ``p`` in [0, 1] is the largest of the fractions of the run's bounds used so far:
``step / max_steps``, ``step / (max_epochs * steps per epoch)`` and ``training seconds /
(60 * max_minutes)``. Step- and epoch-bounded progress depends on the step only, so those runs
resume bitwise exactly; minute-bounded progress depends on the clock (a resumed run goes on
from the training seconds saved in its checkpoint).

Decay shapes (``train.decay``), all flat at 1 until ``decay_start`` and ending at
``decay_factor ** decay_steps`` (1/16 by default) when ``p`` reaches 1:
- ``step`` (default, NVIDIA GNMT v2): multiply by ``decay_factor`` ``decay_steps`` times, evenly
  spaced over ``[decay_start, 1]`` (the first cut at ``decay_start`` itself);
- ``cosine`` / ``linear``: the same start and end, smoothly;
- ``inverse_sqrt``: ``sqrt(warmup / (step + 1))`` after warm-up; needs no bound;
- ``none``: constant after warm-up.
A run with no bound (or ``decay_steps=0``) does not decay, except ``inverse_sqrt``.

Warm-up is linear over ``warmup_steps`` but never longer than a tenth of the run: capped at
``total_steps // 10`` when a step count is known, and complete once ``p`` reaches 0.1 (so a
minute-bounded run never spends more than 10% of its budget warming up).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from nmt.config import TrainConfig
from nmt.errors import UserError

DECAYS = ("step", "cosine", "linear", "inverse_sqrt", "none")
WARMUP_SHARE = 0.1  # warm-up never lasts longer than this share of the run


@dataclass(frozen=True)
class Schedule:
    """Multiplier of the base learning rate; see the module docstring."""

    warmup_steps: int = 0
    decay: str = "step"
    decay_start: float = 0.666
    decay_steps: int = 4
    decay_factor: float = 0.5
    max_steps: int = 0  # 0 = no step bound
    epoch_steps: int = 0  # optimizer steps in max_epochs epochs; 0 = no epoch bound
    budget_s: float = 0.0  # training seconds; 0 = no time bound

    def __post_init__(self) -> None:
        if self.decay not in DECAYS:
            raise UserError(f"train.decay={self.decay!r}: expected {', '.join(DECAYS)}")
        if not 0.0 <= self.decay_start <= 1.0:
            raise UserError(f"train.decay_start={self.decay_start} must be in [0, 1]")
        if self.decay_steps < 0 or self.decay_factor < 0 or self.warmup_steps < 0:
            raise UserError(
                "train.warmup_steps, train.decay_steps and train.decay_factor must be >= 0"
            )

    @property
    def total_steps(self) -> int:
        """Steps the run lasts when a step or epoch bound is set (the smaller); 0 = unknown."""
        known = [n for n in (self.max_steps, self.epoch_steps) if n > 0]
        return min(known) if known else 0

    @property
    def warmup(self) -> int:
        """Warm-up steps after the cap."""
        total = self.total_steps
        return min(self.warmup_steps, total // 10) if total else self.warmup_steps

    def progress(self, step: int, seconds: float = 0.0) -> float | None:
        """Share of the run done before ``step`` (0-based), or ``None`` when it has no bound."""
        fractions = [step / n for n in (self.max_steps, self.epoch_steps) if n > 0]
        if self.budget_s > 0:
            fractions.append(seconds / self.budget_s)
        return min(1.0, max(fractions)) if fractions else None

    def factor(self, step: int, seconds: float = 0.0) -> float:
        """Multiplier for optimizer step ``step`` (0-based) after ``seconds`` of training."""
        p = self.progress(step, seconds)
        warmup = self.warmup
        factor = 1.0
        if warmup > 0:
            ramp = (step + 1) / warmup
            if p is not None:
                ramp = max(ramp, p / WARMUP_SHARE)
            factor = min(1.0, ramp)
        if self.decay == "inverse_sqrt":
            return factor * min(1.0, math.sqrt(max(warmup, 1) / (step + 1)))
        if p is None or self.decay == "none" or self.decay_steps == 0 or p < self.decay_start:
            return factor
        return factor * self._decay(p)

    def _decay(self, p: float) -> float:
        """Decay multiplier at progress ``p >= decay_start``."""
        final = self.decay_factor**self.decay_steps
        span = 1.0 - self.decay_start
        if self.decay == "step":
            if span <= 0:
                return final
            cuts = 1 + math.floor((p - self.decay_start) * self.decay_steps / span)
            return float(self.decay_factor ** min(self.decay_steps, cuts))
        x = 1.0 if span <= 0 else (p - self.decay_start) / span
        if self.decay == "linear":
            return 1.0 + (final - 1.0) * x
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * x))  # cosine


def schedule_from_config(
    tc: TrainConfig, batches_per_epoch: int, batches_per_step: int = 1
) -> Schedule:
    """The schedule of a run with train config ``tc`` and data of ``batches_per_epoch``
    batches (``batches_per_step`` of them per optimizer step: the dp replicas)."""
    epochs = int(tc.max_epochs)
    epoch_steps = math.ceil(epochs * batches_per_epoch / max(1, batches_per_step))
    return Schedule(
        warmup_steps=int(tc.warmup_steps),
        decay=tc.decay,
        decay_start=float(tc.decay_start),
        decay_steps=int(tc.decay_steps),
        decay_factor=float(tc.decay_factor),
        max_steps=max(0, int(tc.max_steps)),
        epoch_steps=epoch_steps if epochs > 0 else 0,
        budget_s=max(0.0, 60.0 * float(tc.max_minutes)),
    )


def rebase_lr(optimizer: Any, scheduler: Any, lr: float, factor: float) -> float | None:
    """After a resume, make ``train.lr`` of this run the base rate: the scheduler state saved in
    the checkpoint carries the base rate of the run that wrote it, so a continuation with a new
    ``train.lr`` would silently keep the old one. ``factor`` is the schedule's multiplier for
    the next step. Returns the old base rate when it changed (nothing is touched otherwise, so
    an unchanged resume stays bitwise exact)."""
    old = float(scheduler.base_lrs[0])
    if old == lr:
        return None
    scheduler.base_lrs = [lr for _ in scheduler.base_lrs]
    for group in optimizer.param_groups:
        group["initial_lr"] = lr
        group["lr"] = lr * factor
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    return old
