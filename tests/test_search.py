"""Beam search: greedy equivalence, batching invariance, n-best, lengths, scores, int8."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from nmt.decode.search import (
    Hypothesis,
    SearchSettings,
    beam_search,
    greedy,
    length_penalty,
    row_topk,
)
from nmt.models.gnmt import GNMT, quantize_int8
from nmt.models.registry import build_model
from nmt.models.seq2seq import ModelSpec

V, H = 30, 16
PAD, BOS, EOS = 0, 2, 3
LENGTHS = [6, 3, 1, 9, 4]


def tiny(seed: int = 0, init_range: float = 0.5, hidden: int = H) -> GNMT:
    torch.manual_seed(seed)
    return build_model(
        ModelSpec(hidden=hidden, enc_layers=3, dec_layers=3, dropout=0.0, init_range=init_range),
        V,
        PAD,
    ).eval()


def make_src(lengths: list[int], seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, V, (max(lengths), len(lengths)), generator=g)
    for b, n in enumerate(lengths):
        src[n - 1, b] = EOS
        src[n:, b] = PAD
    return src, torch.tensor(lengths)


def column(src: Tensor, src_len: Tensor, b: int) -> tuple[Tensor, Tensor]:
    n = int(src_len[b])
    return src[:n, b : b + 1], src_len[b : b + 1]


def reference_greedy(model: GNMT, src: Tensor, src_len: Tensor, max_len: int) -> list[int]:
    """Independent greedy: re-run the full teacher-forced model every step, take argmax."""
    tokens: list[int] = []
    with torch.no_grad():
        while True:
            tgt_in = torch.tensor([BOS] + tokens).unsqueeze(1)
            logits = model(src, src_len, tgt_in)[-1, 0].clone()
            logits[PAD] = logits[BOS] = float("-inf")
            if len(tokens) == max_len:
                return tokens
            y = int(logits.argmax())
            if y == EOS:
                return tokens
            tokens.append(y)


def sequence_logprob(model: GNMT, src: Tensor, src_len: Tensor, tokens: list[int]) -> float:
    with torch.no_grad():
        tgt_in = torch.tensor([BOS] + tokens).unsqueeze(1)
        logp = torch.log_softmax(model(src, src_len, tgt_in)[:, 0], dim=-1)
        gold = torch.tensor(tokens + [EOS])
        return float(logp.gather(1, gold.unsqueeze(1)).sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam1_equals_independent_greedy(seed: int) -> None:
    model = tiny(seed).double()
    src, src_len = make_src(LENGTHS, seed=seed + 10)
    hyps = beam_search(model, src, src_len, SearchSettings(1, beta=0.2, max_len=(1.5, 2)))
    greedy_out = greedy(model, src, src_len, 1.5, 2)
    for b in range(len(LENGTHS)):
        s, sl = column(src, src_len, b)
        ref = reference_greedy(model, s, sl, math.floor(1.5 * LENGTHS[b] + 2))
        assert hyps[b][0].tokens == ref
        assert greedy_out[b] == ref


def test_batch_equals_single_sentences() -> None:
    model = tiny().double()
    src, src_len = make_src(LENGTHS)
    batched = beam_search(
        model, src, src_len, SearchSettings(5, beta=0.2, max_len=(1.5, 3), nbest=3)
    )
    for b in range(len(LENGTHS)):
        s, sl = column(src, src_len, b)
        alone = beam_search(model, s, sl, SearchSettings(5, beta=0.2, max_len=(1.5, 3), nbest=3))[0]
        assert [h.tokens for h in batched[b]] == [h.tokens for h in alone]
        for x, y in zip(batched[b], alone, strict=True):
            assert x.score == pytest.approx(y.score, abs=1e-9)


def test_float32_batch_equals_single_sentences() -> None:
    model = tiny(3)
    src, src_len = make_src(LENGTHS, seed=4)
    batched = beam_search(model, src, src_len, SearchSettings(4, beta=0.0, max_len=(1.5, 3)))
    for b in range(len(LENGTHS)):
        s, sl = column(src, src_len, b)
        alone = beam_search(model, s, sl, SearchSettings(4, beta=0.0, max_len=(1.5, 3)))[0]
        assert batched[b][0].tokens == alone[0].tokens


def test_nbest_sorted_distinct_and_scores_consistent() -> None:
    model = tiny(1).double()
    src, src_len = make_src(LENGTHS, seed=2)
    alpha = 0.6
    out = beam_search(
        model, src, src_len, SearchSettings(6, alpha=alpha, beta=0.0, max_len=(1.5, 4), nbest=6)
    )
    for b, hyps in enumerate(out):
        assert 1 <= len(hyps) <= 6
        assert all(isinstance(h, Hypothesis) for h in hyps)
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in hyps}) == len(hyps)
        s, sl = column(src, src_len, b)
        for h in hyps:
            assert all(t not in (PAD, BOS, EOS) for t in h.tokens)
            assert h.logprob == pytest.approx(sequence_logprob(model, s, sl, h.tokens), abs=1e-9)
            lp = float(length_penalty(torch.tensor(len(h.tokens) + 1), alpha))
            assert h.score == pytest.approx(h.logprob / lp, abs=1e-9)


def test_coverage_penalty_lowers_score() -> None:
    model = tiny(2).double()
    src, src_len = make_src(LENGTHS, seed=5)
    out = beam_search(
        model, src, src_len, SearchSettings(3, alpha=0.0, beta=0.5, max_len=(1.5, 3), nbest=3)
    )
    for hyps in out:
        for h in hyps:
            assert h.score <= h.logprob + 1e-12


@pytest.mark.parametrize("a,b", [(0.0, 0), (0.0, 3), (1.0, 2)])
def test_max_length_respected(a: float, b: int) -> None:
    model = tiny(4, init_range=0.1)  # near-uniform: rarely stops by itself
    src, src_len = make_src(LENGTHS, seed=3)
    out = beam_search(model, src, src_len, SearchSettings(3, max_len=(a, b), nbest=2))
    for n, hyps in zip(LENGTHS, out, strict=True):
        assert hyps and all(len(h.tokens) <= math.floor(a * n + b) for h in hyps)
    assert any(
        len(h.tokens) == math.floor(a * n + b)
        for n, hs in zip(LENGTHS, out, strict=True)
        for h in hs
    )


def test_empty_source() -> None:
    model = tiny()
    src, src_len = torch.tensor([[EOS]]), torch.tensor([1])
    out = beam_search(model, src, src_len, SearchSettings(5, nbest=2))
    assert len(out) == 1 and 1 <= len(out[0]) <= 2
    assert len(out[0][0].tokens) <= 11
    assert len(greedy(model, src, src_len)[0]) <= 11


def test_larger_beam_finds_higher_logprob() -> None:
    """With alpha = beta = 0 the best of beam 5 is at least as probable as greedy's output."""
    for seed in range(4):
        model = tiny(seed).double()
        src, src_len = make_src(LENGTHS, seed=seed + 20)
        b1 = beam_search(
            model, src, src_len, SearchSettings(1, alpha=0.0, beta=0.0, max_len=(1.5, 3))
        )
        b5 = beam_search(
            model, src, src_len, SearchSettings(5, alpha=0.0, beta=0.0, max_len=(1.5, 3))
        )
        for x, y in zip(b1, b5, strict=True):
            assert y[0].score >= x[0].score - 1e-9


def test_empty_batch() -> None:
    empty = torch.zeros(4, 0, dtype=torch.long)
    assert beam_search(tiny(), empty, torch.zeros(0, dtype=torch.long)) == []


def test_restores_training_mode_and_checks_nbest() -> None:
    model = tiny().train()
    src, src_len = make_src([3])
    beam_search(model, src, src_len, SearchSettings(2, max_len=(1.0, 2)))
    assert model.training
    with pytest.raises(ValueError):
        beam_search(model, src, src_len, SearchSettings(2, max_len=(1.0, 2), nbest=3))


def test_int8_beam_search_mostly_agrees_with_fp32() -> None:
    model = tiny(0, init_range=0.5, hidden=32)
    qmodel = quantize_int8(model)
    lengths = [6, 3, 1, 9, 4, 7, 5, 8]
    src, src_len = make_src(lengths, seed=7)
    ref = beam_search(model, src, src_len, SearchSettings(4, max_len=(1.5, 3)))
    out = beam_search(qmodel, src, src_len, SearchSettings(4, max_len=(1.5, 3)))
    same_tokens = total = 0
    for r, q in zip(ref, out, strict=True):
        a, b = r[0].tokens, q[0].tokens
        same_tokens += sum(x == y for x, y in zip(a, b, strict=False))
        total += max(len(a), len(b), 1)
    assert same_tokens / total >= 0.7


@pytest.mark.parametrize(
    "n,v,k",
    [(7, 8000, 10), (3, 2000, 2), (4, 2000, 10), (5, 8001, 10), (4, 50, 10), (3, 500, 10),
     (2, 100, 2), (3, 300, 2)],
)  # fmt: skip
def test_row_topk_equals_topk(n: int, v: int, k: int) -> None:
    """Two-stage top-k == ``topk`` (values; indices point at those values), with ties, -inf
    (masked ids) and rows with fewer than k finite values; other sizes fall back to topk."""
    g = torch.Generator().manual_seed(v + k)
    x = torch.randn(n, v, generator=g).mul_(4).round_()  # many ties
    x[0, : v // 2] = float("-inf")
    x[1] = float("-inf")
    x[1, 7] = 0.0  # one finite value
    values, index = row_topk(x, k)
    ref_values, _ = x.topk(k, dim=1)
    assert torch.equal(values, ref_values)
    assert torch.equal(x.gather(1, index), values)
    finite = values > float("-inf")
    assert all(len(set(r[f].tolist())) == int(f.sum()) for r, f in zip(index, finite, strict=True))
