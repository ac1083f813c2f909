"""A pruned eos must still finish: beam search with pruning against an exhaustive search.

The model is a Markov chain over a 7-token vocabulary (the next token depends on the previous
one only), built so that eos always falls just below the relative pruning floor rp = 0.3 of
the best candidate. A rule that drops pruned eos candidates never finishes a hypothesis before
the length cap ("B A A A A A A"); the best translation under the GNMT score is "B". The
reference enumerates every sequence up to the cap and scores it with the formula of
:mod:`nmt.decode.search`'s docstring: no beam, no pruning, no code shared with the search.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor

from nmt.decode.search import Pruning, SearchSettings, beam_search

PAD, UNK, BOS, EOS, A, B, C = range(7)
# P(next | previous): eos is 0.2 after A or B, just below 0.3 x P(A) = 0.21 (and, on the
# beam's cumulative scale, 0.18 < 0.3 x 0.63 after "B")
NEXT = {
    BOS: {B: 0.9, A: 0.05, C: 0.03, EOS: 0.02},
    A: {A: 0.7, EOS: 0.2, B: 0.05, C: 0.05},
    B: {A: 0.7, EOS: 0.2, B: 0.05, C: 0.05},
    C: {EOS: 0.9, A: 0.05, B: 0.05},
}


class _Memory:
    def __init__(self, mask: Tensor) -> None:
        self.mask = mask  # [B, Ts] True at padding

    def index_select(self, index: Tensor) -> _Memory:
        return _Memory(self.mask[index])

    def for_rows(self, rows: Tensor) -> _Memory:
        return _Memory(self.mask[rows])


class MarkovModel(torch.nn.Module):
    """Just enough of :class:`nmt.models.seq2seq.Seq2Seq` for the search: ``step`` returns the
    log-probabilities of :data:`NEXT` for each row's previous token."""

    def __init__(self) -> None:
        super().__init__()
        table = torch.full((7, 7), float("-inf"), dtype=torch.double)
        for prev, dist in NEXT.items():
            for tok, p in dist.items():
                table[prev, tok] = math.log(p)
        self.table = table
        self.embedding = torch.nn.Embedding(7, 2).double()

    def input_embedding(self) -> torch.nn.Embedding:
        return self.embedding

    def encode(self, src: Tensor, src_len: Tensor) -> Tensor:
        return src

    def prepare_memory(self, enc: Tensor, src_len: Tensor) -> _Memory:
        return _Memory(torch.arange(enc.size(0)).unsqueeze(0) >= src_len.unsqueeze(1))

    def init_state(self, batch: int) -> Tensor:
        return torch.zeros(batch)

    @staticmethod
    def reorder_state(state: Tensor, index: Tensor) -> Tensor:
        return state.index_select(0, index)

    def step(
        self, y: Tensor, state: Tensor, memory: _Memory, vocab: object = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        attn = torch.full((y.numel(), memory.mask.size(1)), 1.0 / memory.mask.size(1))
        return self.table[y].clone(), state, attn.double()


def gnmt_score(tokens: tuple[int, ...], alpha: float) -> float:
    """log P(tokens + eos) / ((5 + |Y|) / 6)^alpha, |Y| counting eos (beta = 0)."""
    logp, prev = 0.0, BOS
    for tok in (*tokens, EOS):
        p = NEXT[prev].get(tok, 0.0)
        if p == 0.0:
            return float("-inf")
        logp, prev = logp + math.log(p), tok
    return logp / ((5 + len(tokens) + 1) / 6) ** alpha


def exhaustive_best(max_len: int, alpha: float) -> list[int]:
    """The best-scoring sequence of at most ``max_len`` tokens, by enumerating them all."""
    seqs = (s for n in range(max_len + 1) for s in itertools.product((A, B, C), repeat=n))
    return list(max(seqs, key=lambda s: gnmt_score(s, alpha)))


@pytest.mark.parametrize(
    "prune", [Pruning(), Pruning(0.3, 0.0), Pruning(0.5, 0.0), Pruning(0.0, 1.0)],
    ids=["off", "rp0.3", "rp0.5", "ap1"],
)  # fmt: skip
@pytest.mark.parametrize("k", [2, 5])
def test_pruned_search_finds_the_exhaustive_best(prune: Pruning, k: int) -> None:
    alpha, src_len = 0.6, 3
    max_len = math.floor(1.5 * src_len + 3)  # the search's cap for max_len=(1.5, 3)
    src = torch.tensor([[4], [5], [EOS]])
    out = beam_search(
        MarkovModel(),  # type: ignore[arg-type]
        src,
        torch.tensor([src_len]),
        SearchSettings(k, alpha=alpha, beta=0.0, max_len=(1.5, 3), prune=prune),
    )
    best = exhaustive_best(max_len, alpha)
    assert best == [B]
    assert out[0][0].tokens == best
    assert out[0][0].score == pytest.approx(gnmt_score(tuple(best), alpha), abs=1e-12)
