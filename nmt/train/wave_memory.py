"""The attention memory on the wavefront's ranks (:mod:`nmt.train.wave_program`).

Dec1's rank builds the memory over the top encoder output it holds (every sentence, or with
``parallel.attention_split`` all but those of Dec2's rank) and embeds the target; with
``attention_split`` Dec2's rank builds the memory of its own sentences. Either memory, and
the embedding, are computed once per batch and used by every chunk, so the chunks see them
as leaves; one backward per batch then takes what the leaves collected through the
attention's key projection (and the embedding) to the encoder output.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from data.batching import Batch
from nmt.models.attention import AttentionMemory
from nmt.models.gnmt import GNMT
from nmt.models.gnmt_layers import without_sentences
from parallel.runtime.wave import leaf


class Memory(NamedTuple):
    """An attention memory over leaves, with the tensors behind them.

    memory: keys and values are leaves (``[B',Ts,H]``)
    roots:  what the leaves detach: keys, values (and the target embedding ``[Tt,B,H]``)
    leaves: the leaves, in the order of ``roots``
    """

    memory: AttentionMemory
    roots: list[Tensor]
    leaves: list[Tensor]

    @property
    def embedding(self) -> Tensor:
        """The target embedding's leaf ``[Tt,B,H]`` (Dec1's rank)."""
        return self.leaves[2]

    def backward(self) -> None:
        """Backward from the roots with what their leaves collected."""
        pairs = [(r, x.grad) for r, x in zip(self.roots, self.leaves, strict=True)]
        pairs = [(r, g) for r, g in pairs if g is not None and r.requires_grad]
        if pairs:
            torch.autograd.backward([r for r, _ in pairs], [g for _, g in pairs])


def decoder_memory(model: GNMT, b: Batch, enc_top: Tensor, elsewhere: tuple[int, int]) -> Memory:
    """On Dec1's rank: the memory over ``enc_top[Ts,B',H]`` (the batch's sentences but
    ``elsewhere = [lo, hi)``, whose attention runs on Dec2's rank) and the target
    embedding."""
    src_len = without_sentences(b.src_len.unsqueeze(0), *elsewhere).squeeze(0)
    return as_leaves(model, enc_top, src_len, model.embed_stage.embedding(b.tgt_in))


def own_memory(model: GNMT, b: Batch, enc_mine: Tensor, mine: tuple[int, int]) -> Memory:
    """On Dec2's rank with ``attention_split``: the memory of its own sentences ``mine =
    [lo, hi)`` over their top encoder output ``enc_mine[Ts,hi-lo,H]``."""
    lo, hi = mine
    return as_leaves(model, enc_mine, b.src_len[lo:hi])


def as_leaves(model: GNMT, enc: Tensor, src_len: Tensor, *more: Tensor) -> Memory:
    mem = model.prepare_memory(enc, src_len)
    roots = [mem.keys, mem.values, *more]
    leaves = [leaf(t) for t in roots]
    return Memory(mem._replace(keys=leaves[0], values=leaves[1]), roots, leaves)
