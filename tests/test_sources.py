"""Debian corpus harvesting on small synthetic inputs (no network)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from data.build import SHIPPED_DIR, assign_splits, compare, corpus_files, load_provenance, split_of
from data.errors import DataError
from data.sources import ddtp, gettext_mo, lohelp
from data.sources.text import align_sentences, clean_pairs

EN = """Package: foo
Description-md5: 0123
Description-en: tool to frobnicate files
 Foo frobnicates files quickly. It is written in C.
 .
 Features:
  * fast frobnication
  * small memory use

Package: bar
Description-md5: 9999
Description-en: untranslated package
 Nothing here.
"""
DE = """Package: foo
Description-md5: 0123
Description-de: Werkzeug zum Frobnizieren von Dateien
 Foo frobniziert Dateien schnell. Es ist in C geschrieben.
 .
 Funktionen:
  * schnelles Frobnizieren
  * geringer Speicherverbrauch
"""


def test_ddtp_joins_on_md5_and_aligns(tmp_path: Path) -> None:
    (tmp_path / "en").write_text(EN)
    (tmp_path / "de").write_text(DE)
    pairs = list(ddtp.harvest(tmp_path / "en", tmp_path / "de"))
    assert pairs == [
        ("foo", "tool to frobnicate files", "Werkzeug zum Frobnizieren von Dateien"),
        ("foo", "Foo frobnicates files quickly.", "Foo frobniziert Dateien schnell."),
        ("foo", "It is written in C.", "Es ist in C geschrieben."),
        ("foo", "Features:", "Funktionen:"),
        ("foo", "fast frobnication", "schnelles Frobnizieren"),
        ("foo", "small memory use", "geringer Speicherverbrauch"),
    ]


def test_sentence_alignment_keeps_paragraph_when_counts_differ() -> None:
    assert align_sentences("One. Two.", "Eins und zwei.") == [("One. Two.", "Eins und zwei.")]
    assert align_sentences("See e.g. this. Next one.", "Siehe z. B. dies. Nächster.") == [
        ("See e.g. this.", "Siehe z. B. dies."),
        ("Next one.", "Nächster."),
    ]


def test_clean_pairs_filters() -> None:
    rows = [
        ("g", "Open the file", "Datei öffnen"),
        ("g", "Open the file", "Datei öffnen"),  # duplicate
        ("g", "Same", "Same"),  # identical
        ("g", "Value %s", "Wert %s"),  # placeholder
        ("g", "a b c d e f g h i j", "x"),  # ratio
        ("g", "", "leer"),
    ]
    assert list(clean_pairs(rows)) == [("g", "Open the file", "Datei öffnen")]


PAGE = """<html><body><div id="DisplayArea">
<h1 id="hd_id1">Find Toolbar</h1>
<p id="par_id2">Use the shortcut <span class="switchinline"><span hidden="true" class="MAC">
<span class="keycode">Command</span></span><span hidden="true" id="default1"><span class="keycode">
Ctrl</span></span></span><span class="keycode"> + F</span> to open it.</p>
<p id="other">not a paragraph id</p>
</div></body></html>"""


def test_libreoffice_help_pairs_on_path_and_id(tmp_path: Path) -> None:
    for lang, text in (
        ("en-US", PAGE),
        (
            "de",
            PAGE.replace("Find Toolbar", "Suchen-Symbolleiste")
            .replace("Use the shortcut", "Verwenden Sie")
            .replace("to open it.", "zum Öffnen."),
        ),
    ):
        page = tmp_path / lang / "text" / "a.html"
        page.parent.mkdir(parents=True)
        page.write_text(text)
    pairs = list(lohelp.harvest(tmp_path / "en-US", tmp_path / "de"))
    assert pairs == [
        ("text/a.html", "Find Toolbar", "Suchen-Symbolleiste"),
        (
            "text/a.html",
            "Use the shortcut Ctrl + F to open it.",
            "Verwenden Sie Ctrl + F zum Öffnen.",
        ),
    ]


def make_mo(entries: list[tuple[bytes, bytes]]) -> bytes:
    """A little-endian .mo file (the format msgfmt writes)."""
    n = len(entries)
    orig_off, trans_off = 28, 28 + 8 * n
    data_off = trans_off + 8 * n
    blob, orig, trans = b"", [], []
    for table, idx in ((orig, 0), (trans, 1)):
        for e in entries:
            table.append((len(e[idx]), data_off + len(blob)))
            blob += e[idx] + b"\x00"
    head = struct.pack("<7I", 0x950412DE, 0, n, orig_off, trans_off, 0, 0)
    tables = b"".join(struct.pack("<2I", *x) for x in orig + trans)
    return head + tables + blob


def test_mo_parser_and_accelerators(tmp_path: Path) -> None:
    blob = make_mo(
        [
            (b"", b"Project-Id-Version: x"),
            (b"_Open file", b"Datei _\xc3\xb6ffnen"),
            (b"menu\x04&Quit", b"&Beenden"),
            (b"one file\x00%d files", b"eine Datei\x00%d Dateien"),
            (b"Same", b"Same"),
        ]
    )
    assert gettext_mo.parse_mo(blob) == [
        ("_Open file", "Datei _öffnen"),
        ("&Quit", "&Beenden"),
        ("one file", "eine Datei"),
    ]
    cat = tmp_path / "usr/share/locale/de/LC_MESSAGES/app.mo"
    cat.parent.mkdir(parents=True)
    cat.write_bytes(blob)
    got = list(gettext_mo.harvest(tmp_path, "pkg"))
    assert got[0] == ("pkg:app", "Open file", "Datei öffnen") and got[1][1:] == ("Quit", "Beenden")
    with pytest.raises(DataError, match="not a .mo file"):
        gettext_mo.parse_mo(b"\x00" * 40, "bad.mo")


def test_splits_hold_out_groups_and_drop_overlap() -> None:
    groups = [f"pkg{i}" for i in range(200)]
    spelt = str.maketrans("0123456789", "abcdefghij")  # dedup_key folds digits: spell them
    named = [(g, g.translate(spelt)) for g in groups]
    triples = [(g, f"sentence of {n}", f"Satz von {n}") for g, n in named]
    test_group = next(g for g in groups if split_of(g) == "test")
    triples.append((test_group, "shared boilerplate", "Textbaustein"))
    train_group = next(g for g in groups if split_of(g) == "train")
    triples.append((train_group, "shared boilerplate", "Textbaustein"))
    by_split, dropped = assign_splits({"src": triples})
    assert dropped["test_dropped_overlap"] == 1
    assert all(en != "shared boilerplate" for _, en, _ in by_split["test"])
    assert {len(v) for v in by_split.values()} and sum(map(len, by_split.values())) == 201
    assert split_of("anything") == split_of("anything")


def test_shipped_corpus_is_complete_and_recorded() -> None:
    prov = load_provenance(SHIPPED_DIR, "debian_de_en")
    assert prov is not None
    files = corpus_files("debian_de_en", Path("/nonexistent"))
    assert prov["counts"]["test"]["total"] >= 2000 and prov["counts"]["dev"]["total"] >= 500
    assert sum(p.stat().st_size for p in files.values()) <= 10 * 2**20
    assert compare(prov, prov) == []
    changed = __import__("copy").deepcopy(prov)
    changed["files"]["train"]["sha256_text"] = "0"
    changed["packages"]["libreoffice-help-de"]["version"] = "9:9"
    diffs = compare(changed, prov)
    assert any("train" in d for d in diffs) and any("libreoffice-help-de" in d for d in diffs)
    with pytest.raises(DataError, match="nmt-prepare data=debian_de_en_full"):
        corpus_files("debian_de_en_full", Path("/nonexistent"))
