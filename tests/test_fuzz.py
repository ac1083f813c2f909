"""Property tests (hypothesis): nmt-translate never crashes on odd Unicode and always writes one
output line per input line; the tokenizer round-trips; batching keeps its invariants for random
length distributions. Plus a bounded-memory check of streaming translation (slow)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from data.batching import EOS_ID, PAD_ID, Batcher, inference_batches
from data.synthetic import WORDS
from nmt.config import DecodeConfig
from nmt.decode.inference import load_for_inference
from nmt.decode.translate import _LINE_BREAKS, translate_stream
from nmt.train.run import train
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_OK = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]

# Characters that trip up line handling and text processing.
NASTY = [
    "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\t", "\x00",
    "\x1b[31m", "\u200b", "\u200d", "\u200e", "\u200f", "\u202e", "\ufeff", "\ufffd", "\ufffe",
    "e\u0301\u0301\u0301", "\u0915\u094d\u0937", "שלום עולם", "مرحبا بالعالم", "👍🏽", "👨‍👩‍👧",
    "🇩🇪", "\U0010fffd", "ﬁ", "Ⅻ", "ǅ", "İ", "ß", "   ", "\t \t", "\u3000", "the cat runs",
]  # fmt: skip
line_text = st.lists(
    st.one_of(
        st.sampled_from(NASTY),
        st.text(
            st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)), max_size=30
        ),
    ),
    max_size=6,
).map("".join)


@pytest.fixture(scope="module")
def model_tok(tiny_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    from nmt.config import compose_config

    tmp = tmp_path_factory.mktemp("fuzz_run")
    cfg = compose_config(
        tiny_overrides(tiny_corpus, tmp / "cache", tmp / "run") + ["train.max_steps=20"]
    )
    train(cfg)
    model, tok = load_for_inference(str(tmp / "run" / "checkpoints" / "last.pt"), "none")
    return model, tok, tmp / "run" / "checkpoints" / "last.pt"


def Decode(beam: int = 2, nbest: int = 1) -> DecodeConfig:  # noqa: N802
    return DecodeConfig(
        beam_size=beam,
        nbest=nbest,
        max_len_a=0.3,
        max_len_b=4,
        batch_tokens=512,
        prune_relative=0.0,
    )


def expected_lines(data: bytes) -> int:
    """Lines as ``for line in file`` sees them: split on b'\\n' only."""
    if not data:
        return 0
    return data.count(b"\n") + (not data.endswith(b"\n"))


def run_stream(model_tok: Any, data: bytes, dcfg: Decode) -> str:
    model, tok, _ = model_tok
    out = io.StringIO(newline="")
    n = translate_stream(model, tok, io.BytesIO(data), "<fuzz>", out, dcfg)
    assert n == expected_lines(data)
    return out.getvalue()


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE_OK)
@given(lines=st.lists(line_text, max_size=6), trailing_newline=st.booleans())
@example(lines=list(NASTY), trailing_newline=True)
@example(lines=["\r\n".join(NASTY)], trailing_newline=False)  # CRLF inside one line
@example(lines=["", "", "   "], trailing_newline=True)
@example(lines=["the cat " * 400], trailing_newline=False)  # longer than one chunk
def test_translate_gives_one_line_per_input_line(
    model_tok: Any, lines: list[str], trailing_newline: bool
) -> None:
    text = "\n".join(lines) + ("\n" if trailing_newline and lines else "")
    data = text.encode("utf-8")
    got = run_stream(model_tok, data, Decode())
    n = expected_lines(data)
    assert got.count("\n") == n and (not n or got.endswith("\n"))
    assert len(got.splitlines()) == n  # no other line breaks (\r, \x85, \u2028 ...) inside
    assert not any(c in line for line in got.split("\n") for c in _LINE_BREAKS)


@settings(max_examples=30, deadline=None, suppress_health_check=FIXTURE_OK)
@given(texts=st.lists(line_text, min_size=1, max_size=5), nbest=st.sampled_from([1, 2]))
@example(texts=list(_LINE_BREAKS + "\t"), nbest=2)
def test_translations_with_line_breaks_stay_one_line(
    model_tok: Any, monkeypatch: pytest.MonkeyPatch, texts: list[str], nbest: int
) -> None:
    """Whatever text the model produces (a vocabulary can hold \\r, U+2028 ...), the writer
    keeps it on one line (and one TSV field)."""
    import nmt.decode.translate as tr

    def fake(model: Any, tok: Any, lines: Any, dcfg: Any, *rest: Any) -> Any:
        return [[(texts[i % len(texts)], -1.0)] * nbest for i in range(len(lines))]

    monkeypatch.setattr(tr, "translate_lines", fake)
    data = ("x\n" * len(texts)).encode()
    out = run_stream(model_tok, data, Decode(beam=2, nbest=nbest))
    rows = out.split("\n")[int(nbest > 1) : -1]
    assert len(rows) == len(texts) * nbest and len(out.splitlines()) == len(rows) + (nbest > 1)
    if nbest > 1:
        assert all(len(r.split("\t")) == 4 for r in rows)


@settings(max_examples=15, deadline=None, suppress_health_check=FIXTURE_OK)
@given(lines=st.lists(line_text, min_size=1, max_size=4))
@example(lines=list(NASTY[:12]))
def test_nbest_tsv_stays_four_columns(model_tok: Any, lines: list[str]) -> None:
    data = ("\n".join(lines) + "\n").encode("utf-8")
    rows = run_stream(model_tok, data, Decode(beam=2, nbest=2)).split("\n")
    assert rows[0] == "line\trank\tscore\thypothesis" and rows[-1] == ""
    fields = [r.split("\t") for r in rows[1:-1]]
    assert all(len(f) == 4 for f in fields)
    assert sorted({int(f[0]) for f in fields}) == list(range(1, len(lines) + 1))
    assert all(1 <= int(f[1]) <= 2 for f in fields)


@settings(max_examples=30, deadline=None, suppress_health_check=FIXTURE_OK)
@given(data=st.binary(max_size=300))
def test_invalid_bytes_replace_mode_never_crashes(model_tok: Any, data: bytes) -> None:
    """``data.on_bad_utf8=replace``: any byte string is translated line for line."""
    model, tok, _ = model_tok
    out = io.StringIO(newline="")
    n = translate_stream(model, tok, io.BytesIO(data), "<fuzz>", out, Decode(beam=1), "replace")
    assert n == expected_lines(data) == out.getvalue().count("\n")
    assert len(out.getvalue().splitlines()) == n


def test_cli_streams_nasty_lines_under_c_locale(model_tok: Any) -> None:
    """The real command, stdin to stdout, with LC_ALL=C: one output line per input line."""
    data = ("\n".join(NASTY) + "\n").encode("utf-8")
    code = "import sys; from nmt.cli import translate_main as m; sys.argv[0] = 'nmt-translate'; m()"
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    env.pop("PYTHONIOENCODING", None)
    r = subprocess.run(
        [sys.executable, "-c", code, f"checkpoint={model_tok[2]}", "decode=greedy",
         "decode.max_len_a=0.3", "decode.max_len_b=4", "train.threads=1"],
        input=data, capture_output=True, timeout=120, env=env, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    out = r.stdout.decode("utf-8")
    assert out.count("\n") == len(NASTY) and len(out.splitlines()) == len(NASTY)


# ----------------------------------------------------------------------------- tokenizer
VOCAB_WORDS = sorted(set(WORDS) | set(WORDS.values()))


@settings(max_examples=200, deadline=None, suppress_health_check=FIXTURE_OK)
@given(words=st.lists(st.sampled_from(VOCAB_WORDS), min_size=0, max_size=40))
def test_tokenizer_round_trips_text_of_its_alphabet(model_tok: Any, words: list[str]) -> None:
    tok = model_tok[1]
    text = " ".join(words)
    ids = tok.encode([text])[0]
    assert tok.decode([ids]) == [text]
    assert all(3 < i < tok.vocab_size or i == tok.unk_id for i in ids)


@settings(max_examples=300, deadline=None, suppress_health_check=FIXTURE_OK)
@given(text=line_text)
def test_tokenizer_never_crashes_and_is_stable(model_tok: Any, text: str) -> None:
    """Any text encodes to valid, non-special ids; decoding is a fixed point after one pass."""
    tok = model_tok[1]
    ids = tok.encode([text])[0]
    assert all(0 <= i < tok.vocab_size and i not in (0, 2, 3) for i in ids)
    once = tok.decode([ids])[0]
    again = tok.decode(tok.encode([once]))[0]
    assert tok.encode([again]) == tok.encode([once])


# ------------------------------------------------------------------------------ batching
lengths = st.lists(st.integers(0, 120), min_size=1, max_size=60)


@settings(max_examples=200, deadline=None)
@given(lens=lengths, budget=st.integers(1, 3000), pad=st.integers(1, 16))
def test_inference_batches_invariants(lens: list[int], budget: int, pad: int) -> None:
    seqs = [[4 + (i + j) % 50 for j in range(n)] for i, n in enumerate(lens)]
    batches = inference_batches(seqs, budget, pad)
    seen: list[int] = []
    previous_ts = None
    for b in batches:
        ts, size = b.src.shape
        assert ts % pad == 0 and (ts * size <= budget or size == 1)
        assert previous_ts is None or ts <= previous_ts  # longest first
        previous_ts = ts
        for col, i in enumerate(b.indices):
            n = len(seqs[i])
            assert int(b.src_len[col]) == n + 1 <= ts
            assert b.src[:n, col].tolist() == seqs[i] and int(b.src[n, col]) == EOS_ID
            assert (b.src[n + 1 :, col] == PAD_ID).all()
        seen += b.indices
    assert sorted(seen) == list(range(len(seqs)))


@settings(max_examples=80, deadline=None)
@given(
    src_lens=lengths,
    data=st.data(),
    budget=st.integers(16, 2000),
    pad=st.sampled_from([1, 2, 8]),
    multiple=st.sampled_from([1, 2, 4]),
    merge=st.booleans(),
)
def test_training_batches_invariants(
    src_lens: list[int], data: Any, budget: int, pad: int, multiple: int, merge: bool
) -> None:
    src_lens = [max(1, n) for n in src_lens]
    tgt_lens = data.draw(st.lists(st.integers(1, 120), min_size=len(src_lens),
                                  max_size=len(src_lens)))  # fmt: skip
    src = [[4 + (i + j) % 40 for j in range(n)] for i, n in enumerate(src_lens)]
    tgt = [[5 + (i * j) % 40 for j in range(n)] for i, n in enumerate(tgt_lens)]
    b = Batcher(src, tgt, budget, pad, multiple, seed=3, merge_tails=merge)
    shapes = set(b.shapes())
    first: list[list[int]] = []
    for epoch in range(2):
        seen: list[int] = []
        for batch in b:
            ts, tt, size = batch.shape
            assert batch.shape in shapes and ts % pad == 0 and tt % pad == 0
            assert size % multiple == 0 and (max(ts, tt) * size <= budget or size == multiple)
            assert batch.ntokens == int(batch.tgt_len.sum())
            rows = batch.indices.tolist()
            for col, i in enumerate(rows):
                if i < 0:  # filler row
                    assert int(batch.src_len[col]) == 1 and int(batch.tgt_len[col]) == 0
                    assert (batch.tgt_out[:, col] == PAD_ID).all()
                    continue
                n, m = len(src[i]), len(tgt[i])
                assert batch.src[:n, col].tolist() == src[i] and int(batch.src[n, col]) == EOS_ID
                assert batch.tgt_out[:m, col].tolist() == tgt[i]
                assert int(batch.tgt_out[m, col]) == EOS_ID and int(batch.tgt_in[0, col]) == 2
            seen += [i for i in rows if i >= 0]
            if epoch == 0:
                first.append(rows)
        assert sorted(seen) == list(range(len(src)))  # every pair exactly once per epoch
    assert b.epoch == 2
    # resuming mid-epoch from state_dict replays the same remaining batches
    again = Batcher(src, tgt, budget, pad, multiple, seed=3, merge_tails=merge)
    k = len(first) // 2
    for _ in range(k):
        next(iter(again))
    resumed = Batcher(src, tgt, budget, pad, multiple, seed=3, merge_tails=merge)
    resumed.load_state_dict(again.state_dict())
    assert [x.indices.tolist() for x in resumed] == first[k:]


# -------------------------------------------------------------------------------- memory
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_streaming_translation_memory_is_flat(tmp_path: Path) -> None:
    """2k vs 20k lines through the real command: the peak RSS barely moves (streaming)."""
    from scripts.bench import translate_memory

    rows = translate_memory.run([2_000, 20_000], workdir=tmp_path, verbose=False)
    small, large = rows
    assert small["lines_out"] == 2_000 and large["lines_out"] == 20_000
    assert large["peak_rss_mb"] - small["peak_rss_mb"] < 40, rows
