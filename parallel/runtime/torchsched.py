"""torch's pipelining schedules by name (:data:`RUNTIME_SCHEDULES`, :func:`make_schedule`) and
the checks on the installed torch that :mod:`parallel.runtime.pipeline` depends on."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.distributed.pipelining import (
    Schedule1F1B,
    ScheduleGPipe,
    ScheduleInterleaved1F1B,
    ScheduleLoopedBFS,
)

from parallel.errors import PlacementError
from parallel.runtime.stagewrap import PipeStage

# whether a schedule's step() can be told not to keep the last stage's outputs (torch >= 2.8)
HAS_RETURN_OUTPUTS = "return_outputs" in inspect.signature(ScheduleGPipe.step).parameters
_TORCH = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])

# torch schedule class per name, and whether it takes this rank's list of stages (several
# stages per rank) or one stage
RUNTIME_SCHEDULES: dict[str, tuple[Any, bool]] = {
    "gpipe": (ScheduleGPipe, False),
    "1f1b": (Schedule1F1B, False),
    "interleaved_1f1b": (ScheduleInterleaved1F1B, True),
    "looped_bfs": (ScheduleLoopedBFS, True),
}


def check_torch() -> None:
    """Warn (pointing at the runner's caller) when torch is older than the runtime needs."""
    if _TORCH < (2, 13):
        warnings.warn(
            f"parallel.runtime.pipeline needs torch >= 2.13 (found {torch.__version__}): older "
            "pipelining infers shapes by running stages on zero tensors (GNMT's "
            "pack_padded_sequence rejects src_len=0) and breaks with several stages per rank",
            RuntimeWarning,
            stacklevel=3,
        )


def make_schedule(
    name: str,
    stages: Sequence[PipeStage],
    microbatches: int,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
) -> Any:
    """The torch schedule ``name`` over this rank's ``stages`` (gradients not scaled: the
    runner's loss is already divided by the step's normaliser)."""
    if name not in RUNTIME_SCHEDULES:
        raise PlacementError(
            f"unknown schedule {name!r}; choose from {', '.join(RUNTIME_SCHEDULES)}",
            schedule=name,
        )
    kind, multi = RUNTIME_SCHEDULES[name]
    stage: Any = list(stages) if multi else stages[0]
    return kind(stage, microbatches, loss_fn=loss_fn, scale_grads=False)
