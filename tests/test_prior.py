"""The generator bias starts at the log unigram prior of the training targets."""

from __future__ import annotations

import math
from collections import Counter

import torch

from nmt.models.gnmt import log_unigram_prior
from nmt.models.loss import label_smoothed_nll
from nmt.models.registry import build_model
from nmt.models.seq2seq import ModelSpec

V, H, PAD, BOS, EOS = 50, 16, 0, 2, 3


def corpus(n: int = 200, seed: int = 0) -> list[list[int]]:
    """Zipf-like target sequences, so the prior is far from uniform."""
    g = torch.Generator().manual_seed(seed)
    weights = 1.0 / torch.arange(1, V - 3, dtype=torch.float64)
    out = []
    for _ in range(n):
        length = int(torch.randint(1, 12, (1,), generator=g))
        out.append([4 + int(i) for i in torch.multinomial(weights, length, True, generator=g)])
    return out


def test_prior_counts_tokens_and_one_eos_per_sentence() -> None:
    seqs = corpus()
    counts = Counter(i for s in seqs for i in s)
    counts[EOS] += len(seqs)
    total = sum(counts.values()) + V  # add-one smoothing
    prior = log_unigram_prior(seqs, V, EOS)
    assert prior.shape == (V,)
    for token in (EOS, 4, 5, V - 1, PAD):
        assert math.isclose(
            float(prior[token]), math.log((counts[token] + 1) / total), rel_tol=1e-6
        )
    assert math.isclose(float(prior.double().exp().sum()), 1.0, rel_tol=1e-6)


def batch(seqs: list[list[int]]) -> tuple[torch.Tensor, ...]:
    tt = max(len(s) for s in seqs) + 1
    tgt_in = torch.full((tt, len(seqs)), PAD)
    tgt_out = torch.full((tt, len(seqs)), PAD)
    for b, s in enumerate(seqs):
        tgt_in[: len(s) + 1, b] = torch.tensor([BOS, *s])
        tgt_out[: len(s) + 1, b] = torch.tensor([*s, EOS])
    return tgt_out.clone(), torch.full((len(seqs),), tt), tgt_in, tgt_out


def test_untrained_model_with_prior_starts_at_unigram_cross_entropy() -> None:
    """The untrained model's loss is the unigram model's, not ln V (the old plateau's start)."""
    seqs = corpus()
    prior = log_unigram_prior(seqs, V, EOS)
    src, src_len, tgt_in, tgt_out = batch(seqs[:64])
    keep = tgt_out != PAD
    unigram_xent = float(-prior[tgt_out[keep]].mean())
    losses = {}
    for name, p in (("prior", prior), ("uniform", None)):
        torch.manual_seed(0)
        model = build_model(
            ModelSpec(hidden=H, enc_layers=2, dec_layers=2, dropout=0.0, init_range=0.1), V, PAD, p
        ).eval()
        if p is not None:
            assert torch.equal(model.generator.proj.bias.detach(), p)
        with torch.no_grad():
            _, nll = label_smoothed_nll(model(src, src_len, tgt_in), tgt_out, PAD, 0.0)
        losses[name] = float(nll) / int(keep.sum())
    assert abs(losses["prior"] - unigram_xent) < 0.05
    assert abs(losses["uniform"] - math.log(V)) < 0.2
    assert losses["prior"] < losses["uniform"] - 0.3
