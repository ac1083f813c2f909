"""Pure pipeline schedule generators (no torch.distributed), like torchgpipe's.

Each generator returns, per rank, the ordered list of compute actions that
``torch.distributed.pipelining`` executes for the same schedule (torch 2.13):

* ``gpipe``            ``ScheduleGPipe``: all forwards, then all backwards.
* ``1f1b``             ``Schedule1F1B`` as *executed* by its ``_step_microbatches``
  (``min(M, K - rank)`` warm-up forwards, then backward/forward pairs, then the remaining
  backwards).  Note: torch's ``Schedule1F1B.pipeline_order`` IR is off by one on the last
  rank (it lists ``F1, B0, ..., F<M>``); we follow what the engine really runs.
* ``interleaved_1f1b`` ``ScheduleInterleaved1F1B._calculate_single_rank_operations``.
* ``looped_bfs``       ``ScheduleLoopedBFS._calculate_single_rank_operations``.

Stages here are *virtual* stages (torch's ``stage_index``): with ``V`` stages per rank and
``K`` ranks, virtual stage ``v`` lives on rank ``v % K`` (torch's "loop" mapping).
``group_virtual_stages`` turns a model placement (model stage -> rank) into virtual stages.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple

from parallel.errors import PlacementError
from parallel.partition import gnmt_ranks

SCHEDULES: tuple[str, ...] = ("gpipe", "1f1b", "interleaved_1f1b", "looped_bfs")
SINGLE_STAGE_SCHEDULES: tuple[str, ...] = ("gpipe", "1f1b")
MULTI_STAGE_SCHEDULES: tuple[str, ...] = ("interleaved_1f1b", "looped_bfs")

FORWARD = "F"
BACKWARD = "B"


class Action(NamedTuple):
    """One compute action: ``kind`` is ``"F"`` or ``"B"``; ``stage`` is the virtual stage."""

    stage: int
    kind: str
    mb: int

    def __str__(self) -> str:  # torch's format, e.g. "2F0"
        return f"{self.stage}{self.kind}{self.mb}"


Orders = list[list[Action]]


def parse_action(text: str) -> Action:
    """Inverse of ``str(Action)`` ("3B12" -> Action(3, "B", 12))."""
    for kind in (FORWARD, BACKWARD):
        stage, sep, mb = text.strip().partition(kind)
        if sep and stage.isdigit() and mb.isdigit():
            return Action(int(stage), kind, int(mb))
    raise PlacementError(f"bad action {text!r}: expected e.g. '2F0' or '3B1'")


def interleaved_rounds(num_ranks: int, microbatches: int) -> tuple[int, int]:
    """torch's (number_of_rounds, microbatches_per_round) for interleaved 1F1B."""
    rounds = max(1, microbatches // num_ranks)
    return rounds, microbatches // rounds


def validate_schedule(
    schedule: str, num_ranks: int, microbatches: int, stages_per_rank: int = 1
) -> None:
    """Raise ``PlacementError`` for combinations torch refuses (or we cannot express)."""
    if schedule not in SCHEDULES:
        raise PlacementError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    if num_ranks < 1 or microbatches < 1 or stages_per_rank < 1:
        raise PlacementError(
            f"need ranks>=1, microbatches>=1, stages_per_rank>=1; got ranks={num_ranks} "
            f"microbatches={microbatches} stages_per_rank={stages_per_rank}"
        )
    if schedule in SINGLE_STAGE_SCHEDULES and stages_per_rank != 1:
        raise PlacementError(
            f"schedule {schedule} runs one stage per rank; got stages_per_rank={stages_per_rank} "
            "(use interleaved_1f1b or looped_bfs)"
        )
    if schedule == "1f1b" and microbatches < num_ranks:
        raise PlacementError(
            f"1f1b needs microbatches >= stages: microbatches={microbatches} stages={num_ranks}"
        )
    if schedule == "interleaved_1f1b":
        rounds, _ = interleaved_rounds(num_ranks, microbatches)
        if microbatches % rounds:
            raise PlacementError(
                f"interleaved_1f1b needs microbatches to be a multiple of the number of rounds "
                f"max(1, microbatches // ranks): microbatches={microbatches} ranks={num_ranks} "
                f"rounds={rounds}"
            )


def gpipe_rank_ops(rank: int, microbatches: int) -> list[Action]:
    fwd = [Action(rank, FORWARD, m) for m in range(microbatches)]
    return fwd + [Action(rank, BACKWARD, m) for m in range(microbatches)]


def one_f_one_b_rank_ops(rank: int, num_ranks: int, microbatches: int) -> list[Action]:
    warmup = min(microbatches, num_ranks - rank)
    ops = [Action(rank, FORWARD, m) for m in range(warmup)]
    fwd, bwd = warmup, 0
    while True:
        ops.append(Action(rank, BACKWARD, bwd))
        bwd += 1
        if fwd == microbatches:
            break
        ops.append(Action(rank, FORWARD, fwd))
        fwd += 1
    ops.extend(Action(rank, BACKWARD, m) for m in range(bwd, microbatches))
    return ops


def interleaved_rank_ops(
    rank: int, num_ranks: int, stages_per_rank: int, microbatches: int
) -> list[Action]:
    k, v = num_ranks, stages_per_rank
    _, per_round = interleaved_rounds(k, microbatches)
    warmup = min((v - 1) * per_round + 2 * (k - 1 - rank), microbatches * v)
    fwd_bwd = microbatches * v - warmup
    fwd_count: dict[int, int] = {}
    bwd_count: dict[int, int] = {}

    def take(counts: dict[int, int], stage: int) -> int:
        counts[stage] = counts.get(stage, 0) + 1
        return counts[stage] - 1

    def fwd_stage(step: int) -> int:
        return ((step // per_round) % v) * k + rank

    def bwd_stage(step: int) -> int:
        return (v - 1 - ((step - warmup) // per_round) % v) * k + rank

    ops: list[Action] = []
    for op in range(warmup + fwd_bwd + warmup):
        if op < warmup + fwd_bwd:
            s = fwd_stage(op)
            ops.append(Action(s, FORWARD, take(fwd_count, s)))
        if op >= warmup:
            s = bwd_stage(op)
            ops.append(Action(s, BACKWARD, take(bwd_count, s)))
    return ops


def looped_bfs_rank_ops(
    rank: int, num_ranks: int, stages_per_rank: int, microbatches: int
) -> list[Action]:
    stages = [v * num_ranks + rank for v in range(stages_per_rank)]
    ops = [Action(s, FORWARD, m) for s in stages for m in range(microbatches)]
    ops += [Action(s, BACKWARD, m) for s in reversed(stages) for m in reversed(range(microbatches))]
    return ops


def schedule_orders(
    schedule: str, num_ranks: int, microbatches: int, stages_per_rank: int = 1
) -> Orders:
    """Per-rank compute orders of ``schedule`` over ``num_ranks * stages_per_rank`` stages."""
    return [list(o) for o in cached_orders(schedule, num_ranks, microbatches, stages_per_rank)]


@lru_cache(maxsize=512)
def cached_orders(
    schedule: str, num_ranks: int, microbatches: int, stages_per_rank: int = 1
) -> tuple[tuple[Action, ...], ...]:
    """``schedule_orders`` as an immutable, memoised value."""
    return tuple(tuple(o) for o in _orders(schedule, num_ranks, microbatches, stages_per_rank))


def _orders(schedule: str, num_ranks: int, microbatches: int, stages_per_rank: int) -> Orders:
    validate_schedule(schedule, num_ranks, microbatches, stages_per_rank)
    ranks = range(num_ranks)
    if schedule == "gpipe":
        return [gpipe_rank_ops(r, microbatches) for r in ranks]
    if schedule == "1f1b":
        return [one_f_one_b_rank_ops(r, num_ranks, microbatches) for r in ranks]
    if schedule == "interleaved_1f1b":
        return [interleaved_rank_ops(r, num_ranks, stages_per_rank, microbatches) for r in ranks]
    return [looped_bfs_rank_ops(r, num_ranks, stages_per_rank, microbatches) for r in ranks]


def group_virtual_stages(placement: Sequence[int], num_ranks: int) -> list[list[int]]:
    """Split a placement (model stage -> rank) into virtual stages for torch's schedules.

    A virtual stage is a maximal run of consecutive model stages on one rank.  torch's
    schedules need run ``j`` on rank ``j % num_ranks`` and the same number of runs on every
    rank: a contiguous placement gives one run per rank; the ``gnmt`` placement
    ``[0,1,2,3,0,1,2,3,3]`` (gnmt4, 4 ranks) gives 8 runs - the generator joins the last
    decoder layer's run, so each rank holds exactly 2 virtual stages.
    """
    if not placement:
        raise PlacementError("empty placement")
    bad = [r for r in placement if not 0 <= r < num_ranks]
    if bad:
        raise PlacementError(f"placement ranks {bad} outside 0..{num_ranks - 1}")
    runs: list[list[int]] = []
    for stage, rank in enumerate(placement):
        if runs and placement[runs[-1][0]] == rank:
            runs[-1].append(stage)
        else:
            runs.append([stage])
    run_ranks = [placement[run[0]] for run in runs]
    if len(runs) % num_ranks or any(r != j % num_ranks for j, r in enumerate(run_ranks)):
        raise PlacementError(
            f"placement {list(placement)} is not runnable by torch schedules on {num_ranks} "
            f"ranks: runs sit on ranks {run_ranks}, need 0,1,..,{num_ranks - 1} repeated"
        )
    return runs


def orders_to_strings(orders: Orders) -> list[list[str]]:
    return [[str(a) for a in rank_ops] for rank_ops in orders]


def looped_placement(run_sizes: Sequence[int], num_ranks: int) -> tuple[int, ...]:
    """Model stage -> rank for consecutive runs of ``run_sizes`` stages, run ``j`` on rank
    ``j % num_ranks`` (``len(run_sizes) == num_ranks`` is the contiguous ``balance``)."""
    if not run_sizes or any(n < 1 for n in run_sizes) or len(run_sizes) % num_ranks:
        raise PlacementError(
            f"run sizes {list(run_sizes)} must be positive and a multiple of {num_ranks} runs"
        )
    return tuple(j % num_ranks for j, n in enumerate(run_sizes) for _ in range(n))


def contiguous_placement(balance: Sequence[int]) -> tuple[int, ...]:
    return looped_placement(balance, len(balance))


def gnmt_placement(layers: int, num_ranks: int) -> tuple[int, ...]:
    """The expert ``gnmt`` placement of the ``2*layers+1`` stages on ``num_ranks`` ranks.

    Encoder layer ``i`` and decoder layer ``i`` (0-based) go to rank ``i * num_ranks //
    layers`` (rank ``i`` when ``layers == num_ranks``); the embedding rides with Enc1 on
    rank 0, the attention with Dec1, and the generator with the last decoder layer - so it
    joins that layer's virtual stage and every rank holds exactly 2 virtual stages.
    """
    if layers < 1 or not 1 <= num_ranks <= layers:
        raise PlacementError(
            f"gnmt placement needs 1 <= ranks <= layers: layers={layers} ranks={num_ranks}"
        )
    return gnmt_ranks(layers, layers, num_ranks)
