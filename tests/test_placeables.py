"""Placeables (data/placeables.py): what is found, masked and restored, against hand-written
expectations; masking then restoring the untranslated text gives the text back; a
translation that drops, repeats or reorders them is judged as it should be."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data.placeables import find, mask, restore, same_placeables, split_lines

# (text, the placeables a localiser sees in it, by kind)
FOUND = [
    ("Could not open file %s: %s", [("printf", "%s"), ("printf", "%s")]),
    ("%1$s of %2$d", [("printf", "%1$s"), ("printf", "%2$d")]),
    ("Downloading %(count)d of %(total)d", [("printf", "%(count)d"), ("printf", "%(total)d")]),
    ("%-10.3lf and %% and %lu", [("printf", "%-10.3lf"), ("printf", "%%"), ("printf", "%lu")]),
    ("Delete {0} files in {folder}?", [("braces", "{0}"), ("braces", "{folder}")]),
    ("{count:d} items, {{literal}}", [("braces", "{count:d}"), ("braces", "{{"), ("braces", "}}")]),
    ("Expires in $DAYS days, see ${HOME}", [("shell", "$DAYS"), ("shell", "${HOME}")]),
    ('Click <b>Save</b> or <a href="x.html">here</a>', [
        ("tag", "<b>"), ("tag", "</b>"), ("tag", '<a href="x.html">'), ("tag", "</a>")]),
    ("Tom &amp; Jerry &#169; &#x2014;", [
        ("entity", "&amp;"), ("entity", "&#169;"), ("entity", "&#x2014;")]),
    ("Visit https://www.debian.org/doc/.", [("url", "https://www.debian.org/doc/")]),
    ("Mail debian-l10n@lists.debian.org now", [("email", "debian-l10n@lists.debian.org")]),
    ("one\ntwo\tthree", [("break", "\n"), ("break", "\t")]),
    ("_File", [("accelerator", "_")]),
    ("Save &all", [("accelerator", "&")]),
]  # fmt: skip

# no placeables: prose with the characters placeables are made of
PLAIN = [
    "R&D costs 50% more",
    "snake_case names and 100 % sure",
    "Tom & Jerry",
    "a { b } c",
    "costs $5",
    "x < y and y > z",
    "",
]


@pytest.mark.parametrize(("text", "expected"), FOUND, ids=[t for t, _ in FOUND])
def test_finds_every_kind(text: str, expected: list[tuple[str, str]]) -> None:
    assert [(p.kind, p.text) for p in find(text)] == expected
    for p in find(text):
        assert text[p.start : p.end] == p.text


@pytest.mark.parametrize("text", PLAIN)
def test_prose_has_none(text: str) -> None:
    assert find(text) == []
    assert mask(text).text == text


def test_mask_numbers_in_source_order_and_drops_the_accelerator() -> None:
    m = mask("_Open %s in {0}")
    assert m.text == "Open {1} in {2}"
    assert m.originals == ("%s", "{0}") and m.accelerator == "_"


def test_restore_follows_the_translation_order() -> None:
    m = mask("Copy %1$s to %2$s")
    text, ok = restore("Kopiere nach {2}: {1}", m)
    assert (text, ok) == ("Kopiere nach %2$s: %1$s", True)
    assert same_placeables("Copy %1$s to %2$s", text)


@pytest.mark.parametrize(
    ("translation", "ok"),
    [
        ("{1} und {2}", True),
        ("{2} und {1}", True),
        ("nur {1}", False),  # lost one
        ("{1} und {1} und {2}", False),  # repeated one
        ("{1} {2} {3}", False),  # one the source did not have
        ("nichts", False),
    ],
)
def test_restore_judges_the_placeables(translation: str, ok: bool) -> None:
    m = mask("%s and %d")
    assert restore(translation, m)[1] is ok


def test_accelerator_goes_before_the_same_letter_when_it_can() -> None:
    m = mask("Save &all")
    assert restore("&Alles speichern".replace("&", ""), m) == ("&Alles speichern", True)
    assert restore("Speichern", mask("_Quit")) == ("_Speichern", True)  # no q: first letter
    assert restore("{1}", mask("_Open %s"))[1] is False  # nowhere to put it


def test_same_placeables_is_a_multiset_check() -> None:
    assert same_placeables("%s %d", "%d ... %s")
    assert not same_placeables("%s %s", "%s")
    assert not same_placeables("<b>x</b>", "<b>x")


ATOMS = st.sampled_from(
    ["%s", "%d", "%1$s", "%(n)d", "%%", "{0}", "{name}", "$HOME", "${X}", "<b>", "</b>",
     "&amp;", "\n", "\t", "https://a.org/x", "a@b.org", " ", "word", "Wort", "50%", "R&D",
     "{", "}", "$", "&", "_", "x_y", "ß"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(ATOMS, max_size=12))
def test_untranslated_text_comes_back_whole(parts: list[str]) -> None:
    """Masking, then restoring the masked text itself, is the identity with ok=True."""
    text = "".join(parts)
    m = mask(text)
    assert restore(m.text, m) == (text, True)
    assert same_placeables(text, restore(m.text, m)[0])


def test_lines_come_apart_and_back_together() -> None:
    text = "Usage: prog [options]\n\n  -h, --help   show this\r\n  -v\tverbose  \n   \nend"
    lines = split_lines(text)
    cores = ["Usage: prog [options]", "", "-h, --help   show this", "-v\tverbose", "", "end"]
    assert [core for _, core, _ in lines.parts] == cores
    assert lines.breaks == ("\n", "\n", "\r\n", "\n", "\n")
    back = lines.join([core for _, core, _ in lines.parts])
    assert back == text.replace("\n   \n", "\n\n")  # a line of blanks only becomes empty


def test_training_pairs_share_the_source_numbering() -> None:
    from data.ui_pairs import mask_like, masked_pairs

    m = mask("Copy %1$s to %2$s")
    assert mask_like("Nach %2$s kopieren: %1$s", m) == "Nach {2} kopieren: {1}"
    assert mask_like("Nach %2$s kopieren", m) is None  # one is missing
    assert mask_like("%1$s %2$s %1$s", m) is None  # one too many
    assert mask_like("_Kopieren %1$s %2$s", m) == "Kopieren {1} {2}"  # accelerators go
    pairs, dropped = masked_pairs(
        [("Open %s\n  in %d", "%s öffnen\n  in %d"), ("%s and %s", "%s"), ("a\nb", "a")]
    )
    assert pairs == [("Open {1}", "{1} öffnen"), ("in {1}", "in {1}")] and dropped == 2
