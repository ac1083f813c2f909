"""Recompute in the wavefront's stateful stages (:class:`parallel.runtime.wave.Carried`):
with ``recompute`` a chunk's forward keeps none of its activations for the backward, and the
backward, chunk by chunk in reverse with the carried state's gradient, gives the gradients
of keeping them, dropout included (a seeded :class:`nmt.models.dropout.SeqDropout` draws one
mask per seed, so the recomputed forward sees the same mask)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nmt.models.dropout import SeqDropout
from parallel.runtime.wave import Carried, Chunk, State, leaf

STEPS, BATCH, WIDTH = 7, 3, 5
SPANS = [(0, 3), (3, 5), (5, 7)]


def run_chunks(recompute: bool) -> tuple[list[Tensor], list[int]]:
    """Forward of 3 chunks through a dropout + 2-layer LSTM stage, then the backward in
    reverse: (gradients of the input and of every parameter, numels saved for backward
    during the forward)."""
    torch.manual_seed(0)
    lstm = nn.LSTM(WIDTH, WIDTH, num_layers=2)
    drop = SeqDropout(0.4)
    drop.reseed(1234)
    x = leaf(torch.randn(STEPS, BATCH, WIDTH))
    out_grads = torch.randn(STEPS, BATCH, WIDTH)

    def fn(c: int, inputs: Chunk, state: State | None) -> tuple[Chunk, State]:
        h = drop.chunk(inputs[0], SPANS[c][0], STEPS)
        y, (hn, cn) = lstm(h, None if state is None else (state[0], state[1]))
        return (y,), (hn, cn)

    seg = Carried(fn, unit=1, recompute=recompute)
    saved: list[int] = []

    def pack(t: Tensor) -> Tensor:
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        for c, (a, e) in enumerate(SPANS):
            seg.forward(c, (x[a:e],))
    for c in reversed(range(len(SPANS))):
        a, e = SPANS[c]
        seg.backward(c, [out_grads[a:e]])
    assert x.grad is not None
    return [x.grad, *(p.grad for p in lstm.parameters() if p.grad is not None)], saved


def test_recompute_keeps_no_activations_and_gives_the_same_gradients() -> None:
    kept, saved_kept = run_chunks(recompute=False)
    again, saved_again = run_chunks(recompute=True)
    assert len(kept) == len(again) == 9  # the input and the 8 LSTM parameters
    for a, b in zip(kept, again, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    assert sum(saved_kept) > STEPS * BATCH * WIDTH  # the activations, without recompute
    assert sum(saved_again) == 0  # with it: nothing


def test_a_seeded_dropout_draws_one_mask_per_seed() -> None:
    """A second draw under the same seed (the recomputed forward) is the same mask; a new
    seed draws a new one; without a seed every forward draws afresh."""
    drop = SeqDropout(0.5).train()
    x = torch.ones(4, 2, 8)
    drop.reseed(7)
    first = drop(x)
    assert torch.equal(drop(x), first)
    drop.reseed(8)
    assert not torch.equal(drop(x), first)
    drop.reseed(None)
    assert not torch.equal(drop(x), drop(x))
