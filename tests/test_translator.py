"""The Python API (``from nmt.translator import Translator``) with the shipped en-de model: the same
translations as ``nmt-translate``, beam 1 equal to greedy search, n-best in score order,
alignments that are attention distributions, placeables kept and judged, and threads that
share one Translator getting what they would get alone."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from data.tokenizer import EOS_ID
from nmt.decode import translate as translate_mod
from nmt.decode.search import greedy
from nmt.errors import UserError
from nmt.translator import Translator

MODEL = "gnmt-debian-en-de"
LINES = [
    "Could not open file %s: %s",
    "the file is open",
    "",
    "Click <b>Save</b> to keep your changes.",
    "Save &all",
    "This package contains the documentation of the library.",
]


@pytest.fixture(scope="module")
def translator() -> Translator:
    return Translator(MODEL)


def test_the_api_translates_as_the_command_does(translator: Translator, tmp_path: Path) -> None:
    src, out = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_text("\n".join(LINES) + "\n")
    code = "import sys; from nmt.cli import translate_main; sys.argv[0] = 'nmt-translate'; " \
        "translate_main()"  # fmt: skip
    # the same calibrated arithmetic: the run shares this session's calibration cache
    args = [f"checkpoint={MODEL}", f"input={src}", f"output={out}"]
    run = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, timeout=300)
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    api = [h[0].text for h in translator.translate(LINES)]
    assert out.read_text().splitlines() == api
    assert len(api) == len(LINES) and api[2] == ""


def test_beam_one_is_greedy_search(translator: Translator) -> None:
    sentences = [line for line in LINES if line and "%" not in line and "<" not in line]
    sentences = [s for s in sentences if "&" not in s]
    tok, model = translator.tokenizer, translator.model
    for text in sentences:
        ids = tok.encode([text])[0] + [EOS_ID]
        src = torch.tensor(ids).unsqueeze(1)
        dc = translator.decode
        ref = greedy(model, src, torch.tensor([len(ids)]), dc.max_len_a, dc.max_len_b)[0]
        [[hyp]] = translator.translate([text], beam_size=1, placeables=False)
        assert hyp.text == tok.decode([ref])[0], text


def test_n_best_comes_in_score_order(translator: Translator) -> None:
    [hyps] = translator.translate(["the file is open"], n_best=3)
    assert len(hyps) == 3
    assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
    assert hyps[0].text == translator.translate(["the file is open"])[0][0].text
    assert len({h.text for h in hyps}) == 3


def test_alignments_are_attention_distributions(translator: Translator) -> None:
    [[hyp]] = translator.translate(["Open %s now"], alignments=True)
    a = hyp.alignment
    assert a is not None and a.source[-1] == "</s>" and a.target[-1] == "</s>"
    assert len(a.weights) == len(a.target)
    assert all(len(row) == len(a.source) for row in a.weights)
    assert all(abs(sum(row) - 1.0) < 1e-2 for row in a.weights)


def test_placeables_are_kept_and_judged(
    translator: Translator, monkeypatch: pytest.MonkeyPatch
) -> None:
    [[good]] = translator.translate(["Could not open file %s: %s"])
    assert good.text.count("%s") == 2 and good.placeables_ok

    def drops_one(*args: Any, **kw: Any) -> list[list[tuple[str, float]]]:
        return [[("Datei {1} nicht geöffnet", -1.0)]]

    monkeypatch.setattr(translate_mod, "translate_lines", drops_one)
    [[bad]] = translator.translate(["Could not open file %s: %s"])
    assert bad.text == "Datei %s nicht geöffnet" and not bad.placeables_ok


def test_threads_sharing_a_translator_get_what_they_get_alone(translator: Translator) -> None:
    texts = [f"{line} {i}" for i in range(4) for line in LINES if line]
    alone = [translator.translate([t])[0][0].text for t in texts]
    got: dict[int, str] = {}

    def work(i: int) -> None:
        got[i] = translator.translate([texts[i]])[0][0].text

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(len(texts))] == alone


def test_languages_and_bad_names(translator: Translator) -> None:
    assert translator.languages() == [{"code": "en", "name": "en", "targets": ["de"]}]
    assert translator.target_for("en", "de") is None
    with pytest.raises(UserError, match="not a direction"):
        translator.target_for("en", "fr")
    with pytest.raises(UserError):
        Translator("no-such-model")


def test_a_text_of_several_lines_goes_line_by_line(translator: Translator) -> None:
    text = "Usage: %s [options]\n  -h  show this help\n"
    [[hyp]] = translator.translate([text])
    lines = hyp.text.split("\n")
    assert len(lines) == 3 and lines[1].startswith("  ") and lines[2] == ""
    assert hyp.placeables_ok and "%s" in lines[0]
    alone = [
        translator.translate([s])[0][0].text for s in ("Usage: %s [options]", "-h  show this help")
    ]
    assert lines[:2] == [alone[0], "  " + alone[1]]
