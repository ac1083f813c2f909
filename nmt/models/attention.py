"""Normalized Bahdanau (additive) attention, as in NVIDIA's GNMT v2 (``normalize=True``).

score(q, k_j) = g * (v / ||v||) . tanh(W_q q + W_k k_j + b)

computed as ``2g (v / ||v||) . (sigmoid(2 (W_q q + W_k k_j + b)) - 1/2)``, since tanh(z) =
2 sigmoid(2z) - 1: torch's CPU sigmoid is ~6x faster than its tanh (fp32, AVX-512;
``python -m scripts.bench attention``), and this elementwise pass over ``[B, M, Ts, H]`` was
the largest cost of a beam-search step after the matmuls. Without gradients (decoding) the
``- 1/2`` is skipped: it shifts every source position's score by the same
``-g sum(v / ||v||)``, which the softmax drops. Doubling is exact in floating point.

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
    rows:   [N] long or None: the sentence of each query row (:meth:`for_rows`); None: the
            query rows come in equal groups of r per sentence
    slots:  [N] long or None: each row's position among its sentence's rows
    width:  the most rows of one sentence (with ``rows``)
    """

    keys: Tensor
    values: Tensor
    mask: Tensor
    rows: Tensor | None = None
    slots: Tensor | None = None
    width: int = 0

    def index_select(self, index: Tensor) -> AttentionMemory:
        """Keep sentences ``index[B']`` (a long tensor) of the memory."""
        if self.rows is not None:
            raise ValueError("index_select of a memory laid out for rows: select sentences first")
        return AttentionMemory(
            self.keys.index_select(0, index),
            self.values.index_select(0, index),
            self.mask.index_select(0, index),
        )

    def for_rows(self, rows: Tensor) -> AttentionMemory:
        """The memory for query rows of sentences ``rows[N]`` (long, non-decreasing: rows
        grouped by sentence, any number per sentence), without copying keys or values: the
        attention gathers what it needs (beam search after pruning)."""
        if bool((rows[1:] < rows[:-1]).any()):
            raise ValueError("for_rows: rows must be grouped by sentence (non-decreasing)")
        counts = torch.bincount(rows, minlength=self.keys.size(0))
        first = counts.cumsum(0) - counts
        slots = torch.arange(rows.numel(), device=rows.device) - first.index_select(0, rows)
        return self._replace(rows=rows, slots=slots, width=int(counts.max()) if rows.numel() else 0)


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
        sentence in beam search, r = 1 in training); with ``memory.rows`` (:meth:`AttentionMemory.
        for_rows`) row n uses sentence ``rows[n]``. Returns ``ctx[Bq, M, H]`` and
        ``probs[Bq, M, Ts]`` (0 at padded source positions).
        """
        if memory.rows is not None:
            return self._forward_rows(query, memory)
        keys, values, mask = memory.keys, memory.values, memory.mask
        batch, ts, hidden = keys.shape
        bq, m, _ = query.shape
        r = bq // batch
        q = (self.linear_q(query) * 2.0).view(batch, r * m, 1, hidden)
        energy = torch.sigmoid_(q + keys.unsqueeze(1))  # [B, r*M, Ts, H]: (1 + tanh) / 2
        probs = self._probs(energy, mask.unsqueeze(1))  # [B, r*M, Ts]
        ctx = torch.bmm(probs.to(values.dtype), values)  # [B, r*M, H]
        return ctx.view(bq, m, hidden), probs.view(bq, m, ts)

    def _forward_rows(self, query: Tensor, memory: AttentionMemory) -> tuple[Tensor, Tensor]:
        """:meth:`forward` for rows of any number per sentence: the keys are gathered per row
        straight into the energy buffer (the query added in place when M = 1, a beam search
        step), the values are not gathered (the
        context is one product per sentence over its rows' probabilities, padded to the
        largest group)."""
        keys, values, mask, rows, slots, width = memory
        assert rows is not None and slots is not None
        batch, ts, hidden = keys.shape
        n, m, _ = query.shape
        q = (self.linear_q(query) * 2.0).view(n, m, 1, hidden)
        energy = keys.index_select(0, rows).unsqueeze(1)  # [N, 1, Ts, H], a new tensor
        energy = energy.add_(q) if m == 1 else energy + q  # [N, M, Ts, H]
        probs = self._probs(torch.sigmoid_(energy), mask.index_select(0, rows).unsqueeze(1))
        grouped = probs.new_zeros(batch, width, m, ts)
        grouped[rows, slots] = probs  # [B, width, M, Ts]
        ctx = torch.bmm(grouped.view(batch, width * m, ts).to(values.dtype), values)
        return ctx.view(batch, width, m, hidden)[rows, slots], probs

    def _probs(self, energy: Tensor, mask: Tensor) -> Tensor:
        """Attention probabilities from ``energy[..., Ts, H]`` = sigmoid(2 (W_q q + W_k k + b))
        and the padding ``mask`` (broadcast to ``[..., Ts]``)."""
        if torch.is_grad_enabled():  # centred (tanh / 2): v's gradient sums no large cancelling
            energy = energy - 0.5  # terms, so it keeps fp32's precision (dp == accumulation)
        v = self.v * (2.0 * self.g / self.v.norm())
        scores = torch.matmul(energy, v)  # [..., Ts]
        scores = scores.masked_fill(mask, float("-inf"))
        return torch.softmax(scores, dim=-1)
