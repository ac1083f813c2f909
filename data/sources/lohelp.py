"""LibreOffice offline help (``libreoffice-help-en-us`` / ``libreoffice-help-de``).

Pages are HTML; paragraphs and headings carry ids (``par_id…``, ``hd_id…``) that are the same
in every language, so pairs are joined on (relative path, id). Platform variants inside
``switchinline`` spans are reduced to the default variant (otherwise "CommandCtrl").
Group key (for splits): the page's path.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

from data.sources.text import normalize_space

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


def harvest(en_root: Path, de_root: Path) -> Iterator[tuple[str, str, str]]:
    """Yield (page path, en, de) pairs joined on (relative path, element id).

    ``en_root``/``de_root`` are the ``usr/share/libreoffice/help/en-US`` and ``…/de`` folders.
    """
    for en_page in sorted(en_root.rglob("*.html")):
        rel = en_page.relative_to(en_root)
        de_page = de_root / rel
        if not de_page.is_file():
            continue
        en_texts, de_texts = page_texts(en_page), page_texts(de_page)
        for ident, en in en_texts.items():
            de = de_texts.get(ident)
            if de is not None:
                yield rel.as_posix(), en, de
