"""Placeables: the parts of a software string that a translation must carry over unchanged.

printf conversions (``%s``, ``%d``, ``%1$s``, ``%(name)s``, ``%%``), Python/ICU braces
(``{0}``, ``{name}``, ``{count:d}``), shell variables (``$VAR``, ``${VAR}``), XML/HTML tags
and entities (``<b>``, ``</a>``, ``&amp;``), line breaks and tabs, URLs and e-mail addresses,
and gettext accelerators (``_File``, ``&Save``).

:func:`mask` replaces each placeable by a numbered sentinel ``{1}``, ``{2}``, ... (in source
order; braces placeables are masked too, so a sentinel in the masked text is always one of
ours) and drops accelerator marks; :func:`restore` puts the originals back where the
translation has the sentinels, in the translation's order, re-attaches an accelerator to
the translation's first letter, and says whether the translation kept every placeable
exactly once. :func:`mask_like` masks a human translation with the sentinels of its
source (training pairs). :func:`same_placeables` is the final check on any pair of strings.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

_PATTERNS: tuple[tuple[str, str], ...] = (
    ("url", r"(?:https?|ftp)://[^\s<>\"'{}]*[^\s<>\"'{}.,;:!?)\]]"),
    ("email", r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}"),
    ("tag", r"</?[A-Za-z][\w:.-]*(?:\s+[^<>]*?)?/?>"),
    ("entity", r"&(?:[A-Za-z][A-Za-z0-9]*|#[0-9]+|#x[0-9A-Fa-f]+);"),
    ("printf", r"%\([^)\s]+\)[-#0 +]*[0-9]*(?:\.[0-9]+)?[diouxXeEfFgGcrsa]"),
    (
        "printf",
        r"%(?:[0-9]+\$)?[-#0+']*(?:[0-9]+|\*)?(?:\.(?:[0-9]+|\*))?"
        r"(?:hh|h|ll|l|L|q|j|z|t|I64|I32)?[diouxXeEfFgGaAcsSpn]|%%",
    ),
    ("shell", r"\$\{[^{}\s]+\}|\$[A-Za-z_][A-Za-z0-9_]*"),
    ("braces", r"\{\{|\}\}|\{[A-Za-z0-9_.:,!#-]*\}"),
    ("break", r"\r\n|[\n\t]"),
)
_SCAN = re.compile("|".join(f"(?P<k{i}>{p})" for i, (_, p) in enumerate(_PATTERNS)))
_KIND = {f"k{i}": kind for i, (kind, _) in enumerate(_PATTERNS)}
# an accelerator mark: "_" or "&" right before a letter, not inside a word ("R&D", "snake_case")
_ACCEL = re.compile(r"(?<![^\W_])[_&](?=[^\W\d_])")
SENTINEL = re.compile(r"\{([0-9]+)\}")  # one of ours: {1}, {2}, ... (group 1: the number)


@dataclass(frozen=True)
class Placeable:
    """One placeable of a string: its kind and text, ``text == string[start:end]``."""

    kind: str
    text: str
    start: int
    end: int


@dataclass(frozen=True)
class Masked:
    """A string with its placeables replaced by ``{1}``..``{n}`` (``originals[i]`` is
    sentinel ``{i+1}``) and its accelerator mark (``"_"`` or ``"&"``) taken out."""

    text: str
    originals: tuple[str, ...]
    accelerator: str = ""
    accelerated: str = ""  # the letter the mark stood before
    nth: int = 0  # ... at the nth word starting with that letter


def find(text: str) -> list[Placeable]:
    """The placeables of ``text`` in order, accelerators included (non-overlapping; at a
    given position the earlier pattern of the module docstring's list wins)."""
    found = [
        Placeable(_KIND[m.lastgroup or ""], m.group(), m.start(), m.end())
        for m in _SCAN.finditer(text)
    ]
    taken = [(p.start, p.end) for p in found]
    texts = [p.text for p in found]
    for m in _ACCEL.finditer(text):  # the first mark outside the other placeables
        if any(a <= m.start() < b or a <= m.end() < b for a, b in taken):
            continue
        rest = text[: m.start()] + text[m.end() :]  # taking it out must not make a placeable
        if [x.group() for x in _SCAN.finditer(rest)] == texts:
            found.append(Placeable("accelerator", m.group(), m.start(), m.end()))
            break
    return sorted(found, key=lambda p: p.start)


def mask(text: str) -> Masked:
    """``text`` with numbered sentinels for its placeables (see the module docstring)."""
    parts: list[str] = []
    originals: list[str] = []
    accelerator = accelerated = ""
    nth = at = 0
    for p in find(text):
        parts.append(text[at : p.start])
        if p.kind == "accelerator":
            accelerator, accelerated = p.text, text[p.end]
            starts, _, _ = _candidates(text[: p.start] + text[p.end :], accelerated)
            nth = starts.index(p.start) if p.start in starts else 0
        else:
            originals.append(p.text)
            parts.append(f"{{{len(originals)}}}")
        at = p.end
    parts.append(text[at:])
    return Masked("".join(parts), tuple(originals), accelerator, accelerated, nth)


def mask_like(target: str, source: Masked) -> str | None:
    """``target`` with the sentinels of ``source`` for the same placeables (repeated ones in
    order of use), accelerator marks dropped; ``None`` when the placeables differ."""
    pool: dict[str, list[int]] = {}
    for i, original in enumerate(source.originals, start=1):
        pool.setdefault(original, []).append(i)
    parts: list[str] = []
    at = 0
    for p in find(target):
        parts.append(target[at : p.start])
        if p.kind != "accelerator":
            if not pool.get(p.text):
                return None
            parts.append(f"{{{pool[p.text].pop(0)}}}")
        at = p.end
    parts.append(target[at:])
    return None if any(pool.values()) else "".join(parts)


def restore(translation: str, masked: Masked) -> tuple[str, bool]:
    """(the translation with the originals in place of its sentinels, whether every
    placeable came back exactly once). Sentinels the source did not have stay as they are."""
    n = len(masked.originals)
    seen = Counter(int(m.group(1)) for m in SENTINEL.finditer(translation))
    ok = all(seen[i] == 1 for i in range(1, n + 1)) and not any(k > n or k < 1 for k in seen)

    def original(m: re.Match[str]) -> str:
        k = int(m.group(1))
        return masked.originals[k - 1] if 1 <= k <= n else m.group()

    text = SENTINEL.sub(original, translation)
    if masked.accelerator:
        at = _accelerator_position(text, masked.accelerated, masked.nth)
        if at is None:
            return text, False
        text = text[:at] + masked.accelerator + text[at:]
    return text, ok


@dataclass(frozen=True)
class Lines:
    """A text cut at its line breaks: per line (leading space, the rest, trailing space), and
    the breaks between the lines (``len(breaks) == len(parts) - 1``)."""

    parts: tuple[tuple[str, str, str], ...]
    breaks: tuple[str, ...]

    def join(self, lines: list[str]) -> str:
        """The translations of the lines put together with this text's breaks and space."""
        out = [
            lead + line + trail for (lead, _, trail), line in zip(self.parts, lines, strict=True)
        ]
        return "".join(x + b for x, b in zip(out, [*self.breaks, ""], strict=True))


def split_lines(text: str) -> Lines:
    """``text`` cut at ``\n`` / ``\r\n``, each line's surrounding space kept apart, so that
    a translation can go line by line and be put together the same way (a line of blanks
    only becomes empty)."""
    cut = re.split(r"(\r\n|\n)", text)
    parts = []
    for line in cut[0::2]:
        core = line.strip(" \t")
        lead = line[: len(line) - len(line.lstrip(" \t"))] if core else ""
        parts.append((lead, core, line[len(lead) + len(core) :] if core else ""))
    return Lines(tuple(parts), tuple(cut[1::2]))


def same_placeables(source: str, target: str) -> bool:
    """Whether ``target`` has the placeables of ``source``, as a multiset (any order)."""
    return Counter(p.text for p in find(source)) == Counter(p.text for p in find(target))


def _candidates(text: str, letter: str) -> tuple[list[int], list[int], list[int]]:
    """Positions in ``text`` (outside placeables) of words starting with ``letter``, of that
    letter anywhere, and of any letter."""
    taken = [(p.start, p.end) for p in find(text) if p.kind != "accelerator"]
    letters = [m.start() for m in re.finditer(r"[^\W\d_]", text)]
    free = [i for i in letters if not any(a <= i < b for a, b in taken)]
    low = letter.lower()
    anywhere = [i for i in free if text[i].lower() == low]
    starts = [i for i in anywhere if i == 0 or not text[i - 1].isalnum()]
    return starts, anywhere, free


def _accelerator_position(text: str, letter: str, nth: int) -> int | None:
    """Where an accelerator mark goes in a translation: before the ``nth`` word that starts
    with the source's accelerated letter (else the first such word), else before that letter
    anywhere, else before the first letter; ``None`` when the text has no letter."""
    starts, anywhere, free = _candidates(text, letter)
    if starts:
        return starts[nth] if nth < len(starts) else starts[0]
    rest = anywhere or free
    return rest[0] if rest else None
