"""Vocabulary shortlist (nmt/decode/shortlist.py): built from co-occurrence, always holding the
special ids, and a greedy translation that lies inside it is unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data.batching import inference_batches
from data.corpus import load_split
from nmt.config import DecodeConfig
from nmt.decode.inference import load_for_inference
from nmt.decode.search import SearchSettings, beam_search
from nmt.decode.shortlist import Shortlist, build_shortlist
from nmt.train.run import train


def test_table_ranks_cooccurring_targets_by_dice() -> None:
    src = [[5, 6], [5, 7], [5, 6], [8]]
    tgt = [[9, 10], [9, 11], [9, 10], [12, 9]]
    sl = build_shortlist(src, tgt, 16, per_source=2, frequent=1)
    assert sl.table[6].tolist() == [10, 9]  # 6 co-occurs with 10 twice (dice 1.0), 9 (0.67)
    assert sl.table[8].tolist() == [12, 9]  # ties keep both; 12 only ever with 8
    assert sl.table[4].tolist() == [-1, -1]  # never seen
    assert sl.frequent.tolist() == [9]  # the most frequent target piece
    ids = sl.candidates(torch.tensor([[6, 8], [0, 0]]))  # two sentences, time-major
    assert ids[0][ids[0] >= 0].tolist() == [0, 1, 2, 3, 9, 10]
    assert ids[1][ids[1] >= 0].tolist() == [0, 1, 2, 3, 9, 12]
    assert ids.shape == (2, 6)
    back = Shortlist.from_state(sl.to_state())
    assert torch.equal(back.table, sl.table) and torch.equal(back.frequent, sl.frequent)


@pytest.fixture(scope="module")
def trained(tiny_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nmt.config import compose_config
    from tests.conftest import tiny_overrides

    tmp = tmp_path_factory.mktemp("sl")
    cfg = compose_config(
        tiny_overrides(tiny_corpus, tmp / "cache", tmp / "run")
        + ["train.max_steps=300"]  # emits words
    )
    train(cfg)
    return tmp / "run" / "checkpoints" / "last.pt"


def test_greedy_inside_the_shortlist_is_unchanged(
    trained: Path, tiny_corpus: dict[str, Path]
) -> None:
    model, tok = load_for_inference(str(trained), "none")
    pairs = load_split(tiny_corpus["train"], "en", "de")
    sl = build_shortlist(tok.encode([s for s, _ in pairs]), tok.encode([t for _, t in pairs]),
                         tok.vocab_size, per_source=5, frequent=5)  # fmt: skip
    test = load_split(tiny_corpus["test"], "en", "de")
    inside = 0
    for b in inference_batches(tok.encode([s for s, _ in test]), 200, 8):
        ids = sl.candidates(b.src)
        full = beam_search(
            model, b.src, b.src_len, SearchSettings(1, alpha=0.0, beta=0.0, max_len=(1.5, 5))
        )
        short = beam_search(
            model, b.src, b.src_len, SearchSettings(1, alpha=0.0, beta=0.0, max_len=(1.5, 5)), ids
        )
        for row, f, s in zip(ids, full, short, strict=True):
            allowed = set(row[row >= 0].tolist())
            assert {0, 1, 2, 3} <= allowed  # pad, unk, bos, eos always
            assert set(s[0].tokens) <= allowed
            if f[0].tokens and set(f[0].tokens) <= allowed:  # a real (non-empty) translation
                inside += 1
                assert s[0].tokens == f[0].tokens
    assert inside >= 5  # the check above ran on real cases


def test_checkpoint_shortlist_is_used_when_turned_on(trained: Path, tmp_path: Path) -> None:
    from nmt.checkpoint import files as ckpt_io
    from nmt.decode.translate import translate_lines

    ck = ckpt_io.load(trained)
    tiny = Shortlist(
        torch.full((ck["model"]["stages.0.embedding.weight"].size(0), 1), -1),
        torch.zeros(0, dtype=torch.long),
    )
    ck["shortlist"] = tiny.to_state()  # only the special ids: every output is empty
    path = tmp_path / "with_sl.pt"
    ckpt_io.save(path, ck)
    model, tok = load_for_inference(str(path), "none")
    d = DecodeConfig(
        beam_size=2, beta=0.0, max_len_b=5, batch_tokens=64, shortlist=True, prune_relative=0.0
    )
    lines = ["the cat runs", "a big dog"]
    assert [h[0][0] for h in translate_lines(model, tok, lines, d)] == ["", ""]
    d.shortlist = False
    full = translate_lines(model, tok, lines, d)
    plain, _ = load_for_inference(str(trained), "none")
    assert full == translate_lines(plain, tok, lines, d)


def test_nmt_translate_uses_the_shortlist_only_when_asked(
    trained: Path, tiny_corpus: dict[str, Path], tmp_path: Path
) -> None:
    """Through the real command: a checkpoint whose shortlist holds only the special ids
    translates to empty lines with ``decode.shortlist=true`` and to words without it."""
    import os
    import subprocess
    import sys

    from nmt.checkpoint import files as ckpt_io

    ck = ckpt_io.load(trained)
    vocab = ck["model"]["stages.0.embedding.weight"].size(0)
    ck["shortlist"] = Shortlist(
        torch.full((vocab, 1), -1), torch.zeros(0, dtype=torch.long)
    ).to_state()
    path = tmp_path / "with_sl.pt"
    ckpt_io.save(path, ck)
    code = (
        "import sys; from nmt.cli import translate_main; sys.argv[0] = 'nmt-translate'; "
        "translate_main()"
    )
    root = str(Path(__file__).resolve().parent.parent)
    lines = "".join(f"{src}\n" for src, _ in load_split(tiny_corpus["test"], "en", "de")[:4])
    outs = []
    for flag in ("true", "false"):
        r = subprocess.run(
            [sys.executable, "-c", code, f"checkpoint={path}", f"decode.shortlist={flag}",
             "decode.beam_size=1", "decode.dtype=fp32"],
            input=lines, capture_output=True, text=True, timeout=120,
            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": root},
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        outs.append(r.stdout.split("\n"))
    assert outs[0] == ["", "", "", "", ""]
    assert len(outs[1]) == 5 and any(line.strip() for line in outs[1])
