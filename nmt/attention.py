"""Normalized Bahdanau (additive) attention, as in NVIDIA's GNMT v2 (``normalize=True``).

score(q, k_j) = g * (v / ||v||) . tanh(W_q q + W_k k_j + b)

computed as ``2g (v / ||v||) . (sigmoid(2 (W_q q + W_k k_j + b)) - 1/2)``, since tanh(z) =
2 sigmoid(2z) - 1: torch's CPU sigmoid is ~6x faster than its tanh (fp32, AVX-512;
scripts/bench_attention.py), and this elementwise pass over ``[B, M, Ts, H]`` was the largest
cost of a beam-search step after the matmuls. Without
gradients (decoding) the ``- 1/2`` is skipped: it shifts every source position's score by the
same ``-g sum(v / ||v||)``, which the softmax drops. Doubling is exact in floating point.

Keys and values are the top encoder outputs; padded source positions are masked so that they
get probability exactly 0. One code path serves training (all target steps of a sentence at
once: M = Tt queries per sentence) and beam search (one query per beam: M = K).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn


class AttentionMemory(NamedTuple):
    """Per-sentence attention inputs, batch-first, computed once per source batch.

    keys:   [B, Ts, H]  2 (W_k enc_out + b) (the bias and the doubling folded in here)
    values: [B, Ts, H]  enc_out
    mask:   [B, Ts]     bool, True at padded source positions
    """

    keys: Tensor
    values: Tensor
    mask: Tensor

    def index_select(self, index: Tensor) -> AttentionMemory:
        """Keep sentences ``index[B']`` (a long tensor) of the memory."""
        return AttentionMemory(
            self.keys.index_select(0, index),
            self.values.index_select(0, index),
            self.mask.index_select(0, index),
        )


def padding_mask(src_len: Tensor, max_len: int) -> Tensor:
    """Bool mask [B, max_len], True where position >= src_len[b] (padding)."""
    positions = torch.arange(max_len, device=src_len.device)
    return positions.unsqueeze(0) >= src_len.unsqueeze(1)


class BahdanauAttention(nn.Module):
    """Additive attention with a weight-normalized score vector (v, scalar g) and bias b."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.linear_q = nn.Linear(hidden, hidden, bias=False)
        self.linear_k = nn.Linear(hidden, hidden, bias=False)
        self.v = nn.Parameter(torch.empty(hidden))
        self.g = nn.Parameter(torch.empty(1))
        self.b = nn.Parameter(torch.empty(hidden))
        self.reset_normalization()

    def reset_normalization(self) -> None:
        """NVIDIA's initial values for the normalization: g = 1/sqrt(H), b = 0."""
        with torch.no_grad():
            self.g.fill_(1.0 / math.sqrt(self.hidden))
            self.b.zero_()

    def memory(self, enc_out: Tensor, src_len: Tensor) -> AttentionMemory:
        """Precompute keys from ``enc_out[Ts, B, H]`` and the mask from ``src_len[B]``."""
        values = enc_out.transpose(0, 1).contiguous()
        keys = (self.linear_k(values) + self.b) * 2.0
        mask = padding_mask(src_len.to(enc_out.device), enc_out.size(0))
        return AttentionMemory(keys, values, mask)

    def forward(self, query: Tensor, memory: AttentionMemory) -> tuple[Tensor, Tensor]:
        """Attend with ``query[Bq, M, H]``, where Bq = B * r for memory batch B.

        Rows ``b*r .. b*r+r-1`` of the query use sentence b of the memory (r = beams per
        sentence in beam search, r = 1 in training). Returns ``ctx[Bq, M, H]`` and
        ``probs[Bq, M, Ts]`` (0 at padded source positions).
        """
        keys, values, mask = memory
        batch, ts, hidden = keys.shape
        bq, m, _ = query.shape
        r = bq // batch
        q = (self.linear_q(query) * 2.0).view(batch, r * m, 1, hidden)
        energy = torch.sigmoid_(q + keys.unsqueeze(1))  # [B, r*M, Ts, H]: (1 + tanh) / 2
        if torch.is_grad_enabled():  # centred (tanh / 2): v's gradient sums no large cancelling
            energy = energy - 0.5  # terms, so it keeps fp32's precision (dp == accumulation)
        v = self.v * (2.0 * self.g / self.v.norm())
        scores = torch.matmul(energy, v)  # [B, r*M, Ts]
        scores = scores.masked_fill(mask.unsqueeze(1), float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        ctx = torch.bmm(probs.to(values.dtype), values)  # [B, r*M, H]
        return ctx.view(bq, m, hidden), probs.view(bq, m, ts)
