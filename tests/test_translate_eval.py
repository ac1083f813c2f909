"""nmt-translate and nmt-eval: line counts, order, empty lines, n-best, sacrebleu parity."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nmt.config import DecodeConfig
from nmt.decode.evaluate import score_files
from nmt.decode.inference import load_for_inference
from nmt.decode.translate import translate_lines
from nmt.errors import UserError
from nmt.machine.capability import bf16_lstm_runs
from nmt.train.run import train


@pytest.fixture(scope="module")
def checkpoint(tiny_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nmt.config import compose_config
    from tests.conftest import tiny_overrides

    tmp = tmp_path_factory.mktemp("ckpt")
    cfg = compose_config(
        tiny_overrides(tiny_corpus, tmp / "cache", tmp / "run") + ["train.max_steps=30"]
    )
    train(cfg)
    return tmp / "run" / "checkpoints" / "last.pt"


def run_cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    code = "import sys; from nmt.cli import {0}; sys.argv[0] = '{0}'; {0}()"
    entry, rest = args[0], list(args[1:])
    return subprocess.run(
        [sys.executable, "-c", code.format(entry), *rest],
        input=stdin,
        capture_output=True,
        timeout=120,
    )


def test_translate_keeps_one_line_per_input_line(checkpoint: Path, tmp_path: Path) -> None:
    lines = [
        "the cat runs",
        "",
        "a big red dog sleeps and the small cat runs",
        "   ",
        "window",
        "the " * 300,
    ]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.txt"
    r = run_cli(
        "translate_main",
        f"checkpoint={checkpoint}",
        f"input={src}",
        f"output={out}",
        "decode.beam_size=3",
    )
    assert r.returncode == 0, r.stderr.decode()
    got = out.read_text(encoding="utf-8").split("\n")
    assert got[-1] == "" and len(got[:-1]) == len(lines)
    assert got[1] == "" and got[3] == ""


def test_overlong_line_is_translated_in_chunks(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nmt.decode.translate as tr

    model, tok = load_for_inference(str(checkpoint), "none")
    seen: list[int] = []
    real = tr.translate_ids

    def spy(model: Any, ids: Any, dcfg: Any, *rest: Any) -> Any:
        seen.extend(len(x) for x in ids)
        return real(model, ids, dcfg, *rest)

    monkeypatch.setattr(tr, "translate_ids", spy)
    monkeypatch.setattr(tr, "MAX_SRC_TOKENS", 10)

    D = DecodeConfig(beam_size=2, max_len_b=5, batch_tokens=64, prune_relative=0.0)

    out = tr.translate_lines(model, tok, ["the cat " * 12, "dog"], D)
    assert len(out) == 2 and max(seen) <= 10 and len(seen) >= 4


LINES = [
    "the cat",
    "a big red dog sleeps",
    "window opens",
    "the file closes and the menu opens",
]


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_translate_order_and_batch_independence(checkpoint: Path, quantize: str) -> None:
    model, tok = load_for_inference(str(checkpoint), quantize)

    D = DecodeConfig(beam_size=4, max_len_b=5, batch_tokens=64, prune_relative=0.0)

    together = [h[0][0] for h in translate_lines(model, tok, LINES, D)]
    alone = [translate_lines(model, tok, [x], D)[0][0][0] for x in LINES]
    assert together == alone


def test_cli_default_int8_translates_each_line_as_alone(checkpoint: Path, tmp_path: Path) -> None:
    """nmt-translate's defaults on the CPU (int8, per-row activations): every line of a file
    comes out as the same line translated alone."""
    src, out = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_text("\n".join(LINES) + "\n")
    r = run_cli("translate_main", f"checkpoint={checkpoint}", f"input={src}", f"output={out}")
    assert r.returncode == 0, r.stderr.decode()
    model, tok = load_for_inference(str(checkpoint), "int8")
    dcfg = DecodeConfig()
    alone = [translate_lines(model, tok, [x], dcfg)[0][0][0] for x in LINES]
    assert out.read_text().splitlines() == alone


def test_translate_stdin_stdout_and_nbest(checkpoint: Path) -> None:
    r = run_cli(
        "translate_main",
        f"checkpoint={checkpoint}",
        "decode.beam_size=3",
        "decode.nbest=2",
        stdin=b"the cat\n\nthe dog\n",
    )
    assert r.returncode == 0, r.stderr.decode()
    rows = r.stdout.decode().splitlines()
    assert rows[0] == "line\trank\tscore\thypothesis"
    assert [tuple(x.split("\t")[:2]) for x in rows[1:]][:2] == [("1", "1"), ("1", "2")]
    assert {x.split("\t")[0] for x in rows[1:]} == {"1", "2", "3"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["input=MISSING.txt"], "input file MISSING.txt does not exist"),
        (["checkpoint=/nonexistent.pt"], "does not exist"),
        (["output=/no/such/dir/out.txt"], "output folder /no/such/dir does not exist"),
    ],
)
def test_translate_user_errors(
    checkpoint: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    src = tmp_path / "in.txt"
    src.write_text("the cat\n")
    base = {"checkpoint": str(checkpoint), "input": str(src), "output": str(tmp_path / "o.txt")}
    base.update(a.split("=", 1) for a in args)
    r = run_cli("translate_main", *(f"{k}={v}" for k, v in base.items()))
    assert r.returncode == 2
    err = r.stderr.decode().strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "o.txt").exists()


def test_translate_refuses_bad_utf8_and_output_equal_input(
    checkpoint: Path, tmp_path: Path
) -> None:
    src = tmp_path / "in.txt"
    src.write_bytes(b"the cat\nbad \xff byte\n")
    r = run_cli(
        "translate_main", f"checkpoint={checkpoint}", f"input={src}", f"output={tmp_path / 'o'}"
    )
    assert r.returncode == 2 and f"{src}:2: invalid UTF-8" in r.stderr.decode()
    assert not (tmp_path / "o").exists()
    r = run_cli("translate_main", f"checkpoint={checkpoint}", f"input={src}", f"output={src}")
    assert r.returncode == 2 and "is the input file" in r.stderr.decode()
    assert src.read_bytes() == b"the cat\nbad \xff byte\n"


def test_eval_matches_sacrebleu_cli(tmp_path: Path) -> None:
    hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.txt"
    hyp.write_text("Das Haus ist groß .\nDie Katze schläft auf dem Sofa\nEin Test\n")
    ref.write_text("Das Haus ist sehr groß .\nDie Katze schläft auf dem Sofa\nEin kleiner Test\n")
    ours = score_files(str(hyp), str(ref))
    tool = shutil.which("sacrebleu") or pytest.skip("sacrebleu command-line tool not installed")
    out = subprocess.run(
        [tool, str(ref), "-i", str(hyp), "-m", "bleu", "chrf", "-b", "-w", "4"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert [float(x) for x in json.loads(out)] == [ours["bleu"], ours["chrf"]]
    r = run_cli("eval_main", f"hyp={hyp}", f"ref={ref}")
    assert r.returncode == 0
    report = json.loads((tmp_path / "hyp.txt.eval.json").read_text())
    assert report["bleu"] == ours["bleu"] and report["bleu_signature"].startswith("nrefs:1")


def test_eval_line_mismatch_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "h").write_text("a\nb\n")
    (tmp_path / "r").write_text("a\n")
    with pytest.raises(UserError, match="has 2 lines but ref=.* has 1"):
        score_files(str(tmp_path / "h"), str(tmp_path / "r"))
    r = run_cli("eval_main", f"hyp={tmp_path / 'h'}", f"ref={tmp_path / 'r'}")
    assert r.returncode == 2 and len(r.stderr.decode().strip().splitlines()) == 1


def test_eval_checkpoint_split(checkpoint: Path) -> None:
    r = run_cli("eval_main", f"checkpoint={checkpoint}", "split=test", "decode.beam_size=2")
    assert r.returncode == 0, r.stderr.decode()
    hyp = checkpoint.with_suffix("").as_posix() + ".test.beam2.hyp"
    report: dict[str, Any] = json.loads(Path(hyp + ".eval.json").read_text())
    assert report["lines"] == 40 and 0.0 <= report["bleu"] <= 100.0
    # the default (auto) is the arithmetic calibrated on this machine, recorded in the report
    calibration = report["decode"]["calibration"]
    chosen = calibration["chosen"]
    assert chosen in calibration["ms"] and {"fp32", "int8"} <= set(calibration["ms"])
    ms = calibration["ms"]
    if chosen != "fp32":  # the fastest, and faster than fp32 by the margin
        assert ms[chosen] == min(ms.values()) and ms[chosen] * 1.05 <= ms["fp32"]
    else:  # nothing beat fp32 by the margin
        assert all(ms["fp32"] <= t * 1.05 for t in ms.values())
    texts = {"auto": Path(hyp).read_text()}
    for q, d in (("int8", "fp32"), ("none", "fp32")):  # names say the asked-for arithmetic
        r = run_cli("eval_main", f"checkpoint={checkpoint}", "split=test", "decode.beam_size=2",
                    f"decode.quantize={q}", f"decode.dtype={d}")  # fmt: skip
        assert r.returncode == 0, r.stderr.decode()
        name = "int8" if q == "int8" else d
        stem = checkpoint.with_suffix("").as_posix() + f".test.beam2.{name}.hyp"
        dec = json.loads(Path(stem + ".eval.json").read_text())["decode"]
        assert dec["quantize"] == q and "calibration" not in dec
        texts[name] = Path(stem).read_text()
    if chosen in texts:
        assert texts[chosen] == texts["auto"]
    assert len(texts["fp32"].splitlines()) == len(texts["auto"].splitlines()) == 40


def test_decode_settings_leave_candidates_to_calibrate(monkeypatch: Any) -> None:
    from nmt.decode import inference

    def cands(**kw: str) -> list[str]:
        return inference.decode_candidates(DecodeConfig(**({"device": "cpu"} | kw)))[1]

    for bf16 in (True, False):
        monkeypatch.setattr(inference, "bf16_lstm_runs", lambda b=bf16: b)
        more = ["bf16"] if bf16 else []
        assert cands(quantize="auto", dtype="auto") == ["fp32", "int8", *more]
        assert cands(quantize="auto", dtype="fp32") == ["fp32", "int8"]
        assert cands(quantize="none", dtype="auto") == ["fp32", *more]
        assert cands(quantize="int8", dtype="auto") == ["int8"]
        assert cands(quantize="none", dtype="fp32") == ["fp32"]
    monkeypatch.setattr(inference, "bf16_lstm_runs", lambda: True)
    monkeypatch.setattr(inference, "require_bf16", lambda key: None)
    assert cands(quantize="auto", dtype="bf16") == ["bf16"]
    monkeypatch.setattr(inference, "require_bf16", _refuse_bf16)
    with pytest.raises(UserError, match="no bf16 LSTM"):
        cands(quantize="auto", dtype="bf16")
    with pytest.raises(UserError, match="expected auto, none or int8"):
        cands(quantize="int4", dtype="auto")


def _refuse_bf16(key: str) -> None:
    raise UserError(f"{key}=bf16: this CPU has no bf16 LSTM kernel")


def test_sharded_translation_keeps_order(checkpoint: Path, tmp_path: Path) -> None:
    lines = ["the cat runs", "", "a big dog", "window opens", "the file closes", "menu"]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n")
    one, two = tmp_path / "one.txt", tmp_path / "two.txt"
    common = [f"checkpoint={checkpoint}", f"input={src}", "decode.beam_size=2", "train.threads=1"]
    assert run_cli("translate_main", *common, f"output={one}").returncode == 0
    r = run_cli("translate_main", *common, f"output={two}", "parallel.nproc=2")
    assert r.returncode == 0, r.stderr.decode()
    assert two.read_text() == one.read_text() and len(one.read_text().splitlines()) == len(lines)


@pytest.mark.skipif(not bf16_lstm_runs(), reason="this CPU's torch runs no bf16 LSTM")
def test_bf16_decoding_keeps_lines_and_scores_in_fp32(checkpoint: Path, tmp_path: Path) -> None:
    """``decode.dtype=bf16`` (the weights themselves in bf16) through the
    real command: one line out per line in; the search accumulates scores in fp32."""
    import torch

    from nmt.decode.inference import load_for_inference
    from nmt.decode.translate import translate_lines

    lines = ["the cat runs", "", "a big red dog sleeps", "window"]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.txt"
    r = run_cli("translate_main", f"checkpoint={checkpoint}", f"input={src}", f"output={out}",
                "decode.dtype=bf16", "decode.device=cpu")  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()
    assert len(out.read_text().split("\n")[:-1]) == len(lines)
    model, tok = load_for_inference(str(checkpoint), "none", "cpu", torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    d = DecodeConfig(beam_size=3, max_len_b=5, batch_tokens=64, prune_relative=0.0)
    hyps = translate_lines(model, tok, lines, d)
    assert all(score == score and abs(score) < 1e4 for h in hyps for _, score in h)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a GPU")
def test_eval_on_the_gpu_scores_like_the_cpu(checkpoint: Path) -> None:
    scores = []
    for device in ("cpu", "cuda"):
        r = run_cli("eval_main", f"checkpoint={checkpoint}", "split=test", "decode.beam_size=2",
                    f"decode.device={device}")  # fmt: skip
        assert r.returncode == 0, r.stderr.decode()
        hyp = checkpoint.with_suffix("").as_posix() + ".test.beam2.hyp"
        scores.append(json.loads(Path(hyp + ".eval.json").read_text())["bleu"])
    assert abs(scores[0] - scores[1]) <= 1.0
