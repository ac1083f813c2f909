"""LibreOffice offline help (``libreoffice-help-en-us`` / ``libreoffice-help-de``, ``-fr`` ...).

Pages are HTML; paragraphs and headings carry ids (``par_id…``, ``hd_id…``) that are the same
in every language, so pairs are joined on (relative path, id). Platform variants inside
``switchinline`` spans are reduced to the default variant (otherwise "CommandCtrl").
Group key (for splits): the page's path; key of a unit inside the group: the element id.
"""

from __future__ import annotations

import html
from collections.abc import Iterator, Mapping
from html.parser import HTMLParser
from pathlib import Path

from data.sources.text import Unit, normalize_space

_TEXT_TAGS = {"p", "h1", "h2", "h3", "h4", "h5", "h6"}
_ID_PREFIXES = ("par_id", "hd_id")


class _HelpPageParser(HTMLParser):
    """Collects the text of ``<p>``/``<h*>`` elements whose id is a paragraph id."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.texts: dict[str, str] = {}
        self._current: str | None = None  # id of the element being collected
        self._tag = ""
        self._depth = 0  # nesting of self._tag inside the collected element
        self._skip = 0  # >0 while inside a hidden platform variant
        self._buf: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if self._current is not None:
            if tag == self._tag:
                self._depth += 1
            if self._skip or (a.get("hidden") is not None and a.get("class")):
                self._skip += 1 if tag == "span" else 0
            return
        ident = a.get("id") or ""
        if tag in _TEXT_TAGS and ident.startswith(_ID_PREFIXES):
            self._current, self._tag, self._depth, self._buf = ident, tag, 0, []

    def handle_endtag(self, tag: str) -> None:
        if self._current is None:
            return
        if self._skip and tag == "span":
            self._skip -= 1
            return
        if tag == self._tag:
            if self._depth:
                self._depth -= 1
                return
            text = normalize_space(html.unescape("".join(self._buf)))
            if text:
                self.texts[self._current] = text
            self._current = None

    def handle_data(self, data: str) -> None:
        if self._current is not None and not self._skip:
            self._buf.append(data)


def page_texts(path: Path) -> dict[str, str]:
    """Map paragraph id -> text for one help page."""
    parser = _HelpPageParser()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    parser.close()
    return parser.texts


def harvest_many(en_root: Path, xx_roots: Mapping[str, Path]) -> dict[str, list[Unit]]:
    """Language -> (page path, id, en, xx) units joined on (relative path, element id).

    ``en_root`` is ``usr/share/libreoffice/help/en-US``, ``xx_roots`` maps a language to its
    folder (``…/de``, ``…/fr``). Each English page is parsed once for all languages; units come
    in the order of the sorted English pages and their ids.
    """
    units: dict[str, list[Unit]] = {lang: [] for lang in xx_roots}
    for en_page in sorted(en_root.rglob("*.html")):
        rel = en_page.relative_to(en_root)
        pages = {lang: root / rel for lang, root in xx_roots.items()}
        present = {lang: page for lang, page in pages.items() if page.is_file()}
        if not present:
            continue
        en_texts = page_texts(en_page)
        group = rel.as_posix()
        for lang, page in present.items():
            xx_texts = page_texts(page)
            units[lang].extend(
                Unit(group, ident, en, xx_texts[ident])
                for ident, en in en_texts.items()
                if ident in xx_texts
            )
    return units


def harvest(en_root: Path, de_root: Path) -> Iterator[tuple[str, str, str]]:
    """Yield (page path, en, de) pairs joined on (relative path, element id).

    ``en_root``/``de_root`` are the ``usr/share/libreoffice/help/en-US`` and ``…/de`` folders.
    """
    for unit in harvest_many(en_root, {"de": de_root})["de"]:
        yield unit.group, unit.en, unit.xx
