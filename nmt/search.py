"""Batched GNMT beam search (sentences x beams in one [B*K, ...] state), and greedy decoding.

Scoring (Wu et al. 2016, GNMT): for a finished hypothesis Y (its last token is eos)

    score(Y) = log P(Y|X) / lp(Y) + cp(X;Y)
    lp(Y)    = (5 + |Y|)^alpha / (5 + 1)^alpha          |Y| = generated tokens incl. eos
    cp(X;Y)  = beta * sum_i log(min(sum_j p_ij, 1.0))   i over real (non-pad) source positions,
                                                        j over all decoding steps incl. eos

(sum_j p_ij is clamped below at 1e-10 so a never-attended position does not give -inf.)
Active beams are ranked by raw log P (as in GNMT); only finished hypotheses are normalized.

Per step each sentence takes the top 2K of its K*V expansions; eos candidates among the first
K become finished hypotheses, the first K non-eos candidates continue. A sentence stops when
(a) K hypotheses have finished ("all beams done", fairseq's rule; with K=1 this is exactly
greedy decoding), or (b) it has ``nbest`` finished hypotheses and no active beam can beat the
nbest-th of them (bound: log P only decreases, lp is at most lp(max_len+1), cp <= 0), or
(c) it reached its max length ``floor(max_len_a * src_len + max_len_b)`` generated tokens
(eos excluded; src_len includes the source eos), where eos is forced. Finished sentences are
dropped from the batch. pad and bos are never generated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nmt.model import GNMT


@dataclass(frozen=True)
class Hypothesis:
    """A translation: ``tokens`` without bos/eos, GNMT ``score`` and raw ``logprob``."""

    tokens: list[int]
    score: float
    logprob: float


def length_penalty(length: Tensor, alpha: float) -> Tensor:
    """GNMT lp = ((5 + |Y|) / 6)^alpha for ``length[...]`` (any shape) -> float tensor."""
    return ((5.0 + length.double()) / 6.0).pow(alpha)


def coverage_penalty(attn_sum: Tensor, real: Tensor, beta: float) -> Tensor:
    """cp = beta * sum_i log(min(attn_sum_i, 1)) over real positions.

    ``attn_sum[N,Ts]`` accumulated attention, ``real[N,Ts]`` bool (non-pad) -> ``[N]``.
    """
    logs = attn_sum.double().clamp(1e-10, 1.0).log()
    return beta * torch.where(real, logs, torch.zeros_like(logs)).sum(dim=1)


class _Finished:
    """Finished hypotheses per original sentence, and the vectorized stop statistics."""

    def __init__(self, batch: int, nbest: int) -> None:
        self.nbest = nbest
        self.hyps: list[list[Hypothesis]] = [[] for _ in range(batch)]

    def add(self, sent: int, hyp: Hypothesis) -> tuple[int, float]:
        """Store ``hyp``; return (count, nbest-th best score or -inf) for ``sent``."""
        hyps = self.hyps[sent]
        hyps.append(hyp)
        hyps.sort(key=lambda h: h.score, reverse=True)
        kth = hyps[self.nbest - 1].score if len(hyps) >= self.nbest else float("-inf")
        return len(hyps), kth

    def result(self) -> list[list[Hypothesis]]:
        return [hyps[: self.nbest] for hyps in self.hyps]


def beam_search(
    model: GNMT,
    src: Tensor,
    src_len: Tensor,
    beam_size: int = 5,
    alpha: float = 0.6,
    beta: float = 0.1,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    nbest: int = 1,
    bos_id: int = 2,
    eos_id: int = 3,
    pad_id: int = 0,
    vocab_index: Tensor | None = None,
) -> list[list[Hypothesis]]:
    """Translate ``src[Ts,B]`` (``src_len[B]``); returns per sentence up to ``nbest``
    hypotheses sorted by score (best first). The model is put in eval mode for the search.
    ``vocab_index[B,S]`` (long, rows sorted, -1 = padding, the special ids in columns
    0..3): each sentence searches over its own target ids only (a shortlist,
    :mod:`nmt.shortlist`).
    """
    if not 1 <= nbest <= beam_size:
        raise ValueError(f"need 1 <= nbest <= beam_size, got nbest={nbest}, beam={beam_size}")
    if src.size(1) == 0:
        return []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return _search(
                model, src, src_len, beam_size, alpha, beta, max_len_a, max_len_b, nbest,
                bos_id, eos_id, pad_id, vocab_index,
            )  # fmt: skip
    finally:
        model.train(was_training)


def greedy(
    model: GNMT,
    src: Tensor,
    src_len: Tensor,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    bos_id: int = 2,
    eos_id: int = 3,
    pad_id: int = 0,
) -> list[list[int]]:
    """Greedy decoding (argmax each step) = :func:`beam_search` with beam 1 -> token lists."""
    hyps = beam_search(
        model, src, src_len, 1, 0.0, 0.0, max_len_a, max_len_b, 1, bos_id, eos_id, pad_id
    )
    return [h[0].tokens for h in hyps]


def _search(
    model: GNMT,
    src: Tensor,
    src_len: Tensor,
    k: int,
    alpha: float,
    beta: float,
    max_len_a: float,
    max_len_b: int,
    nbest: int,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    vocab_index: Tensor | None = None,
) -> list[list[Hypothesis]]:
    """The search proper (inference mode). Active sentences: ``ba``; rows: ``ba * k``.
    With ``vocab_index`` the columns of the log-probabilities are shortlist positions; the
    special ids keep their columns and tokens are mapped back to vocabulary ids."""
    weight = model.embed_stage.embedding.weight
    device, dtype = weight.device, torch.promote_types(weight.dtype, torch.float32)
    src, src_len = src.to(device), src_len.to(device)
    ids = None if vocab_index is None else vocab_index.to(device)
    if ids is not None and max(pad_id, bos_id, eos_id) >= 4:
        raise ValueError("a shortlist keeps the special ids 0..3 in columns 0..3")
    short = None if ids is None else model.generator.shortlisted(ids)  # (weight, bias)
    batch = src.size(1)
    memory = model.prepare_memory(model.encode(src, src_len), src_len)
    real = ~memory.mask  # [B, Ts]
    max_len = (max_len_a * src_len.double() + max_len_b).floor().long().clamp(min=0)  # [B]
    lp_bound = length_penalty(max_len + 1, alpha)  # [B]
    sent_ids = torch.arange(batch, device=device)  # original index of each active sentence
    finished = _Finished(batch, nbest)
    fin_count = torch.zeros(batch, dtype=torch.long, device=device)
    kth_best = torch.full((batch,), float("-inf"), dtype=torch.double, device=device)

    state = model.init_state(batch * k)
    y_prev = torch.full((batch * k,), bos_id, dtype=torch.long, device=device)
    cum = torch.zeros(batch, k, dtype=dtype, device=device)
    cum[:, 1:] = float("-inf")  # all beams start identical: expand only beam 0 at step 0
    cov = torch.zeros(batch * k, src.size(0), dtype=dtype, device=device)  # accumulated attention
    hist = torch.zeros(batch * k, 0, dtype=torch.long, device=device)  # tokens so far

    for step in range(int(max_len.max().item()) + 1):
        ba = sent_ids.numel()
        log_probs, state, attn = model.step(y_prev, state, memory, short)  # [N,V|S], [N,Ts]
        vocab = log_probs.size(1)
        if beta != 0.0:
            cov += attn
        log_probs[:, pad_id] = float("-inf")
        log_probs[:, bos_id] = float("-inf")
        force = max_len <= step  # [ba]: last allowed step, only eos
        if bool(force.any()):
            only_eos = torch.ones(vocab, dtype=torch.bool, device=device)
            only_eos[eos_id] = False
            rows = force.repeat_interleave(k).unsqueeze(1)
            log_probs.masked_fill_(rows & only_eos, float("-inf"))
        cand = log_probs.add_(cum.view(-1, 1)).view(ba, k * vocab)  # cumulative log P
        top_s, top_i = cand.topk(2 * k, dim=1)  # [ba, 2k]
        beam = torch.div(top_i, vocab, rounding_mode="floor")
        tok = top_i - beam * vocab
        is_eos = tok == eos_id

        fin = is_eos[:, :k] & (top_s[:, :k] > float("-inf"))
        if bool(fin.any()):
            _finalize(
                fin, top_s, beam, step, k, alpha, beta, cov, real, hist, sent_ids,
                finished, fin_count, kth_best,
            )  # fmt: skip

        order = is_eos.to(torch.uint8).argsort(dim=1, stable=True)[:, :k]  # first k non-eos
        cum = top_s.gather(1, order)
        new_tok = tok.gather(1, order)
        if ids is not None:  # shortlist columns -> vocabulary ids (each sentence its own)
            new_tok = ids.gather(1, new_tok)
        reorder = beam.gather(1, order) + (torch.arange(ba, device=device) * k).unsqueeze(1)

        bound = cum[:, 0].double() / lp_bound
        done = (fin_count >= k) | (bound <= kth_best) | force
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            cum, new_tok, reorder = cum[keep], new_tok[keep], reorder[keep]
            memory = memory.index_select(keep)
            if ids is not None and short is not None:
                ids, short = ids[keep], (short[0][keep], short[1][keep])
            real, max_len, lp_bound = real[keep], max_len[keep], lp_bound[keep]
            sent_ids, fin_count, kth_best = sent_ids[keep], fin_count[keep], kth_best[keep]
        index = reorder.view(-1)
        state = model.reorder_state(state, index)
        hist = torch.cat((hist.index_select(0, index), new_tok.view(-1, 1)), dim=1)
        if beta != 0.0:
            cov = cov.index_select(0, index)
        y_prev = new_tok.view(-1)
    return finished.result()


def _finalize(
    fin: Tensor,
    top_s: Tensor,
    beam: Tensor,
    step: int,
    k: int,
    alpha: float,
    beta: float,
    cov: Tensor,
    real: Tensor,
    hist: Tensor,
    sent_ids: Tensor,
    finished: _Finished,
    fin_count: Tensor,
    kth_best: Tensor,
) -> None:
    """Record the eos candidates ``fin[ba,k]`` (columns of ``top_s``/``beam``) as finished;
    update ``fin_count``/``kth_best`` (per active sentence) in place.
    """
    s_idx, c_idx = fin.nonzero(as_tuple=True)
    rows = s_idx * k + beam[s_idx, c_idx]
    logprob = top_s[s_idx, c_idx].double()
    score = logprob / length_penalty(torch.tensor(step + 1.0), alpha).item()
    if beta != 0.0:
        score = score + coverage_penalty(cov[rows], real[s_idx], beta)
    tokens = hist[rows].tolist()
    stats: dict[int, tuple[int, float]] = {}
    for s, sent, toks, sc, lp in zip(
        s_idx.tolist(),
        sent_ids[s_idx].tolist(),
        tokens,
        score.tolist(),
        logprob.tolist(),
        strict=True,
    ):
        stats[s] = finished.add(sent, Hypothesis(toks, sc, lp))
    idx = torch.tensor(list(stats), dtype=torch.long, device=fin_count.device)
    fin_count[idx] = torch.tensor([c for c, _ in stats.values()], device=fin_count.device)
    kth_best[idx] = torch.tensor(
        [b for _, b in stats.values()], dtype=kth_best.dtype, device=kth_best.device
    )
