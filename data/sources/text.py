"""Text helpers shared by the Debian harvesters: sentence splitting and pair cleaning.

:func:`clean_pairs` either drops every pair with a placeholder or markup (``placeables=
"drop"``, the rule of ``debian_de_en``) or keeps such pairs with their placeables masked on
both sides (``placeables="mask"``): each text is cut at its line breaks, both sides alike,
and every line pair is masked as translation masks it (:mod:`data.placeables`), so a model
learns to carry the sentinels ``{1}``, ``{2}``, ... over.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from data.errors import DataError
from data.placeables import SENTINEL, mask, mask_like, split_lines

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


PLACEABLE_MODES = ("drop", "mask")
# The counters ``clean_pairs(..., stats=Counter())`` fills in "mask" mode.
KEPT_WITH_PLACEABLES = "kept_with_placeables"
DROPPED_PLACEABLES_DIFFER = "dropped_placeables_differ"
DROPPED_LINES_DIFFER = "dropped_lines_differ"


def clean_pairs(
    pairs: Iterable[tuple[str, str, str]],
    max_tokens: int = 120,
    min_ratio: float = 0.4,
    max_ratio: float = 2.5,
    placeables: str = "drop",
    stats: Counter[str] | None = None,
) -> Iterator[tuple[str, str, str]]:
    """Yield (group, en, de) pairs that are non-empty, unique per English+German text, differ,
    have at most ``max_tokens`` whitespace tokens and a sane length ratio.

    ``placeables="drop"``: pairs with placeholders or markup are dropped. ``"mask"``: both
    texts are cut at their line breaks (a pair whose line counts differ is dropped), each
    line pair is masked (English by :func:`~data.placeables.mask`, German by
    :func:`~data.placeables.mask_like`; a line pair whose placeables differ is dropped) and
    the masked lines go through the filters above. ``stats`` (mask mode) counts the line
    pairs kept with placeables and the pairs dropped because their placeables or lines
    differ, under ``KEPT_WITH_PLACEABLES`` etc.
    """
    if placeables not in PLACEABLE_MODES:
        raise DataError(f"placeables={placeables!r}; expected one of {', '.join(PLACEABLE_MODES)}")
    counts: Counter[str] = Counter() if stats is None else stats
    if placeables == "mask":
        return _filtered(_masked_lines(pairs, counts), max_tokens, min_ratio, max_ratio, counts)
    return _filtered(pairs, max_tokens, min_ratio, max_ratio, counts, drop_placeholders=True)


def mask_pair(en: str, de: str, counts: Counter[str]) -> list[tuple[str, str]]:
    """The masked line pairs of one English/German text pair (see :func:`clean_pairs`);
    empty when the line counts differ; line pairs whose placeables differ are left out.
    Each dropped (pair or line pair) is counted in ``counts``."""
    le, ld = split_lines(en), split_lines(de)
    if len(le.parts) != len(ld.parts):
        counts[DROPPED_LINES_DIFFER] += 1
        return []
    out: list[tuple[str, str]] = []
    for (_, src, _), (_, tgt, _) in zip(le.parts, ld.parts, strict=True):
        if not src or not tgt:
            continue
        masked_en = mask(src)
        masked_de = mask_like(tgt, masked_en)
        if masked_de is None:
            counts[DROPPED_PLACEABLES_DIFFER] += 1
        else:
            out.append((masked_en.text, masked_de))
    return out


def _masked_lines(
    pairs: Iterable[tuple[str, str, str]], counts: Counter[str]
) -> Iterator[tuple[str, str, str]]:
    for group, en, de in pairs:
        for masked_en, masked_de in mask_pair(en, de, counts):
            yield group, masked_en, masked_de


def _filtered(
    pairs: Iterable[tuple[str, str, str]],
    max_tokens: int,
    min_ratio: float,
    max_ratio: float,
    counts: Counter[str],
    drop_placeholders: bool = False,
) -> Iterator[tuple[str, str, str]]:
    """The filters of :func:`clean_pairs` (on raw pairs with ``drop_placeholders``, else on
    masked line pairs)."""
    seen: set[tuple[str, str]] = set()
    for group, en_raw, de_raw in pairs:
        en, de = normalize_space(en_raw), normalize_space(de_raw)
        if not en or not de or en == de or (en, de) in seen:
            continue
        if drop_placeholders and (has_placeholder(en) or has_placeholder(de)):
            continue
        ne, nd = len(en.split()), len(de.split())
        if ne > max_tokens or nd > max_tokens or not min_ratio <= nd / ne <= max_ratio:
            continue
        seen.add((en, de))
        if SENTINEL.search(en):
            counts[KEPT_WITH_PLACEABLES] += 1
        yield group, en, de
