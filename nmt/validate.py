"""Validation during training: teacher-forced dev loss and dev BLEU (sacrebleu) of greedy
translations (beam 1 keeps validation cheap; ``nmt-eval`` uses the configured beam)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import sacrebleu
import torch

from data.batching import Batcher
from data.tokenizer import PAD_ID
from nmt.corpus import Corpus
from nmt.model import GNMT
from nmt.translate import translate_texts


@torch.no_grad()
def dev_loss(
    model: GNMT, corpus: Corpus, batch_tokens: int, eps: float, device: torch.device
) -> float:
    """Label-smoothed loss per target token over the whole dev split."""
    src, tgt = corpus.ids["dev"]
    keep = [i for i in range(len(src)) if src[i] and tgt[i]]
    batcher = Batcher([src[i] for i in keep], [tgt[i] for i in keep], batch_tokens, shuffle=False)
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for batch in batcher:
        b = batch.to(device)
        loss_sum, _ = model.loss(b.src, b.src_len, b.tgt_in, b.tgt_out, PAD_ID, eps)
        total += float(loss_sum)
        tokens += batch.ntokens
    model.train(was_training)
    return total / max(tokens, 1)


def dev_bleu(model: GNMT, corpus: Corpus, dcfg: Any, limit: int) -> float:
    """Corpus BLEU of greedy translations of the first ``limit`` dev sentences (0 = all)."""
    pairs = corpus.text["dev"][: limit or None]
    greedy = SimpleNamespace(
        beam_size=1,
        alpha=0.0,
        beta=0.0,
        nbest=1,
        max_len_a=dcfg.max_len_a,
        max_len_b=dcfg.max_len_b,
        batch_tokens=dcfg.batch_tokens,
    )
    hyps = translate_texts(model, corpus.tokenizer, [s for s, _ in pairs], greedy)
    return float(sacrebleu.corpus_bleu(hyps, [[t for _, t in pairs]]).score)


def validate(model: GNMT, corpus: Corpus, cfg: Any, device: torch.device) -> dict[str, Any]:
    result: dict[str, Any] = {
        "val_loss": dev_loss(
            model, corpus, int(cfg.data.batch_tokens), float(cfg.train.label_smoothing), device
        )
    }
    if bool(cfg.train.eval_bleu):
        result["val_bleu"] = dev_bleu(model, corpus, cfg.decode, int(cfg.data.max_dev_sentences))
    return result
