"""Beam pruning and the ragged beam layout against an independent, unbatched reference search."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor

from nmt.decode.search import (
    Hypothesis,
    Pruning,
    SearchSettings,
    beam_search,
    coverage_penalty,
    length_penalty,
)
from nmt.models.gnmt import GNMT
from tests.test_search import BOS, EOS, LENGTHS, PAD, V, column, make_src, sequence_logprob, tiny

NEG = float("-inf")


def reference_beam(
    model: GNMT, src: Tensor, src_len: Tensor, k: int, alpha: float, beta: float,
    a: float, b: int, nbest: int, prune: Pruning,
) -> list[Hypothesis]:  # fmt: skip
    """One sentence; hypotheses are Python tuples, each row through ``model.step`` alone.
    The rules are the module docstring's of :mod:`nmt.decode.search`, written out plainly."""
    with torch.no_grad():
        memory = model.prepare_memory(model.encode(src, src_len), src_len)
        real = torch.ones(1, src.size(0), dtype=torch.bool)
        max_len = math.floor(a * int(src_len[0]) + b)
        beams = [
            ([], 0.0, model.init_state(1), torch.zeros(1, src.size(0), dtype=src_dtype(model)))
        ]
        done: list[Hypothesis] = []
        for step in range(max_len + 1):
            cands = []
            for toks, cum, state, cov in beams:
                y = torch.tensor([toks[-1] if toks else BOS])
                logp, new_state, attn = model.step(y, state, memory)
                logp = logp[0].clone()
                logp[PAD] = logp[BOS] = NEG
                if step == max_len:
                    logp[torch.arange(V) != EOS] = NEG
                for t in range(V):
                    if logp[t] > NEG:
                        cands.append((cum + float(logp[t]), t, toks, new_state, cov + attn))
            cands.sort(key=lambda c: -c[0])
            cands = cands[: 2 * k]
            floor = float(prune.floor(torch.tensor([cands[0][0]], dtype=torch.double))[0])
            for score, t, toks, _, cov in cands[:k]:
                if t == EOS:  # a finished hypothesis finishes, pruned or not
                    norm = score / float(length_penalty(torch.tensor(step + 1), alpha))
                    norm += float(coverage_penalty(cov, real, beta)[0]) if beta else 0.0
                    done.append(Hypothesis(list(toks), norm, score))
            cont = [c for c in cands if c[1] != EOS][:k]
            kept = [c for i, c in enumerate(cont) if c[0] >= floor or i < nbest - len(done)]
            done.sort(key=lambda h: -h.score)
            lp_max = float(length_penalty(torch.tensor(max_len + 1), alpha))
            bound = cont[0][0] / lp_max if cont else NEG
            kth = done[nbest - 1].score if len(done) >= nbest else NEG
            if len(done) >= k or bound <= kth or step == max_len or not kept:
                break
            beams = [(toks + [t], score, state, cov) for score, t, toks, state, cov in kept]
        return done[:nbest]


def src_dtype(model: GNMT) -> torch.dtype:
    return model.embed_stage.embedding.weight.dtype


def count_rows(model: GNMT, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of hypothesis rows of every ``model.step`` call from now on."""
    rows: list[int] = []
    step = model.step

    def counting_step(y: Tensor, *args: object) -> object:
        rows.append(y.numel())
        return step(y, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(model, "step", counting_step)
    return rows


PRUNINGS = [Pruning(), Pruning(0.6, 2.5), Pruning(0.3, 0.0), Pruning(0.0, 1.0)]


@pytest.mark.parametrize("prune", PRUNINGS, ids=["off", "rp0.6_ap2.5", "rp0.3", "ap1"])
@pytest.mark.parametrize("k,nbest,seed", [(3, 2, 0), (5, 1, 1), (4, 3, 2)])
def test_batched_search_equals_unbatched_reference(
    prune: Pruning, k: int, nbest: int, seed: int
) -> None:
    model = tiny(seed, init_range=1.0).double()
    src, src_len = make_src(LENGTHS, seed=seed + 20)
    out = beam_search(
        model, src, src_len, SearchSettings(k, beta=0.2, max_len=(1.5, 3), nbest=nbest, prune=prune)
    )
    for b in range(len(LENGTHS)):
        s, sl = column(src, src_len, b)
        ref = reference_beam(model, s, sl, k, 0.6, 0.2, 1.5, 3, nbest, prune)
        assert [h.tokens for h in out[b]] == [h.tokens for h in ref], f"sentence {b}"
        for x, y in zip(out[b], ref, strict=True):
            assert x.score == pytest.approx(y.score, abs=1e-9)
            assert x.logprob == pytest.approx(y.logprob, abs=1e-9)


@pytest.mark.parametrize("seed,src_seed", [(4, 7), (1, 51), (5, 55)])
def test_relative_threshold_one_continues_one_row(
    seed: int, src_seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rp = 1 continues only the best candidate: one row per active sentence at every step
    (eos candidates still finish), and the result is the reference search's."""
    model = tiny(seed, init_range=1.0).double()
    src, src_len = make_src(LENGTHS, seed=src_seed)
    rows = count_rows(model, monkeypatch)
    rp1 = Pruning(1.0, 0.0)
    out = beam_search(model, src, src_len, SearchSettings(5, beta=0.0, max_len=(1.5, 3), prune=rp1))
    assert rows[0] == len(LENGTHS) and all(0 < n <= len(LENGTHS) for n in rows)
    monkeypatch.undo()
    for b in range(len(LENGTHS)):
        s, sl = column(src, src_len, b)
        ref = reference_beam(model, s, sl, 5, 0.6, 0.0, 1.5, 3, 1, rp1)
        assert out[b][0].tokens == ref[0].tokens, f"sentence {b}"


@pytest.mark.parametrize("seed", [1, 4])
def test_pruning_still_returns_nbest_hypotheses(seed: int) -> None:
    model = tiny(seed, init_range=2.0).double()
    src, src_len = make_src(LENGTHS, seed=seed + 3)
    out = beam_search(model, src, src_len, SearchSettings(5, nbest=5, prune=Pruning(0.2, 0.0)))
    assert [len(h) for h in out] == [5] * len(LENGTHS)


def test_pruned_scores_are_true_model_scores() -> None:
    model = tiny(5, init_range=1.0).double()
    src, src_len = make_src(LENGTHS, seed=8)
    out = beam_search(
        model,
        src,
        src_len,
        SearchSettings(5, beta=0.0, max_len=(1.5, 3), nbest=2, prune=Pruning(0.5, 2.0)),
    )
    for b, hyps in enumerate(out):
        s, sl = column(src, src_len, b)
        for h in hyps:
            assert h.logprob == pytest.approx(sequence_logprob(model, s, sl, h.tokens), abs=1e-9)


def test_pruning_evaluates_fewer_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny(6, init_range=1.0).double()
    src, src_len = make_src(LENGTHS * 3, seed=9)
    rows = count_rows(model, monkeypatch)
    full = beam_search(model, src, src_len, SearchSettings(5, beta=0.0, max_len=(1.5, 3)))
    full_rows, rows[:] = sum(rows), []
    beam_search(
        model, src, src_len, SearchSettings(5, beta=0.0, max_len=(1.5, 3), prune=Pruning(0.6, 2.5))
    )
    assert len(full) == 15 and sum(rows) < full_rows


def test_shortlists_with_pruning_equal_each_sentence_alone() -> None:
    """Every sentence its own shortlist (different lengths, -1 padding): the batched, pruned
    search (rows gathered per sentence) equals decoding each sentence alone with its list."""
    model = tiny(7, init_range=1.0).double()
    src, src_len = make_src(LENGTHS, seed=10)
    g = torch.Generator().manual_seed(3)
    rows = [
        sorted({0, 1, 2, 3, *torch.randperm(V - 4, generator=g)[: 8 + 3 * b].add(4).tolist()})
        for b in range(len(LENGTHS))
    ]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [-1] * (width - len(r)) for r in rows])
    prune = Pruning(0.6, 2.5)
    both = beam_search(
        model,
        src,
        src_len,
        SearchSettings(4, beta=0.2, max_len=(1.5, 3), nbest=2, prune=prune),
        ids,
    )
    for b, row in enumerate(rows):
        s, sl = column(src, src_len, b)
        alone = beam_search(
            model,
            s,
            sl,
            SearchSettings(4, beta=0.2, max_len=(1.5, 3), nbest=2, prune=prune),
            torch.tensor([row]),
        )[0]
        assert [h.tokens for h in both[b]] == [h.tokens for h in alone]
        assert [h.score for h in both[b]] == pytest.approx([h.score for h in alone], abs=1e-9)
        assert all(set(h.tokens) <= set(row) for h in alone)


@pytest.mark.parametrize("rel,ab", [(-0.1, 0.0), (1.5, 0.0), (0.5, -1.0)])
def test_bad_thresholds_are_rejected(rel: float, ab: float) -> None:
    with pytest.raises(ValueError, match="relative"):
        Pruning(rel, ab)


def _translate(args: list[str], lines: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys; from nmt.cli import translate_main; sys.argv[0] = 'nmt-translate'; "
        "translate_main()"
    )
    root = str(Path(__file__).resolve().parent.parent)
    return subprocess.run(
        [sys.executable, "-c", code, "checkpoint=gnmt-debian-en-de", "decode.dtype=fp32", *args],
        input=lines, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": root},
    )  # fmt: skip


def test_nmt_translate_with_pruning() -> None:
    """Through the real command and the shipped model: beam 1 with pruning is greedy, lines in
    == lines out; a threshold out of range is a one-line error, exit 2."""
    lines = (
        "This package contains the documentation.\n\nOpen the file menu and choose Save.\n"
        "A library for reading and writing images.\n"
    )
    greedy_out = _translate(["decode=greedy"], lines)
    pruned = _translate(["decode.beam_size=1", "decode.prune_relative=0.5"], lines)
    assert greedy_out.returncode == 0 and pruned.returncode == 0, pruned.stderr
    assert pruned.stdout == greedy_out.stdout
    assert len(pruned.stdout.split("\n")) == 5 and pruned.stdout.split("\n")[1] == ""
    bad = _translate(["decode.prune_relative=1.5"], lines)
    assert bad.returncode == 2
    assert (
        bad.stderr.strip()
        .splitlines()[-1]
        .endswith("decode.prune_relative=1.5: must be between 0 (off) and 1")
    )
