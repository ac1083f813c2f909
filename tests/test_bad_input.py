"""Bad input: one test per row of RELIABILITY.md's table (cases that older tests already cover
are named there). Every user error gives exit status 2 and exactly one stderr line
``nmt-<cmd>: error: ...`` naming what is wrong, no traceback, nothing partial written and
nothing the user had overwritten. Also the safety checks: crafted pickles are refused (and
not run), no network port is opened by single-device commands, config paths are never run.

The commands run in-process (``nmt.cli.*_main`` with ``sys.argv`` set: the same precheck, Hydra
app and error guard as the installed scripts); ``test_cli.py`` and ``test_translate_eval.py``
check the real process exit status of each command once.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from nmt.checkpoint import files as ckpt_io
from nmt.config import compose, compose_config
from nmt.train.run import train
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parent.parent
COMMAND = {
    "prepare_main": "nmt-prepare",
    "train_main": "nmt-train",
    "translate_main": "nmt-translate",
    "eval_main": "nmt-eval",
}


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err


@pytest.fixture
def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """``run_main("translate_main", "k=v", ...) -> Result`` (exit code, stdout, stderr)."""
    from hydra.core.global_hydra import GlobalHydra

    import nmt.cli as cli

    def run(entry: str, *args: str) -> Result:
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        monkeypatch.setattr(sys, "argv", [COMMAND[entry], *args])
        monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
        capsys.readouterr()
        code = 0
        try:
            getattr(cli, entry)()
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        finally:  # undo Hydra's logging set-up and global state
            root.handlers[:] = handlers
            root.setLevel(level)
            GlobalHydra.instance().clear()
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


@pytest.fixture
def run_cmd(capsys: pytest.CaptureFixture[str]) -> Any:
    """Faster ``run_main`` for valid configs: compose, then the CLI's error guard around the
    command function (what ``*_main`` does after Hydra; ``hydra.run.dir`` -> train.out_dir)."""
    from nmt.cli import _guarded
    from nmt.decode.command import translate_cli
    from nmt.decode.evaluate import eval_cli
    from nmt.prepare.command import prepare

    commands = {"prepare_main": prepare, "train_main": train, "translate_main": translate_cli,
                "eval_main": eval_cli}  # fmt: skip

    def run(entry: str, *args: str) -> Result:
        overrides = [a.replace("hydra.run.dir=", "train.out_dir=", 1) for a in args]
        cfg = compose(overrides, "config" if entry == "train_main" else "tool")
        capsys.readouterr()
        code = 0
        try:
            _guarded(commands[entry], cfg, COMMAND[entry])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


VIA_CLI = {"unknown_data_option", "unknown_key", "wrong_type", "unknown_option"}


@pytest.fixture
def runner(request: pytest.FixtureRequest, run_main: Any, run_cmd: Any) -> Any:
    """The full command line for config mistakes (caught before Hydra runs), else run_cmd."""
    return run_main if request.node.callspec.id in VIA_CLI else run_cmd


def assert_user_error(r: Result, entry: str, *needles: str) -> str:
    """Exit 2, exactly one stderr line ``nmt-<cmd>: error: ...`` holding every needle."""
    assert r.code == 2, (r.code, r.err[-2000:])
    assert "Traceback" not in r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    assert lines[0].startswith(f"{COMMAND[entry]}: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob(".*.tmp")]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def trained(tiny_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with a 2-step checkpoint (``checkpoints/last.pt``)."""
    tmp = tmp_path_factory.mktemp("bad_input_run")
    cfg = compose_config(
        tiny_overrides(tiny_corpus, tmp / "cache", tmp / "run") + ["train.max_steps=2"]
    )
    train(cfg)
    return tmp / "run"


@pytest.fixture
def ckpt(trained: Path) -> Path:
    return trained / "checkpoints" / "last.pt"


def train_args(corpus: dict[str, Path], cache: Path, run_dir: Path, *extra: str) -> list[str]:
    """Command-line arguments of a tiny nmt-train run in ``run_dir``."""
    base = [a for a in tiny_overrides(corpus, cache, run_dir) if not a.startswith("train.out_dir")]
    return [*base, "train.max_steps=2", f"hydra.run.dir={run_dir}", *extra]


def other_vocabulary(ck: dict[str, Any]) -> bytes:
    """A different sentencepiece model (other text, smaller vocabulary)."""
    from data.tokenizer import train_model

    texts = [f"zeile {i} mit anderen wörtern quux{i % 7} blorp" for i in range(200)]
    proto = train_model(texts, vocab_size=40, seed=3)
    assert proto != ck["spm"]
    return proto


class Payload:
    """A pickle that, if ever unpickled without ``weights_only``, creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


# ============================================================================ nmt-prepare
def prepare_args(corpus: dict[str, Path], train_path: Path, cache: Path) -> list[str]:
    return [
        "data=files",
        f"data.train={train_path}",
        f"data.dev={corpus['dev']}",
        f"data.test={corpus['test']}",
        "data.vocab_size=60",
        f"data.cache_dir={cache}",
    ]


BAD_CORPORA: list[tuple[str, str, bytes, tuple[str, ...]]] = [
    # (case id, file name, content, needles in the error line)
    (
        "non_utf8",
        "train.tsv",
        b"en\tde\nthe cat\tdie \xff Katze\n",
        ("train.tsv", "line 2", "invalid UTF-8 byte 0xff", "on_bad_utf8=replace"),
    ),
    (
        "binary_file",
        "train.tsv",
        b"\x7fELF\x02\x01\x01\x00" + bytes(range(255, -1, -1)) * 4,
        ("train.tsv", "line 1", "invalid UTF-8"),
    ),
    ("not_gzip", "train.tsv.gz", b"PK\x03\x04 this is not gzip data", ("train.tsv.gz", "gzip")),
    ("empty_file", "train.tsv", b"", ("train.tsv", "is empty")),
    (
        "header_without_languages",
        "train.tsv",
        b"english\tgerman\nthe\tdas\n",
        ("line 1", "lack language(s) ['en', 'de']"),
    ),
    (
        "wrong_field_count",
        "train.tsv",
        b"en\tde\nthe cat\tdie Katze\nno tab here\n",
        ("line 3", "expected 2 tab-separated fields"),
    ),
    (
        "carriage_return_inside_line",
        "train.tsv",
        b"en\tde\nthe\rcat\tdie Katze\n",
        ("line 2", "carriage return"),
    ),
    ("unknown_extension", "train.csv", b"en,de\nthe,das\n", ("train.csv", "unknown extension")),
    ("broken_jsonl", "train.jsonl", b'{"en": "the", "de": \n', ("train.jsonl", "as json")),
]


@pytest.mark.parametrize(
    ("name", "content", "needles"),
    [pytest.param(n, c, k, id=i) for i, n, c, k in BAD_CORPORA],
)
def test_prepare_bad_corpus_file(
    run_cmd: Any,
    tiny_corpus: dict[str, Path],
    tmp_path: Path,
    name: str,
    content: bytes,
    needles: tuple[str, ...],
) -> None:
    bad = tmp_path / name
    bad.write_bytes(content)
    r = run_cmd("prepare_main", *prepare_args(tiny_corpus, bad, tmp_path / "cache"))
    assert_user_error(r, "prepare_main", *needles)
    assert not list(tmp_path.rglob("*.model"))  # no tokenizer trained from a bad corpus
    assert bad.read_bytes() == content


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        pytest.param(
            ["data.tgt_lang=en"], ("src_lang and tgt_lang are both 'en'",), id="same_lang"
        ),
        pytest.param(["data.vocab_size=4"], ("vocab_size=4 is too small",), id="vocab_too_small"),
        pytest.param(["data.on_bad_utf8=ignore"], ("on_bad_utf8='ignore'",), id="bad_utf8_mode"),
        pytest.param(["data.train=null"], ("needs data.train",), id="files_without_train"),
        pytest.param(["data=nope"], ("data/nope", "files"), id="unknown_data_option"),
        pytest.param(
            ["data.vocab=60"], ("data.vocab", "did you mean data.vocab_size?"), id="unknown_key"
        ),
    ],
)
def test_prepare_bad_settings(
    runner: Any,
    tiny_corpus: dict[str, Path],
    tmp_path: Path,
    extra: list[str],
    needles: tuple[str, ...],
) -> None:
    args = prepare_args(tiny_corpus, tiny_corpus["train"], tmp_path / "cache") + extra
    r = runner("prepare_main", *args)
    assert_user_error(r, "prepare_main", *needles)
    assert not list(tmp_path.rglob("*.model"))


def test_prepare_one_megabyte_line_is_dropped_not_fatal(
    run_cmd: Any, tiny_corpus: dict[str, Path], tmp_path: Path
) -> None:
    """A 1 MB sentence pair is accepted input: the subword length filter drops it."""
    words = ["the", "cat", "dog", "house", "red", "runs", "window", "menu", "file"]
    rows = [f"{a} {b} {c}\t{b} {c} {a} x" for a in words[:5] for b in words for c in words[:2]]
    huge, huge_de = "the big cat " * 87382, "die große Katze " * 62500  # ~1 MB each
    train_tsv = tmp_path / "train.tsv"
    with train_tsv.open("w", encoding="utf-8") as f:
        f.write("en\tde\n" + "\n".join(rows[:40]) + f"\n{huge}\t{huge_de}\n" + "\n".join(rows[40:]))
    assert train_tsv.stat().st_size > 2_000_000
    r = run_cmd("prepare_main", *prepare_args(tiny_corpus, train_tsv, tmp_path / "cache"))
    assert r.code == 0, r.err[-2000:]
    summary = json.loads(r.out.strip().splitlines()[-1])
    assert summary["pairs"]["train"] == len(set(rows))  # every short pair kept, the huge one not


# ============================================================================== nmt-train
def test_train_impossible_placement(
    run_cmd: Any, tiny_corpus: dict[str, Path], tmp_path: Path
) -> None:
    args = train_args(tiny_corpus, tmp_path / "cache", tmp_path / "run", "parallel=pipe8")
    r = run_cmd("train_main", *args)
    assert_user_error(r, "train_main", "more pipeline ranks than stages", "pp=8", "stages=5")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_train_gnmt_placement_of_a_transformer(
    run_cmd: Any, tiny_corpus: dict[str, Path], tmp_path: Path
) -> None:
    args = train_args(tiny_corpus, tmp_path / "cache", tmp_path / "run", "parallel=pipe2",
                      "model=transformer_small", "parallel.placement=gnmt")  # fmt: skip
    r = run_cmd("train_main", *args)
    assert_user_error(r, "train_main", "parallel.placement=gnmt", "model.arch=transformer")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_train_balance_that_does_not_sum(
    run_cmd: Any, tiny_corpus: dict[str, Path], tmp_path: Path
) -> None:
    args = train_args(tiny_corpus, tmp_path / "cache", tmp_path / "run", "parallel=pipe2",
                      "parallel.balance=[1,1]")  # fmt: skip
    r = run_cmd("train_main", *args)
    assert_user_error(r, "train_main", "balance")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_train_cuda_without_gpu(run_cmd: Any, tiny_corpus: dict[str, Path], tmp_path: Path) -> None:
    args = train_args(tiny_corpus, tmp_path / "cache", tmp_path / "run", "train.device=cuda")
    assert_user_error(run_cmd("train_main", *args), "train_main", "no CUDA device")


def test_train_resume_missing_checkpoint(
    run_cmd: Any, tiny_corpus: dict[str, Path], tmp_path: Path
) -> None:
    args = train_args(tiny_corpus, tmp_path / "cache", tmp_path / "run",
                      f"train.resume={tmp_path / 'nope.pt'}")  # fmt: skip
    assert_user_error(run_cmd("train_main", *args), "train_main", "nope.pt", "does not exist")
    assert not list((tmp_path / "run").rglob("*.pt"))


def test_train_resume_truncated_checkpoint(
    run_cmd: Any, tiny_corpus: dict[str, Path], tmp_path: Path, ckpt: Path
) -> None:
    cut = tmp_path / "cut.pt"
    cut.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    args = train_args(tiny_corpus, tmp_path / "cache", tmp_path / "run", f"train.resume={cut}")
    r = run_cmd("train_main", *args)
    assert_user_error(r, "train_main", "cut.pt", "truncated or corrupted")
    assert not list((tmp_path / "run").rglob("*.pt"))


def test_train_resume_checkpoint_from_another_vocabulary(
    run_cmd: Any, tiny_corpus: dict[str, Path], tmp_path: Path, ckpt: Path
) -> None:
    ck = ckpt_io.load(ckpt)
    ck["spm"] = other_vocabulary(ck)
    foreign = tmp_path / "foreign.pt"
    ckpt_io.save(foreign, ck)
    args = train_args(tiny_corpus, tmp_path / "cache", tmp_path / "run", f"train.resume={foreign}")
    r = run_cmd("train_main", *args)
    assert_user_error(r, "train_main", "foreign.pt", "another sentencepiece vocabulary")
    assert not list((tmp_path / "run").rglob("*.pt"))


def test_train_resume_pickle_carrying_code(
    run_cmd: Any, tiny_corpus: dict[str, Path], tmp_path: Path
) -> None:
    evil, marker = tmp_path / "evil.pt", tmp_path / "PWNED"
    torch.save({"format": 1, "model": Payload(marker)}, evil)
    args = train_args(tiny_corpus, tmp_path / "cache", tmp_path / "run", f"train.resume={evil}")
    r = run_cmd("train_main", *args)
    assert_user_error(r, "train_main", "evil.pt", "refused", "weights_only")
    assert not marker.exists()


def test_train_run_folder_under_a_file(
    run_main: Any, tiny_corpus: dict[str, Path], tmp_path: Path
) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("keep me\n")
    args = train_args(tiny_corpus, tmp_path / "cache", blocker / "run")
    r = run_main("train_main", *args)
    assert_user_error(r, "train_main", str(blocker))
    assert blocker.read_text() == "keep me\n"


# ========================================================================== nmt-translate
@pytest.fixture
def tr(tmp_path: Path, ckpt: Path) -> dict[str, Path]:
    """Translate inputs: ``src`` (2 lines), ``out`` (holds OLD content that must survive)."""
    src, out = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_text("the cat runs\na big dog\n", encoding="utf-8")
    out.write_text("OLD\n")
    return {"src": src, "out": out, "ckpt": ckpt}


def translate(
    run_cmd: Any, ckpt: Path | str, src: Path | str, out: Path | str, *extra: str
) -> Result:
    return run_cmd("translate_main", f"checkpoint={ckpt}", f"input={src}", f"output={out}", *extra)


def make_bad_checkpoint(kind: str, good: Path, folder: Path) -> Path:
    """A checkpoint file of the given kind of wrongness."""
    p = folder / f"{kind}.pt"
    if kind == "truncated":
        p.write_bytes(good.read_bytes()[:4096])
    elif kind == "text_file":
        p.write_text("this is not a checkpoint\n")
    elif kind == "empty_file":
        p.write_bytes(b"")
    elif kind == "foreign_dict":
        torch.save({"weights": torch.zeros(3)}, p)
    elif kind == "pipeline_shard":
        ck = ckpt_io.load(good)
        ckpt_io.save(p, {"model": ck["model"], "step": 2, "placement": [0, 0, 1, 1, 1]})
    elif kind == "weights_vocab_mismatch":
        ck = ckpt_io.load(good)
        ck["spm"] = other_vocabulary(ck)
        ckpt_io.save(p, ck)
    else:
        raise AssertionError(kind)
    return p


BAD_CHECKPOINTS = {
    "truncated": ("truncated or corrupted",),
    "text_file": ("corrupted or not a checkpoint",),
    "empty_file": ("is empty (0 bytes)",),
    "foreign_dict": ("not a pipenmt checkpoint",),
    "pipeline_shard": ("lacks the model config", "pipeline shard"),
    "weights_vocab_mismatch": ("weights do not fit", "sentencepiece"),
}


@pytest.mark.parametrize("kind", list(BAD_CHECKPOINTS))
def test_translate_bad_checkpoint(
    run_cmd: Any, tr: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    bad = make_bad_checkpoint(kind, tr["ckpt"], tmp_path)
    r = translate(run_cmd, bad, tr["src"], tr["out"])
    assert_user_error(r, "translate_main", f"{kind}.pt", *BAD_CHECKPOINTS[kind])
    assert tr["out"].read_text() == "OLD\n" and no_temp_files(tmp_path)


@pytest.mark.parametrize("form", ["torch_zip", "raw_pickle"])
def test_translate_pickle_checkpoint_carrying_code(
    run_cmd: Any, tr: dict[str, Path], tmp_path: Path, form: str
) -> None:
    evil, marker = tmp_path / "evil.pt", tmp_path / "PWNED"
    payload = {"format": 1, "model": Payload(marker), "spm": b"", "config": {}}
    if form == "torch_zip":
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload, protocol=2))
    r = translate(run_cmd, evil, tr["src"], tr["out"])
    assert_user_error(r, "translate_main", "evil.pt", "refused")
    assert not marker.exists() and tr["out"].read_text() == "OLD\n"


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        pytest.param(["decode.beam_size=0"], ("decode.beam_size=0", ">= 1"), id="beam_zero"),
        pytest.param(
            ["decode.beam_size=2", "decode.nbest=3"], ("decode.nbest=3",), id="nbest_gt_beam"
        ),
        pytest.param(["decode.batch_tokens=0"], ("decode.batch_tokens=0",), id="batch_tokens_zero"),
        pytest.param(["decode.max_len_a=-1"], ("decode.max_len_a=-1",), id="negative_max_len"),
        pytest.param(["decode.quantize=int4"], ("decode.quantize='int4'",), id="unknown_quantize"),
        pytest.param(
            ["decode.beem=3"], ("decode.beem", "did you mean decode.beam_size?"), id="unknown_key"
        ),
        pytest.param(
            ["decode.beam_size=five"],
            ("decode.beam_size=five", "could not be converted to Integer"),
            id="wrong_type",
        ),
        pytest.param(["decode=beam9"], ("decode/beam9", "greedy"), id="unknown_option"),
        pytest.param(["checkpoint=null"], ("checkpoint=PATH is required",), id="no_checkpoint"),
        pytest.param(
            ["decode.device=cuda"],
            ("decode.device=cuda but no CUDA device is available",),
            id="cuda_without_gpu",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present"),
        ),
        pytest.param(["decode.device=tpu"], ("decode.device=tpu", "expected auto"), id="device"),
        pytest.param(["decode.dtype=fp8"], ("decode.dtype=fp8",), id="unknown_dtype"),
        pytest.param(
            ["decode.device=cpu", "decode.dtype=fp16"], ("fp16 needs a CUDA device",), id="fp16_cpu"
        ),
        pytest.param(
            ["decode.quantize=int8", "decode.dtype=bf16"],
            ("decode.quantize=int8 runs in fp32, not decode.dtype=bf16",),
            id="int8_bf16",
        ),
    ],
)
def test_translate_bad_settings(
    runner: Any, tr: dict[str, Path], extra: list[str], needles: tuple[str, ...]
) -> None:
    r = translate(runner, tr["ckpt"], tr["src"], tr["out"], *extra)
    assert_user_error(r, "translate_main", *needles)
    assert tr["out"].read_text() == "OLD\n"


def test_translate_checkpoint_is_a_folder(
    run_cmd: Any, tr: dict[str, Path], tmp_path: Path
) -> None:
    r = translate(run_cmd, tmp_path, tr["src"], tr["out"])
    assert_user_error(r, "translate_main", str(tmp_path), "is a folder")


def test_translate_binary_input(run_cmd: Any, tr: dict[str, Path]) -> None:
    r = translate(run_cmd, tr["ckpt"], tr["ckpt"], tr["out"])  # the zip checkpoint as input
    assert_user_error(r, "translate_main", f"{tr['ckpt']}:", "invalid UTF-8")
    assert tr["out"].read_text() == "OLD\n"


def test_translate_input_is_a_folder(run_cmd: Any, tr: dict[str, Path], tmp_path: Path) -> None:
    r = translate(run_cmd, tr["ckpt"], tmp_path, tr["out"])
    assert_user_error(r, "translate_main", "is a folder")


def test_translate_output_is_a_folder(run_cmd: Any, tr: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "outdir").mkdir()
    r = translate(run_cmd, tr["ckpt"], tr["src"], tmp_path / "outdir")
    assert_user_error(r, "translate_main", "outdir", "is a folder")
    assert not list((tmp_path / "outdir").iterdir())


def test_translate_output_folder_is_a_file(
    run_cmd: Any, tr: dict[str, Path], tmp_path: Path
) -> None:
    r = translate(run_cmd, tr["ckpt"], tr["src"], tr["out"] / "x.txt")
    assert_user_error(r, "translate_main", f"output folder {tr['out']}", "is not a folder")
    assert tr["out"].read_text() == "OLD\n"


def test_translate_output_hardlinked_to_input(
    run_cmd: Any, tr: dict[str, Path], tmp_path: Path
) -> None:
    link = tmp_path / "link.txt"
    os.link(tr["src"], link)
    before = tr["src"].read_bytes()
    r = translate(run_cmd, tr["ckpt"], tr["src"], link)
    assert_user_error(r, "translate_main", "is the input file")
    assert tr["src"].read_bytes() == before and link.read_bytes() == before


def test_translate_empty_input_gives_empty_output(run_cmd: Any, tr: dict[str, Path]) -> None:
    tr["src"].write_bytes(b"")
    r = translate(run_cmd, tr["ckpt"], tr["src"], tr["out"])
    assert r.code == 0, r.err
    assert tr["out"].read_bytes() == b""


def test_translate_one_megabyte_line(run_cmd: Any, tr: dict[str, Path]) -> None:
    """A 1 MB line is accepted input: translated chunk by chunk into exactly one line."""
    line = "".join(f"w{i} " for i in range(160_000))[:1_000_000]  # few repeats: many subwords
    tr["src"].write_text(f"the cat\n{line}\na dog\n", encoding="utf-8")
    r = translate(run_cmd, tr["ckpt"], tr["src"], tr["out"], "decode=greedy",
                  "decode.max_len_b=2", "decode.max_len_a=0.01")  # fmt: skip
    assert r.code == 0, r.err[-2000:]
    assert tr["out"].read_text(encoding="utf-8").count("\n") == 3


# ============================================================================== nmt-eval
def evaluate(run_cmd: Any, hyp: Path | str, ref: Path | str, *extra: str) -> Result:
    return run_cmd("eval_main", f"hyp={hyp}", f"ref={ref}", *extra)


EVAL_CASES: list[tuple[str, bytes | None, bytes | None, tuple[str, ...]]] = [
    # (case id, hyp content (None: missing), ref content, needles)
    ("hyp_missing", None, b"a\n", ("hyp file", "does not exist")),
    ("hyp_not_utf8", b"ok\nbad \xfe\n", b"a\nb\n", ("hyp.txt:2", "invalid UTF-8")),
    ("ref_binary", b"a\n", b"\x00\x01\x02\xff\xfe" * 100, ("ref.txt:1", "invalid UTF-8")),
    ("both_empty", b"", b"", ("are empty", "nothing to score")),
    ("hyp_empty_ref_not", b"", b"a\nb\n", ("has 0 lines", "has 2")),
]


@pytest.mark.parametrize(
    ("hyp", "ref", "needles"), [pytest.param(h, r, n, id=i) for i, h, r, n in EVAL_CASES]
)
def test_eval_bad_files(
    run_cmd: Any, tmp_path: Path, hyp: bytes | None, ref: bytes | None, needles: tuple[str, ...]
) -> None:
    h, f = tmp_path / "hyp.txt", tmp_path / "ref.txt"
    if hyp is not None:
        h.write_bytes(hyp)
    if ref is not None:
        f.write_bytes(ref)
    r = evaluate(run_cmd, h, f)
    assert_user_error(r, "eval_main", *needles)
    assert not (tmp_path / "hyp.txt.eval.json").exists()


def test_eval_hyp_is_a_folder(run_cmd: Any, tmp_path: Path) -> None:
    (tmp_path / "ref.txt").write_text("a\n")
    r = evaluate(run_cmd, tmp_path, tmp_path / "ref.txt")
    assert_user_error(r, "eval_main", "hyp file", "is a folder")


def test_eval_nothing_to_evaluate(run_cmd: Any) -> None:
    assert_user_error(run_cmd("eval_main"), "eval_main", "give hyp=FILE ref=FILE")


def test_eval_unknown_split(run_cmd: Any, ckpt: Path) -> None:
    r = run_cmd("eval_main", f"checkpoint={ckpt}", "split=validation")
    assert_user_error(r, "eval_main", "split=validation", "train, dev or test")


def test_eval_unknown_model_option(run_main: Any, tmp_path: Path) -> None:
    r = evaluate(run_main, tmp_path / "h", tmp_path / "r", "model=gnmt_huge")
    assert_user_error(r, "eval_main", "model/gnmt_huge", "gnmt_tiny")


def test_eval_truncated_checkpoint(run_cmd: Any, ckpt: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.pt"
    cut.write_bytes(ckpt.read_bytes()[:2000])
    r = run_cmd("eval_main", f"checkpoint={cut}")
    assert_user_error(r, "eval_main", "cut.pt", "truncated or corrupted")
    assert [p.name for p in tmp_path.iterdir()] == ["cut.pt"]


def test_full_traceback_on_request(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``HYDRA_FULL_ERROR=1`` lets the user error through (Hydra then shows the traceback)."""
    import nmt.cli as cli
    from nmt.errors import UserError

    monkeypatch.setattr(sys, "argv", ["nmt-eval", f"hyp={tmp_path / 'h'}", f"ref={tmp_path / 'r'}"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    root = logging.getLogger()
    handlers = list(root.handlers)
    try:
        with pytest.raises(UserError, match="does not exist"):
            cli.eval_main()
    finally:
        from hydra.core.global_hydra import GlobalHydra

        root.handlers[:] = handlers
        GlobalHydra.instance().clear()


# ================================================================================ safety
def test_crafted_pickles_are_refused_and_never_run(tmp_path: Path) -> None:
    """``weights_only=True`` refuses code in both torch's zip format and a raw pickle."""
    from nmt.errors import UserError

    marker = tmp_path / "PWNED"
    zipped, raw = tmp_path / "zipped.pt", tmp_path / "raw.pt"
    torch.save({"format": 1, "model": {"w": torch.zeros(1)}, "x": Payload(marker)}, zipped)
    raw.write_bytes(pickle.dumps({"format": 1, "model": Payload(marker)}, protocol=2))
    for path in (zipped, raw):
        with pytest.raises(UserError, match="refused"):
            ckpt_io.load(path)
    assert not marker.exists()


def test_tokenizer_cache_holding_a_pickle_is_refused(tmp_path: Path) -> None:
    """The only other cache read back as bytes (sentencepiece models) is parsed as protobuf,
    never unpickled: a pickle planted in its place is a one-line DataError."""
    from data.errors import DataError
    from data.tokenizer import cache_key, train_or_load

    texts = ["the cat runs", "a dog sleeps"] * 20
    key = cache_key(texts, 30, "unigram", 0, 1)
    (tmp_path / f"spm-{key[:20]}.model").write_bytes(pickle.dumps(Payload(tmp_path / "PWNED")))
    with pytest.raises(DataError, match="not a valid sentencepiece model"):
        train_or_load(texts, tmp_path, vocab_size=30)
    assert not (tmp_path / "PWNED").exists()


def test_sources_never_unpickle_or_shell_out() -> None:
    """Loading goes through ``torch.load(..., weights_only=True)`` only; no ``pickle.load``,
    ``eval``/``exec``, ``os.system`` or ``shell=True`` anywhere in the packages."""
    bad = re.compile(
        r"pickle\.loads?\(|(?<![.\w`])eval\(|(?<![.\w`])exec\(|os\.system\(|os\.popen\(|"
        r"shell\s*=\s*True|"
        r"allow_pickle\s*=\s*True|weights_only\s*=\s*False"
    )
    found = []
    for pkg in ("nmt", "data", "parallel"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            found += [f"{path.name}: {m.group(0)}" for m in bad.finditer(text)]
            for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
                if "weights_only=True" not in call.group(1):
                    found.append(f"{path.name}: torch.load without weights_only=True")
    assert not found, found


def listening_inodes(pids: set[int]) -> list[tuple[str, int]]:
    """(local address, port) of the LISTEN TCP sockets that processes ``pids`` hold."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A = LISTEN
                addr, port = cols[1].split(":")
                out.append((addr, int(port, 16)))
    return out


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_single_device_commands_open_no_port(
    run_cmd: Any, tr: dict[str, Path], tmp_path: Path, tiny_corpus: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Training, translation and scoring on one device never bind or listen on a socket."""
    calls: list[str] = []
    real_bind, real_listen = socket.socket.bind, socket.socket.listen

    def bind(self: socket.socket, address: Any) -> None:
        calls.append(f"bind {address}")
        real_bind(self, address)

    def listen(self: socket.socket, *args: Any) -> None:
        calls.append("listen")
        real_listen(self, *args)

    monkeypatch.setattr(socket.socket, "bind", bind)
    monkeypatch.setattr(socket.socket, "listen", listen)
    before = listening_inodes({os.getpid()})
    args = train_args(tiny_corpus, tmp_path / "cache", tmp_path / "run")
    assert run_cmd("prepare_main", *prepare_args(tiny_corpus, tiny_corpus["train"],
                                                 tmp_path / "cache")).code == 0  # fmt: skip
    assert run_cmd("train_main", *args).code == 0
    assert translate(run_cmd, tr["ckpt"], tr["src"], tr["out"], "decode=greedy").code == 0
    assert evaluate(run_cmd, tr["out"], tr["out"]).code == 0
    assert calls == [] and listening_inodes({os.getpid()}) == before


def test_config_paths_are_never_executed(
    run_cmd: Any, tr: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shell syntax in paths is just part of a (missing) file name."""
    monkeypatch.chdir(tmp_path)
    tricks = ["$(touch PWNED1)", "`touch PWNED2`", "x;touch PWNED3", "|touch PWNED4"]
    for i, trick in enumerate(tricks):  # each trick in another place
        quoted = f"'{trick}'"  # Hydra's quoting: the value is this literal string
        if i == 0:
            r = translate(run_cmd, tr["ckpt"], quoted, tr["out"])
            assert_user_error(r, "translate_main", f"input file {trick} does not exist")
        elif i == 1:
            r = translate(run_cmd, quoted, tr["src"], tr["out"])
            assert_user_error(r, "translate_main", f"checkpoint {trick} does not exist")
        elif i == 2:
            r = evaluate(run_cmd, quoted, quoted)
            assert_user_error(r, "eval_main", f"hyp file {trick} does not exist")
        else:
            r = run_cmd("prepare_main", "data=files", f"data.train={quoted}",
                        f"data.dev={quoted}", f"data.test={quoted}")  # fmt: skip
            assert_user_error(r, "prepare_main", f"'{trick}' does not exist")
    assert not list(tmp_path.glob("PWNED*")) and not list(Path(ROOT).glob("PWNED*"))


def _process_tree(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo += children.get(pid, [])
    return tree


def listen_probe(root: int) -> dict[str, list[tuple[str, int]]]:
    """Worker entry: join a 2-rank gloo group the way pipelined training does, then list the
    listening TCP sockets of the launcher process (``root``) and of the others (workers)."""
    import torch.distributed as dist

    from parallel.runtime.distenv import init_distributed

    ctx = init_distributed(1, 2, backend="gloo", device="cpu", timeout_s=60)
    try:
        dist.barrier()
        found = {
            "launcher": listening_inodes({root}),
            "workers": listening_inodes(_process_tree(root) - {root}),
        }
        dist.barrier()
        return found
    finally:
        ctx.close()


LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


@pytest.fixture(scope="module")
def pipelined_sockets() -> dict[str, list[tuple[str, int]]]:
    from parallel.runtime.launch import launch

    found = launch(listen_probe, os.getpid(), nproc=2, timeout_s=60)
    return {k: sorted(set(found[0][k]) | set(found[1][k])) for k in found[0]}


@pytest.mark.timeout(180)
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_pipelined_workers_listen_on_loopback_only(
    pipelined_sockets: dict[str, list[tuple[str, int]]],
) -> None:
    """``parallel=pipe2`` on one machine: the workers' sockets (gloo) are on 127.0.0.1."""
    workers = pipelined_sockets["workers"]
    assert workers and all(addr in LOOPBACK for addr, _ in workers), workers


@pytest.mark.timeout(180)
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_pipelined_launcher_stores_listen_on_loopback_only(
    pipelined_sockets: dict[str, list[tuple[str, int]]],
) -> None:
    launcher = pipelined_sockets["launcher"]
    assert launcher and all(addr in LOOPBACK for addr, _ in launcher), launcher
