"""Stage placements: which pipeline rank holds which model stage.

A placement maps every model stage to a pipeline rank.  torch's schedules run *virtual
stages* (maximal runs of consecutive model stages on one rank) and need virtual stage ``v``
on rank ``v % pp`` with the same number of virtual stages on every rank
(:func:`parallel.schedules.group_virtual_stages`).  Kinds:

* ``contiguous`` - consecutive runs of ``balance[j]`` stages, run ``j`` on rank ``j % pp``
  (``len(balance) == pp``: one run per rank; a multiple of ``pp``: looped).  Without a
  balance, ``pp`` runs balanced by parameter count (min-max partition).
* ``gnmt`` - the expert GNMT placement: encoder layer ``i`` and decoder layer ``i`` on rank
  ``i`` (with more layers than ranks, groups of consecutive layers); the generator rides
  with the last decoder layer.  Every rank holds two non-adjacent virtual stages, so it needs
  ``interleaved_1f1b`` or ``looped_bfs``.
* ``auto`` - a plan file (``parallel.plan``: ``placement`` stage->rank, ``schedule``,
  ``microbatches``, ``recompute``).

Every check raises :class:`parallel.errors.PlacementError` carrying the offending values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from parallel.errors import PlacementError
from parallel.partition import balanced_runs, gnmt_ranks
from parallel.schedules import SCHEDULES, group_virtual_stages, validate_schedule

KINDS: tuple[str, ...] = ("contiguous", "gnmt", "auto")


@dataclass(frozen=True)
class Placement:
    """Model stage -> pipeline rank, with its virtual stages (``groups``)."""

    stage_ranks: tuple[int, ...]
    pp: int
    groups: tuple[tuple[int, ...], ...]
    kind: str = "contiguous"

    @classmethod
    def from_stage_ranks(
        cls, stage_ranks: Sequence[int], pp: int, kind: str = "custom"
    ) -> Placement:
        ranks = tuple(int(r) for r in stage_ranks)
        if pp < 1:
            raise PlacementError(f"pp must be >= 1, got pp={pp}", pp=pp)
        if len(ranks) < pp:
            raise PlacementError(
                f"more pipeline ranks than stages: pp={pp} stages={len(ranks)}",
                pp=pp,
                n_stages=len(ranks),
            )
        missing = sorted(set(range(pp)) - set(ranks))
        if missing:
            raise PlacementError(
                f"placement {list(ranks)} leaves ranks {missing} without a stage (pp={pp})",
                placement=list(ranks),
                pp=pp,
            )
        groups = group_virtual_stages(ranks, pp)
        return cls(ranks, pp, tuple(tuple(g) for g in groups), kind)

    @classmethod
    def from_groups(
        cls, groups: Sequence[Sequence[int]], pp: int, kind: str = "custom"
    ) -> Placement:
        """Explicit virtual stages (consecutive runs of stages), run ``j`` on rank ``j % pp``.

        Unlike :meth:`from_stage_ranks`, adjacent runs may sit on the same rank (e.g. 4
        virtual stages on ``pp=1``: one process running a 4-stage looped pipeline).
        """
        flat = [s for g in groups for s in g]
        if not groups or any(len(g) == 0 for g in groups) or flat != list(range(len(flat))):
            raise PlacementError(
                f"virtual stages {[list(g) for g in groups]} must be non-empty consecutive runs "
                "covering stages 0..n-1",
                groups=[list(g) for g in groups],
            )
        if pp < 1 or len(groups) % pp:
            raise PlacementError(
                f"{len(groups)} virtual stages cannot be spread round-robin over pp={pp} ranks",
                n_virtual=len(groups),
                pp=pp,
            )
        ranks = tuple(j % pp for j, g in enumerate(groups) for _ in g)
        return cls(ranks, pp, tuple(tuple(g) for g in groups), kind)

    @property
    def n_stages(self) -> int:
        return len(self.stage_ranks)

    @property
    def n_virtual(self) -> int:
        return len(self.groups)

    @property
    def stages_per_rank(self) -> int:
        """Virtual stages per rank (1: one-stage schedules; >1: looped schedules)."""
        return len(self.groups) // self.pp

    def rank_of_virtual(self, v: int) -> int:
        return v % self.pp

    def virtual_on_rank(self, rank: int) -> list[int]:
        return list(range(rank, self.n_virtual, self.pp))

    def stages_on_rank(self, rank: int) -> list[int]:
        return [s for v in self.virtual_on_rank(rank) for s in self.groups[v]]

    def rank_of_stage(self, stage: int) -> int:
        return self.stage_ranks[stage]

    def describe(self) -> str:
        runs = " ".join(
            f"[{','.join(map(str, g))}]@{self.rank_of_virtual(v)}"
            for v, g in enumerate(self.groups)
        )
        return f"{self.kind} pp={self.pp}: {runs}"


# ----------------------------------------------------------------------------- kinds


def contiguous(
    n_stages: int,
    pp: int,
    balance: Sequence[int] | None = None,
    param_counts: Sequence[int] | None = None,
) -> Placement:
    """Consecutive runs; ``balance`` gives run sizes (``len(balance)`` a multiple of ``pp``)."""
    if pp < 1 or n_stages < pp:
        raise PlacementError(
            f"more pipeline ranks than stages: pp={pp} stages={n_stages}",
            pp=pp,
            n_stages=n_stages,
        )
    if balance is None:
        weights: Sequence[float] = (
            [float(c) for c in param_counts] if param_counts is not None else [1.0] * n_stages
        )
        if len(weights) != n_stages:
            raise PlacementError(
                f"{len(weights)} parameter counts for {n_stages} stages",
                param_counts=list(weights),
                n_stages=n_stages,
            )
        sizes = balanced_runs(weights, pp)
    else:
        sizes = [int(b) for b in balance]
        if sum(sizes) != n_stages or any(b < 1 for b in sizes):
            raise PlacementError(
                f"balance {sizes} must be positive and sum to the stage count {n_stages} "
                f"(sums to {sum(sizes)})",
                balance=sizes,
                n_stages=n_stages,
            )
        if len(sizes) % pp:
            raise PlacementError(
                f"balance {sizes} has {len(sizes)} runs; need pp={pp} runs (or a multiple of pp "
                "for a looped placement)",
                balance=sizes,
                pp=pp,
            )
    groups: list[list[int]] = []
    start = 0
    for size in sizes:
        groups.append(list(range(start, start + size)))
        start += size
    return Placement.from_groups(groups, pp, "contiguous")


def gnmt(n_enc: int, n_dec: int, pp: int, n_stages: int | None = None) -> Placement:
    """GNMT's expert placement (:func:`parallel.partition.gnmt_ranks`: encoder layer i and
    decoder layer i on rank i, the generator with the last decoder layer), the encoder and the
    decoder runs of a rank kept as separate virtual stages (even at pp=1, where the planner's
    rank tuple cannot say so and groups the whole model as one).

    Stage order (docs/DESIGN.md): ``[Embed+Enc1, Enc2.., Dec1+Att, Dec2.., Generator]``.
    """
    total = n_enc + n_dec + 1
    if n_stages is not None and n_stages != total:
        raise PlacementError(
            f"gnmt placement expects {n_enc} encoder + {n_dec} decoder + 1 generator = {total} "
            f"stages, the model has {n_stages}",
            n_enc=n_enc,
            n_dec=n_dec,
            n_stages=n_stages,
        )
    ranks = gnmt_ranks(n_enc, n_dec, pp)
    groups: list[list[int]] = []
    for stage, rank in enumerate(ranks):
        new_side = stage in (0, n_enc)  # never merge the last encoder run with Dec1's run
        if groups and not new_side and ranks[groups[-1][0]] == rank:
            groups[-1].append(stage)
        else:
            groups.append([stage])
    return Placement.from_groups(groups, pp, "gnmt")


@dataclass(frozen=True)
class PlanSettings:
    """What a plan file fixes besides the placement."""

    schedule: str
    microbatches: int
    recompute: bool = False
    dp: int = 1


def from_plan(path: str | Path, n_stages: int, pp: int) -> tuple[Placement, PlanSettings]:
    """Read a plan file (:func:`parallel.planning.plan.load_plan`) into a placement + settings."""
    from parallel.planning.plan import load_plan

    plan = load_plan(path, n_stages, pp)
    if plan.schedule not in SCHEDULES:
        raise PlacementError(
            f"{path}: plan schedule {plan.schedule!r} is not runnable by the engine "
            f"(runnable: {', '.join(SCHEDULES)})",
            schedule=plan.schedule,
        )
    pl = Placement.from_stage_ranks(plan.placement, pp, "auto")
    settings = PlanSettings(plan.schedule, plan.microbatches, plan.recompute, plan.dp)
    return pl, settings


# ----------------------------------------------------------------------------- checks


def check_pipeline(placement: Placement, schedule: str, microbatches: int) -> None:
    """Can ``schedule`` run ``placement`` with ``microbatches``?  (PlacementError if not.)"""
    if schedule not in SCHEDULES:
        raise PlacementError(
            f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}", schedule=schedule
        )
    if placement.stages_per_rank > 1 and schedule in ("gpipe", "1f1b"):
        raise PlacementError(
            f"placement {placement.describe()} puts {placement.stages_per_rank} stages on each "
            f"rank; schedule {schedule!r} runs one stage per rank - use interleaved_1f1b or "
            "looped_bfs",
            schedule=schedule,
            stages_per_rank=placement.stages_per_rank,
            placement=list(placement.stage_ranks),
        )
    if schedule == "1f1b" and microbatches < placement.n_virtual:
        raise PlacementError(
            f"1f1b needs microbatches >= stages: microbatches={microbatches} "
            f"stages={placement.n_virtual}",
            microbatches=microbatches,
            stages=placement.n_virtual,
        )
    validate_schedule(schedule, placement.pp, microbatches, placement.stages_per_rank)


def check_batch(batch_size: int, microbatches: int) -> None:
    if microbatches < 1 or batch_size % microbatches:
        raise PlacementError(
            f"batch size B={batch_size} is not divisible by microbatches={microbatches} "
            "(set batch_multiple to a multiple of microbatches)",
            batch_size=batch_size,
            microbatches=microbatches,
        )


def resolve(
    kind: str,
    *,
    n_stages: int,
    pp: int,
    schedule: str,
    microbatches: int,
    balance: Sequence[int] | None = None,
    plan: str | Path | None = None,
    n_enc: int | None = None,
    n_dec: int | None = None,
    param_counts: Sequence[int] | None = None,
) -> tuple[Placement, str, int]:
    """Placement + schedule + micro-batches from config values, checked together.

    ``auto`` takes schedule and micro-batches from the plan file.  Call this before
    launching processes so a bad combination fails at start-up, in one process.
    """
    if kind == "contiguous":
        pl = contiguous(n_stages, pp, balance, param_counts)
    elif kind == "gnmt":
        if n_enc is None or n_dec is None:
            n_enc = n_dec = (n_stages - 1) // 2
        pl = gnmt(n_enc, n_dec, pp, n_stages)
    elif kind == "auto":
        if plan is None:
            raise PlacementError("placement=auto needs a plan file (parallel.plan=PATH)", plan=None)
        pl, settings = from_plan(plan, n_stages, pp)
        schedule, microbatches = settings.schedule, settings.microbatches
    else:
        raise PlacementError(
            f"unknown placement {kind!r}; choose from {', '.join(KINDS)}", placement=kind
        )
    check_pipeline(pl, schedule, microbatches)
    return pl, schedule, microbatches
