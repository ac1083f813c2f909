"""The normalised key under which two sentences count as the same for train/dev/test dedup.

``dedup_key(text)``: NFKC, case folded, every decimal digit folded to ``0``, every run of
characters that are neither letters nor digits (punctuation, symbols, whitespace, ``_``)
collapsed to one space, stripped. ``"Version 2.4 -- the  FILE menu!"`` and
``"version 3.1: the file menu"`` share the key ``"version 0 0 the file menu"``.

A dev or test pair is dropped when its source key or its target key occurs on the same side
(language) in training (``seen(pair, side keys of train)``); ``collisions`` counts such pairs.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

_DIGIT = re.compile(r"\d")
_NON_WORD = re.compile(r"[\W_]+")

RULE = (
    "dedup key = NFKC, casefold, digits -> 0, runs of non-letters/non-digits -> one space; "
    "dev/test pairs whose source key or target key occurs on the same side in train are dropped"
)


def dedup_key(text: str) -> str:
    """The normalised key of one sentence (see the module docstring)."""
    folded = _DIGIT.sub("0", unicodedata.normalize("NFKC", text).casefold())
    return _NON_WORD.sub(" ", folded).strip()


def side_keys(texts: Iterable[str]) -> set[str]:
    """The keys of one side's texts."""
    return {dedup_key(t) for t in texts}


def seen(pair: Sequence[str], keys: Sequence[set[str]]) -> bool:
    """Does any side of ``pair`` have a key in that side's ``keys``?"""
    return any(dedup_key(text) in k for text, k in zip(pair, keys, strict=True))


def collisions(held: Iterable[Sequence[str]], train: Sequence[Sequence[str]]) -> list[int]:
    """Per side: how many ``held`` pairs have that side's key among the ``train`` pairs' keys
    on the same side (two sides: ``[source, target]``)."""
    held = list(held)
    keys = [side_keys(p[i] for p in train) for i in range(2)]
    return [sum(dedup_key(p[i]) in keys[i] for p in held) for i in range(2)]
