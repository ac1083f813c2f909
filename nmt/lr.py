"""Learning-rate schedule: linear warm-up, then constant, then step decay (NVIDIA GNMT v2:
halve ``decay_steps`` times, evenly spaced, over the last third of training)."""

from __future__ import annotations


def lr_factor(
    step: int,
    warmup_steps: int,
    max_steps: int,
    decay_start: float,
    decay_steps: int,
    decay_factor: float,
) -> float:
    """Multiplier of the base learning rate after ``step`` optimizer steps (0-based).

    Warm-up is linear from 1/warmup to 1 over ``warmup_steps``, capped at a tenth of
    ``max_steps`` when that is known (short runs should not spend most of their steps
    warming up). Decay applies only when ``max_steps`` is known:
    from ``decay_start * max_steps`` the rate is multiplied by ``decay_factor`` every
    ``(1 - decay_start) * max_steps / decay_steps`` steps, ``decay_steps`` times at most.
    """
    if max_steps > 0:
        warmup_steps = min(warmup_steps, max_steps // 10)
    factor = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if max_steps > 0 and decay_steps > 0:
        start = int(decay_start * max_steps)
        interval = max(1, int((max_steps - start) / decay_steps))
        if step >= start:
            factor *= decay_factor ** min(decay_steps, 1 + (step - start) // interval)
    return factor
