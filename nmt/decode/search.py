"""Batched beam search over any :class:`nmt.models.seq2seq.Seq2Seq` (sentences x beams in one
[B*K, ...] state), and greedy decoding.

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
(eos excluded; src_len includes the source eos), where eos is forced, or (d) pruning left it
no continuation. Finished sentences are dropped from the batch. pad and bos are never
generated.

Beam pruning (Freitag & Al-Onaizan 2017, "Beam Search Strategies for Neural Machine
Translation"): a continuation whose log P is below ``log P(best) + log(rp)`` (relative
threshold) or ``log P(best) - ap`` (absolute threshold), where best is the sentence's best
candidate of this step, does not go on, except that the best ``nbest - finished``
continuations always do (so ``nbest`` hypotheses still come back). Eos candidates among the
first K finish whatever their log P: a finished hypothesis costs no further step, and a
pruned eos would let a looping hypothesis run to the max length. With rp = 1 only the best
continuation goes on. A sentence then keeps 1..K hypothesis rows; rows are
grouped by sentence and the memory is laid out per row when the counts differ
(``Memory.for_rows``). With
pruning off every sentence keeps K rows (step 0: one row, the K beams would be identical).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from nmt.decode.sentinels import SentinelVocab
from nmt.models.seq2seq import Memory, Seq2Seq


@dataclass(frozen=True)
class Hypothesis:
    """A translation: ``tokens`` without bos/eos, GNMT ``score`` and raw ``logprob``."""

    tokens: list[int]
    score: float
    logprob: float


@dataclass(frozen=True)
class Pruning:
    """Beam pruning thresholds: ``relative`` rp in (0, 1] (drop a continuation whose
    probability is below rp times the best candidate's), ``absolute`` ap > 0 (drop one whose
    log-probability is more than ap below the best's); 0 turns either off."""

    relative: float = 0.0
    absolute: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.relative <= 1.0 or self.absolute < 0.0:
            raise ValueError(f"need 0 <= relative <= 1 and absolute >= 0, got {self}")

    def floor(self, best: Tensor) -> Tensor:
        """Lowest log P that continues, per sentence, from the best candidates' ``best[ba]``."""
        floor = torch.full_like(best, float("-inf"))
        if self.relative > 0.0:
            floor = torch.maximum(floor, best + math.log(self.relative))
        if self.absolute > 0.0:
            floor = torch.maximum(floor, best - self.absolute)
        return floor


@dataclass(frozen=True)
class SearchSettings:
    """Everything a search is told (``decode.*`` of the config, as
    :func:`nmt.decode.translate.search_settings` converts it): beam size ``K``, the GNMT
    length and coverage penalties ``alpha``/``beta``, the length cap
    ``floor(a * src_len + b)`` for ``max_len=(a, b)``, ``nbest`` hypotheses per sentence,
    :class:`Pruning`, and the special token ids."""

    beam_size: int = 5
    alpha: float = 0.6
    beta: float = 0.1
    max_len: tuple[float, int] = (1.5, 10)  # decode.max_len_a, decode.max_len_b
    nbest: int = 1
    prune: Pruning = Pruning()
    bos_id: int = 2
    eos_id: int = 3
    pad_id: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.nbest <= self.beam_size:
            raise ValueError(
                f"need 1 <= nbest <= beam_size, got nbest={self.nbest}, beam={self.beam_size}"
            )


GREEDY = SearchSettings(beam_size=1, alpha=0.0, beta=0.0)


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
    model: Seq2Seq,
    src: Tensor,
    src_len: Tensor,
    settings: SearchSettings = SearchSettings(),
    vocab_index: Tensor | None = None,
    sentinels: SentinelVocab | None = None,
) -> list[list[Hypothesis]]:
    """Translate ``src[Ts,B]`` (``src_len[B]``); returns per sentence up to ``settings.nbest``
    hypotheses sorted by score (best first). The model is put in eval mode for the search.
    ``vocab_index[B,S]`` (long, rows sorted, -1 = padding, the special ids in columns
    0..3): each sentence searches over its own target ids only (a shortlist,
    :mod:`nmt.decode.shortlist`). ``sentinels``: a source with masked placeables gets each of
    its sentinels exactly once (:mod:`nmt.decode.sentinels`).
    """
    if src.size(1) == 0:
        return []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return _search(model, src, src_len, settings, vocab_index, sentinels)
    finally:
        model.train(was_training)


def greedy(
    model: Seq2Seq, src: Tensor, src_len: Tensor, max_len_a: float = 1.5, max_len_b: int = 10
) -> list[list[int]]:
    """Greedy decoding (argmax each step) = :func:`beam_search` with beam 1 -> token lists."""
    settings = dataclasses.replace(GREEDY, max_len=(max_len_a, max_len_b))
    return [h[0].tokens for h in beam_search(model, src, src_len, settings)]


def _search(
    model: Seq2Seq,
    src: Tensor,
    src_len: Tensor,
    settings: SearchSettings,
    vocab_index: Tensor | None,
    sentinels: SentinelVocab | None = None,
) -> list[list[Hypothesis]]:
    """The search proper (inference mode). Active sentences: ``ba``; each has ``counts[s]``
    (1..k) hypothesis rows, grouped by sentence (``row_sent[N]``). With ``vocab_index`` the
    columns of the log-probabilities are shortlist positions; the special ids keep their
    columns and tokens are mapped back to vocabulary ids."""
    k, alpha, beta, nbest = settings.beam_size, settings.alpha, settings.beta, settings.nbest
    (max_len_a, max_len_b), prune = settings.max_len, settings.prune
    bos_id, eos_id, pad_id = settings.bos_id, settings.eos_id, settings.pad_id
    weight = model.input_embedding().weight
    device, dtype = weight.device, torch.promote_types(weight.dtype, torch.float32)
    src, src_len = src.to(device), src_len.to(device)
    ids = None if vocab_index is None else vocab_index.to(device)
    if ids is not None and max(pad_id, bos_id, eos_id) >= 4:
        raise ValueError("a shortlist keeps the special ids 0..3 in columns 0..3")
    short = None if ids is None else model.shortlisted(ids)  # (weight, bias)
    batch = src.size(1)
    memory = model.prepare_memory(model.encode(src, src_len), src_len)
    rows = _Rows(memory, short)
    rules = None if sentinels is None else sentinels.rows(src, src_len)  # per hypothesis row
    real = ~memory.mask  # [B, Ts]
    max_len = (max_len_a * src_len.double() + max_len_b).floor().long().clamp(min=0)  # [B]
    lp_bound = length_penalty(max_len + 1, alpha)  # [B]
    sent_ids = torch.arange(batch, device=device)  # original index of each active sentence
    finished = _Finished(batch, nbest)
    fin_count = torch.zeros(batch, dtype=torch.long, device=device)
    kth_best = torch.full((batch,), float("-inf"), dtype=torch.double, device=device)

    # step 0: one row per sentence (all k beams would be identical)
    counts = torch.ones(batch, dtype=torch.long, device=device)
    row_sent = torch.arange(batch, device=device)
    state = model.init_state(batch)
    y_prev = torch.full((batch,), bos_id, dtype=torch.long, device=device)
    cum = torch.zeros(batch, dtype=dtype, device=device)  # [N] cumulative log P per row
    cov = torch.zeros(batch, src.size(0), dtype=dtype, device=device)  # accumulated attention
    hist = torch.zeros(batch, 0, dtype=torch.long, device=device)  # tokens so far

    for step in range(int(max_len.max().item()) + 1):
        ba, n = sent_ids.numel(), row_sent.numel()
        mem, vocab_w = rows.inputs(counts, row_sent)
        log_probs, state, attn = model.step(y_prev, state, mem, vocab_w)  # [N,V|S], [N,Ts]
        vocab = log_probs.size(1)
        if beta != 0.0:
            cov += attn
        log_probs[:, pad_id] = float("-inf")
        log_probs[:, bos_id] = float("-inf")
        force = max_len <= step  # [ba]: last allowed step, only eos
        if rules is not None:
            rules.restrict(log_probs, row_sent, ids, force)
        if bool(force.any()):
            only_eos = torch.ones(vocab, dtype=torch.bool, device=device)
            only_eos[eos_id] = False
            log_probs.masked_fill_(force[row_sent].unsqueeze(1) & only_eos, float("-inf"))
        # top 2k of each sentence's rows x vocab: each row's top 2k, then the best of those
        # (a row's order does not change by adding its cumulative log P: added to the 2k only)
        width = min(2 * k, vocab)
        row_s, row_i = row_topk(log_probs, width)  # [N, width]
        row_s += cum.unsqueeze(1)
        offsets = counts.cumsum(0) - counts  # first row of each sentence
        grid = torch.full((ba, k, width), float("-inf"), dtype=row_s.dtype, device=device)
        grid[row_sent, torch.arange(n, device=device) - offsets[row_sent]] = row_s
        top_s, flat = grid.view(ba, k * width).topk(min(2 * k, k * width), dim=1)  # [ba, 2k]
        parent = (offsets.unsqueeze(1) + torch.div(flat, width, rounding_mode="floor")).clamp(
            max=n - 1
        )  # global row of each candidate's hypothesis (clamped for empty, -inf cells)
        tok = row_i[parent, flat % width]
        tok = torch.where(top_s > float("-inf"), tok, torch.full_like(tok, pad_id))  # empty cells
        is_eos = tok == eos_id
        floor = prune.floor(top_s[:, 0]).unsqueeze(1)  # [ba, 1]: pruned below

        # an eos candidate among the first k finishes whatever the pruning floor: finishing
        # costs no further step, and dropping it lets a looping hypothesis run to the cap
        fin = is_eos[:, :k] & (top_s[:, :k] > float("-inf"))
        if bool(fin.any()):
            _finalize(
                fin, top_s, parent, step, alpha, beta, cov, real, hist, sent_ids,
                finished, fin_count, kth_best,
            )  # fmt: skip

        order = is_eos.to(torch.uint8).argsort(dim=1, stable=True)[:, :k]  # first k non-eos
        cum_c, tok_c, par_c = top_s.gather(1, order), tok.gather(1, order), parent.gather(1, order)
        live = cum_c > float("-inf")
        need = (nbest - fin_count).clamp(min=0).unsqueeze(1)  # the best ones always go on
        keep = live & ((cum_c >= floor) | (torch.arange(k, device=device) < need))
        if ids is not None:  # shortlist columns -> vocabulary ids (each sentence its own)
            tok_c = ids.gather(1, tok_c)

        bound = cum_c[:, 0].double() / lp_bound  # cum_c[:, 0]: the best continuation
        done = (fin_count >= k) | (bound <= kth_best) | force | ~keep.any(dim=1)
        if bool(done.any()):
            alive = ~done
            if not bool(alive.any()):
                break
            keep &= alive.unsqueeze(1)
            sel = alive.nonzero().squeeze(1)
            rows.keep_sentences(sel)
            if ids is not None:
                ids = ids[sel]
            real, max_len, lp_bound = real[sel], max_len[sel], lp_bound[sel]
            sent_ids, fin_count, kth_best = sent_ids[sel], fin_count[sel], kth_best[sel]
            new_sent = alive.long().cumsum(0) - 1  # old active index -> new
        else:
            new_sent = torch.arange(ba, device=device)
        s_new, c_new = keep.nonzero(as_tuple=True)  # grouped by sentence, best first
        index = par_c[s_new, c_new]
        cum, y_prev = cum_c[s_new, c_new], tok_c[s_new, c_new]
        counts = keep.sum(dim=1)[keep.any(dim=1)]
        row_sent = new_sent[s_new]
        state = model.reorder_state(state, index)
        if rules is not None:
            rules.advance(index, y_prev)
        hist = torch.cat((hist.index_select(0, index), y_prev.view(-1, 1)), dim=1)
        if beta != 0.0:
            cov = cov.index_select(0, index)
    return finished.result()


def row_topk(x: Tensor, k: int, chunk: int = 100) -> tuple[Tensor, Tensor]:
    """``x.topk(k, dim=1)`` for ``x[N,V]`` (values sorted, the indices of equal values in any
    order), in two stages when ``chunk`` divides V into at least 2k chunks: each chunk's
    maximum, the k chunks with the largest ones (they hold the k largest values: a chunk without
    any of them has a maximum below each), then the top k of those k x chunk values: one pass of
    ``amax`` instead of a partial sort of every row (faster on the CPU;
    docs/results/translate/amx/profile_decode_int8_rp0.3.json).
    """
    n, v = x.shape
    if v % chunk or v // chunk < 2 * k or n == 0:
        return x.topk(k, dim=1)
    blocks = x.reshape(n, v // chunk, chunk)
    _, best = blocks.amax(dim=2).topk(k, dim=1)  # [N, k] chunk numbers
    cand = blocks.gather(1, best.unsqueeze(2).expand(n, k, chunk)).view(n, k * chunk)
    values, j = cand.topk(k, dim=1)
    return values, best.gather(1, torch.div(j, chunk, rounding_mode="floor")) * chunk + j % chunk


class _Rows:
    """The attention memory (and shortlisted output layer) of the active sentences, and their
    per-row layout when sentences have different numbers of rows (after pruning)."""

    def __init__(self, memory: Memory, short: tuple[Tensor, Tensor] | None) -> None:
        self.memory, self.short = memory, short
        self._cache: tuple[Tensor, Memory, tuple[Tensor, Tensor] | None] | None = None

    def keep_sentences(self, sel: Tensor) -> None:
        self.memory = self.memory.index_select(sel)
        if self.short is not None:
            self.short = (self.short[0][sel], self.short[1][sel])
        self._cache = None

    def inputs(
        self, counts: Tensor, row_sent: Tensor
    ) -> tuple[Memory, tuple[Tensor, Tensor] | None]:
        """``r`` rows for every sentence: the memory as is (the model broadcasts it over the
        rows); otherwise laid out for the rows of ``row_sent`` (``Memory.for_rows``) and the
        shortlisted output gathered per row (kept while the layout stays)."""
        if bool((counts == counts[0]).all()):
            return self.memory, self.short
        if self._cache is None or not torch.equal(self._cache[0], row_sent):
            short = self.short
            if short is not None:
                short = (short[0][row_sent], short[1][row_sent])
            self._cache = (row_sent, self.memory.for_rows(row_sent), short)
        return self._cache[1], self._cache[2]


def _finalize(
    fin: Tensor,
    top_s: Tensor,
    parent: Tensor,
    step: int,
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
    """Record the eos candidates ``fin[ba,k]`` (columns of ``top_s``/``parent``, the global
    row of the hypothesis each extends) as finished; update ``fin_count``/``kth_best`` (per
    active sentence) in place.
    """
    s_idx, c_idx = fin.nonzero(as_tuple=True)
    rows = parent[s_idx, c_idx]
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
