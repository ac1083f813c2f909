"""Fault injection for tests: non-finite gradients on one rank at chosen steps.

``PIPENMT_INJECT_NAN=3,5@1``: rank 1's gradients turn NaN at steps 3 and 5 (the first attempt
only), as a fault on one rank would, and the others must skip the step with it; ``4-@1``: at
every attempt from step 4 on. The hook is installed once, when a run is set up with the
variable set (:func:`install`); the training step itself knows nothing of it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import torch

INJECT_ENV = "PIPENMT_INJECT_NAN"


def install(params: Iterable[torch.nn.Parameter], step: Callable[[], int], rank: int) -> None:
    """With :data:`INJECT_ENV` naming ``rank``: after each backward the first trained
    parameter's gradient becomes NaN at the steps it names (``step()`` reads the run's step)."""
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
