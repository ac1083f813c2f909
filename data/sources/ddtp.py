"""Debian package descriptions (DDTP): the English and another language's ``Translation-*``
index files (German for the en-de corpus; French, Spanish ... for ``debian_multi``).

Each translated description translates exactly the English text with the same
``Description-md5``. Paragraphs are paired, then sentences where both sides split into the
same number, and bullet items item by item. Group key (for splits): the package name; key of
a unit inside the group: the md5 (with the aligned English sentence, it names what a unit
translates, so units of several languages can be joined).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from data.sources.text import Unit, align_sentences, normalize_space

_BULLET = re.compile(r"^\s*([*+\-o]|\d+[.)])\s+")


def parse_translation_file(path: Path) -> Iterator[tuple[str, str, str]]:
    """Yield (package, md5, description) from a deb822 ``Translation-xx`` file."""
    package = md5 = ""
    desc_lines: list[str] = []
    in_desc = False
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                if package and md5 and desc_lines:
                    yield package, md5, "\n".join(desc_lines)
                package, md5, desc_lines, in_desc = "", "", [], False
            elif line.startswith(" ") and in_desc:
                desc_lines.append(line[1:])
            elif line.startswith("Package:"):
                package = line.split(":", 1)[1].strip()
            elif line.startswith("Description-md5:"):
                md5 = line.split(":", 1)[1].strip()
            elif line.startswith("Description-"):
                desc_lines = [line.split(":", 1)[1].strip()]
                in_desc = True
            else:
                in_desc = False
    if package and md5 and desc_lines:
        yield package, md5, "\n".join(desc_lines)


def _paragraphs(long_desc: list[str]) -> list[list[str]]:
    """Split the long description into paragraphs (a line of "." is an empty line)."""
    paras: list[list[str]] = [[]]
    for line in long_desc:
        if line.strip() == ".":
            paras.append([])
        else:
            paras[-1].append(line)
    return [p for p in paras if p]


def _items(para: list[str]) -> list[str]:
    """Split a paragraph into bullet items (or return it whole when it has no bullets)."""
    if not any(_BULLET.match(line) for line in para):
        return [" ".join(para)]
    items: list[str] = []
    for line in para:
        if _BULLET.match(line) or not items:
            items.append(_BULLET.sub("", line))
        else:
            items[-1] += " " + line.strip()
    return items


def align_description(en: str, de: str) -> list[tuple[str, str]]:
    """Align one English description with its German translation into sentence pairs."""
    en_lines, de_lines = en.split("\n"), de.split("\n")
    pairs = [(normalize_space(en_lines[0]), normalize_space(de_lines[0]))]  # synopsis
    en_paras, de_paras = _paragraphs(en_lines[1:]), _paragraphs(de_lines[1:])
    if len(en_paras) != len(de_paras):
        return pairs
    for ep, dp in zip(en_paras, de_paras, strict=True):
        ei, di = _items(ep), _items(dp)
        if len(ei) != len(di):
            continue
        for e, d in zip(ei, di, strict=True):
            pairs.extend(align_sentences(e, d))
    return pairs


def english_descriptions(translation_en: Path) -> dict[str, str]:
    """``Description-md5`` -> English description of a ``Translation-en`` file."""
    return {md5: desc for _, md5, desc in parse_translation_file(translation_en)}


def harvest_units(translation_en: Path | Mapping[str, str], translation_xx: Path) -> Iterator[Unit]:
    """Yield (package, md5, en, xx) sentence units joined on ``Description-md5``, in the
    order of ``translation_xx``. ``translation_en`` may be the parsed file
    (:func:`english_descriptions`) when several languages are joined to it."""
    english = (
        english_descriptions(translation_en) if isinstance(translation_en, Path) else translation_en
    )
    for package, md5, xx_desc in parse_translation_file(translation_xx):
        en_desc = english.get(md5)
        if en_desc is None:
            continue
        for en, xx in align_description(en_desc, xx_desc):
            yield Unit(package, md5, en, xx)


def harvest(translation_en: Path, translation_de: Path) -> Iterator[tuple[str, str, str]]:
    """Yield (package, en, de) sentence pairs joined on ``Description-md5``."""
    for unit in harvest_units(translation_en, translation_de):
        yield unit.group, unit.en, unit.xx
