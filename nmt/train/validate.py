"""Validation during training: teacher-forced dev loss and dev BLEU (sacrebleu) of greedy
translations (beam 1 keeps validation cheap; ``nmt-eval`` uses the configured beam)."""

from __future__ import annotations

import dataclasses
from typing import Any

import sacrebleu
import torch

from data.batching import Batcher
from data.tokenizer import PAD_ID
from nmt.config import AppConfig, DecodeConfig
from nmt.decode.translate import translate_texts
from nmt.models.seq2seq import Seq2Seq
from nmt.prepare.splits import Corpus


@torch.no_grad()
def dev_loss(
    model: Seq2Seq, corpus: Corpus, batch_tokens: int, eps: float, device: torch.device
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


def dev_bleu_report(
    model: Seq2Seq, corpus: Corpus, dcfg: DecodeConfig, limit: int
) -> dict[str, Any]:
    """``{"val_bleu": BLEU}``; multilingual: the mean over directions, and ``val_bleu_by_dir``
    (the first ``limit / directions`` dev sentences of each, translated into its target)."""
    parts = corpus.parts.get("dev")
    if not parts:
        return {"val_bleu": _bleu(model, corpus, corpus.text["dev"][: limit or None], dcfg, "")}
    each = max(1, -(-limit // len(parts))) if limit else None
    by_dir = {
        d: _bleu(model, corpus, corpus.text["dev"][a:b][:each], dcfg, d.split("-")[1])
        for d, (a, b) in parts.items()
    }
    return {"val_bleu": sum(by_dir.values()) / len(by_dir), "val_bleu_by_dir": by_dir}


def _bleu(
    model: Seq2Seq, corpus: Corpus, pairs: list[tuple[str, str]], dcfg: DecodeConfig, lang: str
) -> float:
    greedy = dataclasses.replace(
        dcfg, beam_size=1, alpha=0.0, beta=0.0, nbest=1, prune_relative=0.0, prune_absolute=0.0,
        shortlist=False,
    )  # fmt: skip
    hyps = translate_texts(model, corpus.tokenizer, [s for s, _ in pairs], greedy, lang)
    return float(sacrebleu.corpus_bleu(hyps, [[t for _, t in pairs]]).score)


def validate(
    model: Seq2Seq, corpus: Corpus, cfg: AppConfig, device: torch.device
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "val_loss": dev_loss(
            model, corpus, int(cfg.data.batch_tokens), float(cfg.train.label_smoothing), device
        )
    }
    if bool(cfg.train.eval_bleu):
        limit = int(cfg.data.max_dev_sentences)
        result.update(dev_bleu_report(model, corpus, cfg.decode, limit))
    return result
