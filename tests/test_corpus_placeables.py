"""Corpora that keep strings with placeables, masked alike on both sides (no network)."""

from __future__ import annotations

import gzip
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from data import build, placeables, ui_pairs
from data.debian import FetchedFile
from data.errors import DataError
from data.sources import ddtp, lohelp
from data.sources.text import (
    DROPPED_LINES_DIFFER,
    DROPPED_PLACEABLES_DIFFER,
    KEPT_WITH_PLACEABLES,
    clean_pairs,
)

ROWS = [
    ("g", "Could not open %s", "Konnte %s nicht öffnen"),
    ("g", "Copy %s to %s", "Kopiere %s"),  # one placeable lost
    ("g", "Save the file", "Datei speichern"),
]


def masked(rows: list[tuple[str, str, str]]) -> tuple[list[tuple[str, str, str]], Counter[str]]:
    stats: Counter[str] = Counter()
    return list(clean_pairs(rows, placeables="mask", stats=stats)), stats


def test_mask_mode_keeps_placeable_pairs_with_sentinels() -> None:
    kept, stats = masked(ROWS)
    assert ("g", "Could not open {1}", "Konnte {1} nicht öffnen") in kept
    assert ("g", "Save the file", "Datei speichern") in kept
    assert stats[KEPT_WITH_PLACEABLES] == 1
    # sentinels follow the English order; accelerators and markup are masked like translation
    kept, _ = masked([("g", "Copy %1$s to %2$s", "Nach %2$s kopieren: %1$s")])
    assert kept == [("g", "Copy {1} to {2}", "Nach {2} kopieren: {1}")]
    kept, _ = masked([("g", "_Open <b>%s</b>", "<b>%s</b> _öffnen")])
    assert kept == [("g", "Open {1}{2}{3}", "{1}{2}{3} öffnen")]


def test_mask_mode_drops_and_counts_pairs_whose_placeables_differ() -> None:
    kept, stats = masked(ROWS)
    assert all("Copy" not in en for _, en, _ in kept)
    assert stats[DROPPED_PLACEABLES_DIFFER] == 1
    kept, stats = masked([("g", "%d files", "%s Dateien"), ("g", "Go to %s", "Gehe zu %s %s")])
    assert kept == [] and stats[DROPPED_PLACEABLES_DIFFER] == 2


def test_mask_mode_cuts_line_breaks_alike() -> None:
    rows = [
        ("g", "Usage: %s FILE\n  Print FILE.\n", "Aufruf: %s DATEI\n  DATEI ausgeben.\n"),
        ("g", "One line\nTwo lines", "Nur eine Zeile"),  # line counts differ
        ("g", "Line %d\nok %s", "Zeile %d\nok"),  # second line loses a placeable
    ]
    kept, stats = masked(rows)
    assert kept == [
        ("g", "Usage: {1} FILE", "Aufruf: {1} DATEI"),
        ("g", "Print FILE.", "DATEI ausgeben."),
        ("g", "Line {1}", "Zeile {1}"),
    ]
    assert stats[DROPPED_LINES_DIFFER] == 1 and stats[DROPPED_PLACEABLES_DIFFER] == 1
    assert stats[KEPT_WITH_PLACEABLES] == 2
    assert all("\n" not in en + de and "\t" not in en + de for _, en, de in kept)


def test_default_mode_still_drops_every_placeable_pair() -> None:
    rows = [*ROWS, ("g", "One line\nTwo lines", "Eine Zeile\nZwei Zeilen")]
    expected = [
        ("g", "Save the file", "Datei speichern"),
        ("g", "One line Two lines", "Eine Zeile Zwei Zeilen"),
    ]
    assert list(clean_pairs(rows)) == expected
    assert list(clean_pairs(rows, placeables="drop")) == expected
    with pytest.raises(DataError, match="placeables='keep'"):
        clean_pairs(rows, placeables="keep")


def test_registry_keeps_the_old_corpora_and_adds_the_ui_one() -> None:
    assert build.CORPORA["debian_de_en"] == build.CorpusSpec((), "drop", drop_held_out=False)
    assert build.CORPORA["debian_de_en_full"] == build.CorpusSpec(build.GETTEXT_PACKAGES)
    ui = build.CORPORA["debian_ui_de_en"]
    assert ui.placeables == "mask" and ui.drop_held_out
    assert set(build.GETTEXT_PACKAGES) <= set(ui.gettext)
    assert ui_pairs.mask_like is placeables.mask_like


@pytest.mark.parametrize("package", ["coreutils", "wget", "apt", "util-linux-locales"])
def test_reserved_and_held_out_packages_are_refused(package: str, tmp_path: Path) -> None:
    for spec in build.CORPORA.values():
        assert not set(spec.gettext) & {*build.RESERVED, *build.PLACEABLES_HELD_OUT}
    with pytest.raises(DataError, match=f"packages {package} are reserved"):
        build.CorpusSpec(("nano", package), "mask")
    with pytest.raises(DataError, match="reserved"):
        ui_pairs.catalogue_pairs(tmp_path, ("nano", package))  # refused before any download


def _offline_archive(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Stand-ins for apt and the harvesters: one DDTP pair, one help pair, and catalogs."""
    index = FetchedFile("Translation-en", tmp_path / "t", "0" * 64)

    def catalogs(root: Path, pkg: str, raw: bool) -> tuple[FetchedFile, list[build.Triple]]:
        assert raw  # mask mode reads the catalogs as msgfmt wrote them
        deb = FetchedFile(pkg, tmp_path / pkg, "1" * 64, "1.0")
        if pkg == "grep":  # a reserved catalog: its English may not be trained on
            return deb, [("grep:grep", "invalid argument %s", "ungültiges Argument %s")]
        if pkg in (*build.RESERVED, *build.PLACEABLES_HELD_OUT):
            return deb, []
        return deb, [
            (f"{pkg}:{pkg}", f"Could not open %s in {pkg}", f"Konnte %s in {pkg} nicht öffnen"),
            (f"{pkg}:{pkg}", f"Copy %s to %s in {pkg}", f"Kopiere %s in {pkg}"),
            (f"{pkg}:{pkg}", "Invalid argument %d", "Ungültiges Argument %d"),
        ]

    def rows(*_: Any) -> Iterator[build.Triple]:
        yield "pkg", "Frobnicate all the files", "Alle Dateien frobnizieren"

    monkeypatch.setattr(build, "update_indexes", lambda *_: ({"en": index, "de": index}, "d"))
    monkeypatch.setattr(build, "download_package", lambda _, p: FetchedFile(p, tmp_path, "2"))
    monkeypatch.setattr(build, "extract", lambda deb, dest, members=None: dest)
    monkeypatch.setattr(ddtp, "harvest", rows)
    monkeypatch.setattr(lohelp, "harvest", rows)
    monkeypatch.setattr(build, "_catalog_triples", catalogs)


def test_ui_corpus_records_placeable_counts_and_drops_held_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _offline_archive(monkeypatch, tmp_path)
    built = build.build_corpus("debian_ui_de_en", tmp_path, log=lambda _: None)
    prov = built.provenance
    gettext = prov["placeables"]["sources"]["gettext"]
    n = len(build.UI_PACKAGES)
    assert gettext[KEPT_WITH_PLACEABLES] == n  # one "Could not open {1} in PKG" each
    assert gettext[DROPPED_PLACEABLES_DIFFER] == n
    assert gettext["dropped_held_out"] == 1  # "Invalid argument {1}" is grep's
    assert set(prov["held_out_packages"]) == {*build.RESERVED, *build.PLACEABLES_HELD_OUT}
    assert sum(prov["placeables"]["pairs_with_placeables"].values()) == n
    text = "".join(
        gzip.decompress((built.folder / f["file"]).read_bytes()).decode("utf-8")
        for f in prov["files"].values()
    )
    assert "Could not open {1} in nano\tKonnte {1} in nano nicht öffnen\n" in text
    assert "Invalid argument" not in text and "%s" not in text
