"""The wavefront's shared gradients summed in two parts (:mod:`nmt.train.wave_gradients`), on
2 gloo processes: the first part starts before the "encoder backward" changes the late
gradients and the embedding's source rows; the result equals each gradient's plain sum over
the processes, computed here from the same seeds; a gradient no process has stays None."""

from __future__ import annotations

import pytest
import torch

from nmt.train.wave_encoder import sentence_spans
from parallel.runtime.launch import launch

ROWS = {0: [1, 4, 4, 7], 1: [0, 4, 9]}  # each rank's source tokens (the step's: their union)


def grads_of(rank: int, phase: int) -> dict[str, torch.Tensor | None]:
    """What rank ``rank`` adds to each gradient in phase 0 (decoder) and 1 (encoder)."""
    g = torch.Generator().manual_seed(100 * rank + phase)
    out: dict[str, torch.Tensor | None] = {}
    if phase == 0:
        out["emb"] = torch.randn(10, 3, generator=g)  # generator + target embedding: dense
        out["early"] = torch.randn(5, generator=g) if rank == 1 else None  # one rank only
    else:
        src = torch.zeros(10, 3)
        src.index_add_(0, torch.tensor(ROWS[rank]), torch.randn(len(ROWS[rank]), 3, generator=g))
        out["emb"] = src  # the source embedding: its tokens' rows only
    out["late"] = torch.randn(4, 2, generator=g)  # the encoder: both phases
    return out


def add(p: torch.nn.Parameter, g: torch.Tensor | None) -> None:
    if g is not None:
        p.grad = g.clone() if p.grad is None else p.grad + g


def summing_entry(two_parts: bool, late: bool = True) -> float:
    """One rank: the gradients of both phases, summed by :class:`SharedGradients`; the
    largest difference from the plain sum over both ranks. ``late=False``: the embedding
    and the encoder share nothing (the encoder on one rank, untied), nothing is left late."""
    import torch.distributed as dist

    from nmt.train.wave_gradients import SharedGradients
    from parallel.runtime.distenv import init_distributed

    torch.set_num_threads(1)
    ctx = init_distributed(1, 2, backend="gloo", device="cpu", timeout_s=60)
    shapes = {"emb": (10, 3), "early": (5,), "late": (4, 2), "none": (3,)}
    p = {n: torch.nn.Parameter(torch.zeros(s)) for n, s in shapes.items()}
    shared = list(p.values()) if late else [p["early"], p["none"]]
    sums = SharedGradients(shared, [p["emb"], p["late"]], p["emb"], dist.new_group())
    for n, g in grads_of(ctx.rank, 0).items():
        add(p[n], g)
    if two_parts:
        sums.early()
    for n, g in grads_of(ctx.rank, 1).items():
        add(p[n], g)
    sums.finish(torch.unique(torch.tensor(ROWS[0] + ROWS[1])))
    worst = 0.0 if p["none"].grad is None else float("inf")
    for n in ("emb", "early", "late") if late else ("early",):
        parts = [g for r in (0, 1) for ph in (0, 1) if (g := grads_of(r, ph).get(n)) is not None]
        ref, got = torch.stack(parts).sum(0), p[n].grad
        worst = max(worst, float("inf") if got is None else float((got - ref).abs().max()))
    ctx.close()
    return worst


@pytest.mark.parametrize(
    ("two_parts", "late"),
    [(True, True), (False, True), (True, False)],
    ids=["early-and-late", "late-only", "nothing-late"],
)
def test_two_part_sum_equals_the_plain_sum(two_parts: bool, late: bool) -> None:
    worst = launch(summing_entry, two_parts, late, nproc=2, timeout_s=120)
    assert worst == {0: pytest.approx(0.0, abs=1e-6), 1: pytest.approx(0.0, abs=1e-6)}


def test_sentence_spans_equal_and_weighted() -> None:
    assert sentence_spans(5, 2) == [(0, 3), (3, 5)]
    assert sentence_spans(1, 3) == [(0, 1), (1, 1), (1, 1)]
    assert sentence_spans(10, 2, [0.45, 0.55]) == [(0, 5), (5, 10)]  # 4.5 rounds up
    assert sentence_spans(20, 2, [0.3, 0.7]) == [(0, 6), (6, 20)]
    assert sentence_spans(7, 3, [1, 0, 2]) == [(0, 2), (2, 2), (2, 7)]
    # rank 0 keeps a sentence (Dec1 attends for it), whatever the weights
    assert sentence_spans(4, 2, [0.0, 1.0]) == [(0, 1), (1, 4)]
    assert sentence_spans(0, 2, [1.0, 1.0]) == [(0, 0), (0, 0)]
