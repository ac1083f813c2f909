"""Vocabulary shortlist for decoding (the lexical shortlist of Marian and CTranslate2).

The output layer (H x V, then a softmax over V) is the largest part of a decoding step. Most
of V cannot appear in a given translation: a batch's shortlist is the target pieces that
co-occur with its source pieces in the training data (the ``per_source`` best of each, by
the Dice coefficient ``2 c(s,t) / (c(s) + c(t))`` over sentence pairs), the ``frequent`` most
frequent target pieces and the special ids. The search then projects and normalizes over
those ids only, each sentence over its own list (the softmax is over the shortlist: scores
differ slightly from the full vocabulary's; a greedy translation whose every token is in the
shortlist is unchanged).

Built once from the training pairs (:func:`build_shortlist`) and stored with a model
(``shortlist`` in the checkpoint: plain tensors, loadable with ``weights_only=True``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nmt.errors import UserError

SPECIALS = 4  # pad, unk, bos, eos: ids 0..3, always in the shortlist


@dataclass(frozen=True)
class Shortlist:
    """``table[V, per_source]`` long: each source id's best target ids (-1 = none);
    ``frequent[F]`` long: the most frequent target ids."""

    table: Tensor
    frequent: Tensor

    def candidates(self, src: Tensor, pad_id: int = 0) -> Tensor:
        """Per sentence of ``src[Ts,B]`` (long; ``pad_id`` ignored) its allowed target ids:
        ``[B, S]`` long, each row sorted (so the special ids 0..3 come first, in columns
        0..3) and padded with -1 up to the longest row's S."""
        vocab = self.table.size(0)
        src = src.cpu()
        batch = src.size(1)
        mask = torch.zeros(batch, vocab, dtype=torch.bool)
        rows = self.table.index_select(0, src.clamp(0, vocab - 1).reshape(-1))  # [Ts*B, k]
        owner = torch.arange(batch).repeat(src.size(0))  # sentence of each source position
        real = (src.reshape(-1) != pad_id).unsqueeze(1) & (rows >= 0)
        mask[owner.unsqueeze(1).expand_as(rows)[real], rows[real]] = True
        mask[:, self.frequent] = True
        mask[:, :SPECIALS] = True
        width = int(mask.sum(dim=1).max())
        ids = torch.where(mask, torch.arange(vocab), vocab).sort(dim=1).values[:, :width]
        return ids.masked_fill(ids == vocab, -1)

    def to_state(self) -> dict[str, Tensor]:
        """Plain tensors for a checkpoint (int16 ids when the vocabulary allows: 4x smaller)."""
        small = self.table.size(0) <= 32767
        table = self.table.to(torch.int16) if small else self.table
        return {"table": table, "frequent": self.frequent}

    @staticmethod
    def from_state(state: dict[str, Tensor]) -> Shortlist:
        return Shortlist(state["table"].long(), state["frequent"].long())


def build_shortlist(
    src_ids: Sequence[Sequence[int]],
    tgt_ids: Sequence[Sequence[int]],
    vocab_size: int,
    per_source: int = 50,
    frequent: int = 500,
) -> Shortlist:
    """The shortlist of a corpus of id sequences (see the module docstring)."""
    pairs, c_src, c_tgt = [], np.zeros(vocab_size, np.int64), np.zeros(vocab_size, np.int64)
    tok_count = np.zeros(vocab_size, np.int64)
    for src, tgt in zip(src_ids, tgt_ids, strict=True):
        us, ut = np.unique(np.asarray(src, np.int64)), np.unique(np.asarray(tgt, np.int64))
        c_src[us] += 1
        c_tgt[ut] += 1
        np.add.at(tok_count, np.asarray(tgt, np.int64), 1)
        pairs.append((us[:, None] * vocab_size + ut[None, :]).reshape(-1))
    keys, counts = np.unique(
        np.concatenate(pairs) if pairs else np.zeros(0, np.int64), return_counts=True
    )
    s, t = keys // vocab_size, keys % vocab_size
    dice = 2.0 * counts / (c_src[s] + c_tgt[t])
    order = np.lexsort((-dice, s))  # by source id, best first
    s, t = s[order], t[order]
    start = np.searchsorted(s, np.arange(vocab_size))
    rank = np.arange(len(s)) - start[s]
    keep = rank < per_source
    table = np.full((vocab_size, per_source), -1, np.int64)
    table[s[keep], rank[keep]] = t[keep]
    top = np.argsort(-tok_count, kind="stable")[:frequent]
    return Shortlist(torch.from_numpy(table), torch.from_numpy(np.sort(top)))


def shortlist_for(ckpt: dict[str, Any], per_source: int = 50, frequent: int = 500) -> Shortlist:
    """The shortlist of a single-device checkpoint: from the training split of the corpus its
    config names, tokenized with its own sentencepiece model."""
    from data.tokenizer import Tokenizer
    from nmt.config import DataConfig, from_dict
    from nmt.prepare.splits import load_text

    tok = Tokenizer.from_bytes(ckpt["spm"])
    if tok.tags:
        raise UserError(
            "a multilingual model has no vocabulary shortlist (its targets mix languages); "
            "export it with --shortlist 0 0"
        )
    pairs = load_text(from_dict(DataConfig, ckpt["config"]["data"]), ("train",))["train"]
    src = tok.encode([s for s, _ in pairs])
    tgt = tok.encode([t for _, t in pairs])
    return build_shortlist(src, tgt, tok.vocab_size, per_source, frequent)
