"""Text helpers shared by the Debian harvesters: sentence splitting and pair cleaning."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import NamedTuple

# A sentence ends at . ! ? (optionally followed by a closing quote/bracket) before whitespace
# and an upper-case letter, digit or opening quote. Abbreviations such as "e.g. foo" or
# "z. B. die" are followed by a lower-case word and so do not split.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[A-ZÄÖÜ0-9\"'(])")
_PLACEHOLDER = re.compile(r"%[-+ #0-9.]*[a-zA-Z]|\{[0-9a-zA-Z_]*\}|<[a-zA-Z/][^>]*>|\$\{|\\[nt]")
_SPACES = re.compile(r"\s+")
# Abbreviations after which a capitalised word does not start a new sentence.
_ABBREVIATIONS = frozenset(
    [
        "z.",
        "B.",
        "d.",
        "h.",
        "u.",
        "a.",
        "bzw.",
        "ggf.",
        "usw.",
        "vgl.",
        "ca.",
        "Nr.",
        "Dr.",
        "Hr.",
        "Fr.",
        "e.g.",
        "i.e.",
        "etc.",
        "vs.",
        "Mr.",
        "Mrs.",
        "No.",
        "Inc.",
        "Ltd.",
        "Co.",
        "St.",
        "Jr.",
        "Sr.",
        "cf.",
        "approx.",
        "incl.",
        "z.B.",
        "d.h.",
        "u.a.",
        "s.",
    ]
)


class Unit(NamedTuple):
    """One aligned English/other-language text with what identifies it in its source.

    ``group`` decides the split (package / help page), ``key`` names the English text inside
    the group (description md5 / paragraph id): units of different languages with the same
    (group, key, en) translate the same English text.
    """

    group: str
    key: str
    en: str
    xx: str


def normalize_space(text: str) -> str:
    """Collapse runs of whitespace to one space and strip the ends."""
    return _SPACES.sub(" ", text).strip()


def split_sentences(text: str) -> list[str]:
    """Split a paragraph into sentences (conservative rule-based splitter)."""
    parts = [p for p in (q.strip() for q in _SENTENCE_END.split(normalize_space(text))) if p]
    merged: list[str] = []
    for part in parts:
        if merged and merged[-1].split()[-1] in _ABBREVIATIONS:
            merged[-1] += " " + part
        else:
            merged.append(part)
    return merged


def align_sentences(src: str, tgt: str) -> list[tuple[str, str]]:
    """Pair the sentences of two parallel paragraphs when both sides give the same count.

    When the counts differ the paragraphs are kept whole as one pair (the length filter later
    drops paragraphs that are too long).
    """
    s, t = split_sentences(src), split_sentences(tgt)
    if len(s) == len(t):
        return list(zip(s, t, strict=True))
    return [(normalize_space(src), normalize_space(tgt))]


def has_placeholder(text: str) -> bool:
    """True for strings with printf/format placeholders or markup (not plain prose)."""
    return bool(_PLACEHOLDER.search(text))


def clean_pairs(
    pairs: Iterable[tuple[str, str, str]],
    max_tokens: int = 120,
    min_ratio: float = 0.4,
    max_ratio: float = 2.5,
) -> Iterator[tuple[str, str, str]]:
    """Yield (group, en, de) pairs that are non-empty, unique per English+German text, differ,
    have no placeholders, at most ``max_tokens`` whitespace tokens and a sane length ratio."""
    seen: set[tuple[str, str]] = set()
    for group, en_raw, de_raw in pairs:
        en, de = normalize_space(en_raw), normalize_space(de_raw)
        if not en or not de or en == de or (en, de) in seen:
            continue
        if has_placeholder(en) or has_placeholder(de):
            continue
        ne, nd = len(en.split()), len(de.split())
        if ne > max_tokens or nd > max_tokens or not min_ratio <= nd / ne <= max_ratio:
            continue
        seen.add((en, de))
        yield group, en, de
