"""The multilingual Debian corpus (data/multi.py) on small synthetic inputs (no network)."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from data.build import assign_splits, split_of
from data.debian import update_indexes
from data.errors import DataError
from data.multi import (
    MULTI_NAME,
    MultiSplits,
    SourceUnits,
    assemble,
    available_pairs,
    check_langs,
    clean_units,
    lo_folder,
    lo_package,
    load_pairs,
    pair_file,
    stored_pairs,
    write_multi,
)
from data.sources import ddtp, lohelp
from data.sources.text import Unit, clean_pairs

LANGS = ("de", "fr", "es")
# Groups by split (build.split_of): pkg1, pkg2, p112 test; pkg45, p6 dev; pkg0, p0 train.
EN = """Package: pkg1
Description-md5: aaa1
Description-en: tool to frobnicate files
 Foo frobnicates files quickly. It is written in C.
 .
 Features:
  * fast frobnication
  * small memory use

Package: pkg2
Description-md5: aaa2
Description-en: library for parsing things
 It parses things. It is fast.
 .
 Use it with care.

Package: pkg45
Description-md5: aaa3
Description-en: viewer for images
 Shows images in a window.

Package: pkg0
Description-md5: aaa4
Description-en: editor for text files
 Edits text files. Shows images in a window.

Package: pkg3
Description-md5: aaa5
Description-en: untranslated package
 Nothing here.
"""
DE = """Package: pkg1
Description-md5: aaa1
Description-de: Werkzeug zum Frobnizieren von Dateien
 Foo frobniziert Dateien schnell. Es ist in C geschrieben.
 .
 Funktionen:
  * schnelles Frobnizieren
  * geringer Speicherverbrauch

Package: pkg2
Description-md5: aaa2
Description-de: Bibliothek zum Parsen von Dingen
 Sie parst Dinge. Sie ist schnell.
 .
 Verwenden Sie sie mit Vorsicht.

Package: pkg45
Description-md5: aaa3
Description-de: Betrachter für Bilder
 Zeigt Bilder in einem Fenster.

Package: pkg0
Description-md5: aaa4
Description-de: Editor für Textdateien
 Bearbeitet Textdateien. Zeigt Bilder in einem Fenster.

Package: pkg9
Description-md5: stale
Description-de: veraltet
 Nichts.
"""
FR = """Package: pkg1
Description-md5: aaa1
Description-fr: outil pour frobniquer des fichiers
 Foo frobnique les fichiers rapidement. Il est écrit en C.
 .
 Fonctionnalités :
  * frobnication rapide
  * faible consommation de mémoire

Package: pkg2
Description-md5: aaa2
Description-fr: bibliothèque pour analyser des choses
 Elle analyse des choses et elle est rapide.
 .
 Utilisez-la avec prudence.

Package: pkg45
Description-md5: aaa3
Description-fr: visionneuse d'images
 Affiche des images dans une fenêtre.

Package: pkg0
Description-md5: aaa4
Description-fr: éditeur de fichiers texte
 Modifie des fichiers texte. Affiche des images dans une fenêtre.
"""
ES = """Package: pkg1
Description-md5: aaa1
Description-es: herramienta para frobnicar archivos
 Foo frobnica archivos rápidamente. Está escrito en C.

Package: pkg2
Description-md5: aaa2
Description-es: biblioteca para analizar cosas
 Analiza cosas. Es rápida.
 .
 Úsela con cuidado.
"""
# LibreOffice help pages (under text/shared/): page, id, then the en-US | de | fr | es texts
# ("-": not in that language).
HELP = """\
p112.html hd_id1 Find Toolbar | Suchleiste | Barre Rechercher | Barra Buscar
p112.html par_id2 Use the shortcut. | Nutzen Sie das Kürzel. | Prenez le raccourci. | Use el atajo.
p112.html par_id3 Choose a color. | Wählen Sie eine Farbe. | - | Elija un color.
p6.html hd_id1 Print Preview | Druckvorschau | Aperçu avant impression | Vista previa
p6.html par_id2 Click to print. | Klicken zum Drucken. | Cliquez pour imprimer. | Pulse e imprima.
p0.html hd_id1 Print Preview | Druckvorschau | Aperçu avant impression | -
p0.html par_id2 Save the file. | Speichern Sie die Datei. | Enregistrez le fichier. | -
"""
MISSING_PAGES = {("es", "text/shared/p0.html")}


def help_pages() -> dict[tuple[str, str], list[str]]:
    """(language folder, page) -> its HTML elements, from ``HELP``."""
    pages: dict[tuple[str, str], list[str]] = {}
    for line in HELP.splitlines():
        name, ident, rest = line.split(" ", 2)
        page = f"text/shared/{name}"
        tag = "h1" if ident.startswith("hd") else "p"
        for lang, text in zip(("en", *LANGS), rest.split(" | "), strict=True):
            if text != "-" and (lang, page) not in MISSING_PAGES:
                element = f'<{tag} id="{ident}">{text}</{tag}>'
                pages.setdefault((lo_folder(lang), page), []).append(element)
    return pages


def write_sources(tmp: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """Translation-xx files and help folders (en-US, de, fr, es) under ``tmp``."""
    tmp.mkdir(parents=True, exist_ok=True)
    index = {}
    for lang, text in (("en", EN), ("de", DE), ("fr", FR), ("es", ES)):
        index[lang] = tmp / f"Translation-{lang}"
        index[lang].write_text(text, encoding="utf-8")
    for (folder, page), elements in help_pages().items():
        path = tmp / "help" / folder / page
        path.parent.mkdir(parents=True, exist_ok=True)
        other = '<p id="other">not a paragraph id</p>'
        body = "\n".join([*elements, other])
        path.write_text(f'<html><body><div id="DisplayArea">\n{body}\n</div></body></html>')
    return index, {lang: tmp / "help" / lo_folder(lang) for lang in ("en", *LANGS)}


def fixture_units(tmp: Path) -> dict[str, SourceUnits]:
    index, folders = write_sources(tmp)
    english = ddtp.english_descriptions(index["en"])
    help_units = lohelp.harvest_many(folders["en"], {x: folders[x] for x in LANGS})
    return {
        x: {
            "ddtp": clean_units(ddtp.harvest_units(english, index[x])),
            "lohelp": clean_units(help_units[x]),
        }
        for x in LANGS
    }


# What ddtp.harvest / lohelp.harvest gave on these inputs before the multilingual change.
DDTP_DE_BEFORE = [
    ("pkg1", "tool to frobnicate files", "Werkzeug zum Frobnizieren von Dateien"),
    ("pkg1", "Foo frobnicates files quickly.", "Foo frobniziert Dateien schnell."),
    ("pkg1", "It is written in C.", "Es ist in C geschrieben."),
    ("pkg1", "Features:", "Funktionen:"),
    ("pkg1", "fast frobnication", "schnelles Frobnizieren"),
    ("pkg1", "small memory use", "geringer Speicherverbrauch"),
    ("pkg2", "library for parsing things", "Bibliothek zum Parsen von Dingen"),
    ("pkg2", "It parses things.", "Sie parst Dinge."),
    ("pkg2", "It is fast.", "Sie ist schnell."),
    ("pkg2", "Use it with care.", "Verwenden Sie sie mit Vorsicht."),
    ("pkg45", "viewer for images", "Betrachter für Bilder"),
    ("pkg45", "Shows images in a window.", "Zeigt Bilder in einem Fenster."),
    ("pkg0", "editor for text files", "Editor für Textdateien"),
    ("pkg0", "Edits text files.", "Bearbeitet Textdateien."),
    ("pkg0", "Shows images in a window.", "Zeigt Bilder in einem Fenster."),
]
P0, P6, P112 = (f"text/shared/p{i}.html" for i in (0, 6, 112))
LOHELP_DE_BEFORE = [
    (P0, "Print Preview", "Druckvorschau"),
    (P0, "Save the file.", "Speichern Sie die Datei."),
    (P112, "Find Toolbar", "Suchleiste"),
    (P112, "Use the shortcut.", "Nutzen Sie das Kürzel."),
    (P112, "Choose a color.", "Wählen Sie eine Farbe."),
    (P6, "Print Preview", "Druckvorschau"),
    (P6, "Click to print.", "Klicken zum Drucken."),
]


def test_fixture_groups_cover_every_split() -> None:
    assert [split_of(g) for g in ("pkg1", "pkg2", P112)] == ["test"] * 3
    assert [split_of(g) for g in ("pkg45", P6)] == ["dev"] * 2
    assert [split_of(g) for g in ("pkg0", P0)] == ["train"] * 2


def test_en_de_harvest_unchanged(tmp_path: Path) -> None:
    index, folders = write_sources(tmp_path)
    assert list(ddtp.harvest(index["en"], index["de"])) == DDTP_DE_BEFORE
    assert list(lohelp.harvest(folders["en"], folders["de"])) == LOHELP_DE_BEFORE
    # The keyed units carry the same texts plus the md5 / paragraph id.
    units = list(ddtp.harvest_units(index["en"], index["de"]))
    assert [(u.group, u.en, u.xx) for u in units] == DDTP_DE_BEFORE
    assert {u.key for u in units if u.group == "pkg1"} == {"aaa1"}
    # en-de of debian_multi is debian_de_en's rule: clean_pairs, then assign_splits.
    multi = assemble(fixture_units(tmp_path / "m"))
    sources = {
        "ddtp": list(clean_pairs(DDTP_DE_BEFORE)),
        "lohelp": list(clean_pairs(LOHELP_DE_BEFORE)),
    }
    assert multi.rows[("en", "de")] == assign_splits(sources)[0]


def test_units_keep_keys_and_alignment_depends_on_both_sides(tmp_path: Path) -> None:
    index, folders = write_sources(tmp_path)
    fr = list(ddtp.harvest_units(index["en"], index["fr"]))
    assert Unit("pkg2", "aaa2", "It parses things. It is fast.",
                "Elle analyse des choses et elle est rapide.") in fr  # fmt: skip
    es = list(ddtp.harvest_units(index["en"], index["es"]))
    assert [u.en for u in es if u.group == "pkg1"] == ["tool to frobnicate files"]
    help_units = lohelp.harvest_many(folders["en"], {"fr": folders["fr"], "es": folders["es"]})
    assert Unit(P112, "par_id3", "Choose a color.", "Elija un color.") in help_units["es"]
    assert all(u.key != "par_id3" for u in help_units["fr"])
    assert all(u.group != P0 for u in help_units["es"])


def test_fixture_zero_shot_pairs(tmp_path: Path) -> None:
    multi = assemble(fixture_units(tmp_path))
    de_fr = multi.rows[("de", "fr")]
    assert set(de_fr) == {"dev", "test"}
    assert [(a, b) for src, a, b in de_fr["test"] if src == "ddtp"] == [
        ("Werkzeug zum Frobnizieren von Dateien", "outil pour frobniquer des fichiers"),
        ("Foo frobniziert Dateien schnell.", "Foo frobnique les fichiers rapidement."),
        ("Es ist in C geschrieben.", "Il est écrit en C."),
        ("Funktionen:", "Fonctionnalités :"),
        ("schnelles Frobnizieren", "frobnication rapide"),
        ("geringer Speicherverbrauch", "faible consommation de mémoire"),
        ("Bibliothek zum Parsen von Dingen", "bibliothèque pour analyser des choses"),
        ("Verwenden Sie sie mit Vorsicht.", "Utilisez-la avec prudence."),
    ]  # no pair for "It parses things." (fr kept that paragraph whole)
    de_es = [(a, b) for _, a, b in multi.rows[("de", "es")]["test"]]
    assert ("Sie parst Dinge.", "Analiza cosas.") in de_es
    assert ("Wählen Sie eine Farbe.", "Elija un color.") in de_es
    assert len(multi.rows[("fr", "es")]["test"]) == 3 + 2
    # Dev: clean_pairs keeps the first copy of an (en, xx) pair, here pkg45's (dev) before
    # pkg0's (train); p6's "Print Preview" loses to p0's (train) in de and fr; in es (no p0)
    # its English key is in en-de / en-fr train, so a multilingual model has seen it.
    assert [(a, b) for _, a, b in de_fr["dev"]] == [
        ("Betrachter für Bilder", "visionneuse d'images"),
        ("Zeigt Bilder in einem Fenster.", "Affiche des images dans une fenêtre."),
        ("Klicken zum Drucken.", "Cliquez pour imprimer."),
    ]
    assert [r[1] for r in multi.rows[("en", "es")]["dev"]] == ["Click to print."]
    assert multi.dropped["en-es"]["dev"] == 1
    assert len(multi.rows[("de", "es")]["dev"]) == 1
    assert multi.dropped["de-fr"] == {"dev": 0, "test": 0}


SPELL = str.maketrans("0123456789", "ABCDEFGHIJ")
UNSPELL = str.maketrans("ABCDEFGHIJ", "0123456789")


def spelt(text: str) -> str:
    """``text`` with its digits as letters (``dedup_key`` folds digits: g1 and g2 would clash)."""
    return text.translate(SPELL)


def synthetic_units(n_groups: int = 300) -> dict[str, SourceUnits]:
    """Every group has two keys; texts name their group and key. Traps: English that is
    boilerplate in a train group, and a key whose French alignment differs from the others."""
    words = {"de": "Satz", "fr": "phrase", "es": "frase"}
    test_g = next(f"g{i}" for i in range(n_groups) if split_of(f"g{i}") == "test")
    units: dict[str, SourceUnits] = {x: {"ddtp": []} for x in LANGS}
    for i in range(n_groups):
        g = f"g{i}"
        for x in LANGS:
            for k in ("k1", "k2"):
                en = spelt(f"sentence {k} of {g}")
                if x == "fr" and g == test_g and k == "k2":
                    en = spelt(f"sentence {k} of {g} and more")  # no zero-shot pair
                units[x]["ddtp"].append(Unit(g, k, en, spelt(f"{words[x]} {k} {g}")))
            boilerplate = Unit(g, "k3", "shared boilerplate", spelt(f"{words[x]} k3 {g}"))
            units[x]["ddtp"].append(boilerplate)
    return units


def group_of(text: str) -> str:
    return text.split()[-1].translate(UNSPELL)


def test_every_language_puts_a_group_in_one_split() -> None:
    multi = assemble(synthetic_units())
    split_seen: dict[str, set[str]] = {}
    for (a, b), by_split in multi.rows.items():
        for split, rows in by_split.items():
            for _, ta, tb in rows:
                g = group_of(tb)
                assert a == "en" or group_of(ta) == g
                assert split_of(g) == split, (a, b, split, ta, tb)
                split_seen.setdefault(g, set()).add(split)
    assert all(len(s) == 1 for s in split_seen.values())
    test_groups = {g for g, s in split_seen.items() if s == {"test"}}
    assert test_groups and {"dev", "train"} <= set().union(*split_seen.values())
    for x in LANGS:  # a test group's text is in no other split in any language
        groups = {
            group_of(t) for split in ("train", "dev") for _, _, t in multi.rows[("en", x)][split]
        }
        assert not groups & test_groups


def test_zero_shot_pairs_come_from_held_out_groups_and_one_english_key() -> None:
    units = synthetic_units()
    multi = assemble(units)
    by_text = {x: {u.xx: u for u in units[x]["ddtp"]} for x in LANGS}
    for a, b in (("de", "fr"), ("de", "es"), ("fr", "es")):
        assert set(multi.rows[(a, b)]) == {"dev", "test"}
        rows = multi.rows[(a, b)]["dev"] + multi.rows[(a, b)]["test"]
        assert rows
        for _, ta, tb in rows:
            ua, ub = by_text[a][ta], by_text[b][tb]
            assert (ua.group, ua.key, ua.en) == (ub.group, ub.key, ub.en)
            assert split_of(ua.group) in ("dev", "test")
        assert all(not t.endswith(spelt(f"k3 {group_of(t)}")) for _, t, _ in rows)
    test_g = next(g for g in (f"g{i}" for i in range(300)) if split_of(g) == "test")
    de_fr = {ta for _, ta, _ in multi.rows[("de", "fr")]["test"]}
    assert spelt(f"Satz k1 {test_g}") in de_fr and spelt(f"Satz k2 {test_g}") not in de_fr
    assert spelt(f"Satz k2 {test_g}") in {ta for _, ta, _ in multi.rows[("de", "es")]["test"]}
    n_dev = sum(split_of(f"g{i}") == "dev" for i in range(300))
    assert multi.dropped["de-fr"]["dev"] == n_dev  # one boilerplate unit per dev group


def written(tmp_path: Path) -> tuple[Path, MultiSplits, dict[str, object]]:
    multi = assemble(fixture_units(tmp_path / "src"))
    folder = tmp_path / "corpora" / MULTI_NAME
    folder.mkdir(parents=True)
    prov = write_multi(folder, MULTI_NAME, multi, {"debian_release": "test"}, LANGS)
    return folder, multi, prov


def test_written_files_and_provenance(tmp_path: Path) -> None:
    folder, multi, prov = written(tmp_path)
    names = sorted(p.name for p in folder.iterdir())
    expected = [
        pair_file(folder, MULTI_NAME, a, b, s).name
        for (a, b), splits in stored_pairs(LANGS).items()
        for s in splits
    ]
    assert names == sorted([*expected, f"{MULTI_NAME}.provenance.json"])
    assert "debian_multi.de-fr.train.tsv.gz" not in names
    with gzip.open(folder / "debian_multi.fr-es.test.tsv.gz", "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert lines[0] == "fr\tes" and len(lines) == 1 + len(multi.rows[("fr", "es")]["test"])
    on_disk = json.loads((folder / "debian_multi.provenance.json").read_text())
    assert on_disk == prov and on_disk["command"] == "nmt-prepare data=debian_multi"
    assert on_disk["counts"]["de-fr"]["test"] == {"ddtp": 8, "lohelp": 2, "total": 10}
    assert set(on_disk["dropped_overlap"]) == {"en-de", "en-fr", "en-es", "de-fr", "de-es", "fr-es"}
    assert available_pairs(folder, MULTI_NAME, "train") == [
        ("en", "de"),
        ("en", "es"),
        ("en", "fr"),
    ]


def test_load_pairs_reads_every_direction(tmp_path: Path) -> None:
    folder, multi, _ = written(tmp_path)
    en_fr = [(a, b) for _, a, b in multi.rows[("en", "fr")]["train"]]
    assert load_pairs(folder, MULTI_NAME, "en", "fr", "train") == en_fr
    assert load_pairs(folder, MULTI_NAME, "fr", "en", "train") == [(b, a) for a, b in en_fr]
    de_fr = [(a, b) for _, a, b in multi.rows[("de", "fr")]["test"]]
    assert load_pairs(folder, MULTI_NAME, "fr", "de", "test") == [(b, a) for a, b in de_fr]
    assert load_pairs(folder, MULTI_NAME, "fr", "de", "test")[0] == (
        "outil pour frobniquer des fichiers",
        "Werkzeug zum Frobnizieren von Dateien",
    )


def test_load_pairs_names_bad_directions(tmp_path: Path) -> None:
    folder, _, _ = written(tmp_path)
    with pytest.raises(DataError, match=r"no de->it test pairs .*available test pairs") as err:
        load_pairs(folder, MULTI_NAME, "de", "it", "test")
    assert "de-fr" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError, match=r"debian_multi\.fr-de\.train\.tsv\.gz does not exist"):
        load_pairs(folder, MULTI_NAME, "fr", "de", "train")  # zero-shot pairs have no train
    with pytest.raises(DataError, match="no de->de"):
        load_pairs(folder, MULTI_NAME, "de", "de", "test")
    with pytest.raises(DataError, match="unknown split 'valid'"):
        load_pairs(folder, MULTI_NAME, "en", "de", "valid")
    with pytest.raises(DataError, match=r"available dev pairs \(either direction\): none"):
        load_pairs(tmp_path / "empty", MULTI_NAME, "en", "de", "dev")
    bad = pair_file(folder, MULTI_NAME, "en", "de", "dev")
    bad.write_bytes(gzip.compress(b"de\ten\nx\ty\n"))
    with pytest.raises(DataError, match="line 1: header 'de\\\\ten'"):
        load_pairs(folder, MULTI_NAME, "en", "de", "dev")


def test_language_names_and_checks() -> None:
    assert [lo_package(x) for x in ("en", "fr", "pt_BR")] == [
        "libreoffice-help-en-us",
        "libreoffice-help-fr",
        "libreoffice-help-pt-br",
    ]
    assert [lo_folder(x) for x in ("en", "es", "pt_BR")] == ["en-US", "es", "pt-BR"]
    assert check_langs(["de", "fr"]) == ("de", "fr")
    for bad in ([], ["de", "de"], ["en", "de"], ["de-fr"]):
        with pytest.raises(DataError, match="distinct non-English codes"):
            check_langs(bad)


FAKE_APT = """#!/bin/sh
# Stands in for apt-get update: one Translation file per language of the private config.
lists=$(sed -n 's/^Dir::State::Lists "\\(.*\\)";$/\\1/p' "$APT_CONFIG")
for lang in $(sed -n 's/^Acquire::Languages {\\(.*\\)};$/\\1/p' "$APT_CONFIG" | tr -d '";'); do
  echo "Package: p" > "$lists/deb_dists_bookworm_main_i18n_Translation-$lang"
done
printf 'Date: Sat, 01 Jan 2000 00:00:00 UTC\\n' > "$lists/deb_dists_bookworm_InRelease"
"""  # fmt: skip


def test_update_indexes_takes_the_languages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text(FAKE_APT)
    (bin_dir / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    root = tmp_path / "debian"
    indexes, date = update_indexes(root, "bookworm")  # the en-de call
    assert list(indexes) == ["en", "de"] and date == "Sat, 01 Jan 2000 00:00:00 UTC"
    assert [f.name for f in indexes.values()] == ["Translation-en", "Translation-de"]
    assert 'Acquire::Languages { "en"; "de"; };' in (root / "apt.conf").read_text()
    indexes, _ = update_indexes(root, "bookworm", ("en", "de", "fr", "es"))
    assert [f.name for f in indexes.values()][2:] == ["Translation-fr", "Translation-es"]
    assert indexes["es"].path.is_file()
    (bin_dir / "apt-get").write_text("#!/bin/sh\nexit 0\n")  # an archive without Translation-it
    with pytest.raises(DataError, match="no bookworm/main Translation-it"):
        update_indexes(root, "bookworm", ("en", "it"))
