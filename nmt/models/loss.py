"""Label-smoothed cross entropy, summed (not averaged) so micro-batches add up exactly.

For each non-pad target position t with gold token y_t and ``logp = log_softmax(logits_t)``
over the V-entry vocabulary:

    nll_t    = -logp[y_t]
    smooth_t = -(1/V) * sum_{v=0}^{V-1} logp[v]          (mean over the WHOLE vocabulary,
                                                          pad/bos/unk/eos included)
    loss_t   = (1 - eps) * nll_t + eps * smooth_t

This is NVIDIA GNMT v2's ``LabelSmoothing`` (and fairseq's original formula): the gold token
effectively gets mass 1 - eps + eps/V and every other token eps/V. Positions whose target is
``pad_id`` contribute nothing. The caller divides ``loss_sum`` by the mini-batch's token count
(``Batch.ntokens``), so splitting a batch into micro-batches leaves the gradient unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor


def label_smoothed_nll(
    logits: Tensor, target: Tensor, pad_id: int, eps: float
) -> tuple[Tensor, Tensor]:
    """``logits[T,B,V]`` (any float dtype), ``target[T,B]`` long -> (loss_sum, nll_sum).

    Both are fp32 (fp64 for fp64 logits) scalars summed over the positions where
    ``target != pad_id``; ``nll_sum`` is the unsmoothed negative log-likelihood (for
    perplexity), detached.
    No host-device synchronisation (pad positions are masked, not removed).
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    logp = torch.log_softmax(logits, dim=-1, dtype=dtype)  # [T, B, V]
    keep = target != pad_id  # [T, B]
    gold = target.masked_fill(~keep, 0).unsqueeze(-1)
    nll = -logp.gather(-1, gold).squeeze(-1)  # [T, B]
    zero = nll.new_zeros(())
    nll_sum = torch.where(keep, nll, zero).sum()
    if eps == 0.0:
        return nll_sum, nll_sum.detach()
    smooth = -logp.mean(dim=-1)  # [T, B]
    loss_sum = (1.0 - eps) * nll_sum + eps * torch.where(keep, smooth, zero).sum()
    return loss_sum, nll_sum.detach()
