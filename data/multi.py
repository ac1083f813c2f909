"""The multilingual Debian corpus ``debian_multi``: English with German, French and Spanish,
plus the non-English pairs for zero-shot evaluation, from the sources of ``debian_de_en``
(DDTP package descriptions, LibreOffice help).

Files in ``<cache>/corpora/debian_multi/``: ``debian_multi.<a>-<b>.<split>.tsv.gz`` (header
``a<TAB>b``, then one pair a line): ``en-xx`` for train/dev/test, ``xx-yy`` (zero-shot) for
dev/test only; ``debian_multi.provenance.json`` is written last (it marks a complete build).

Splits follow ``build.split_of`` on the same groups (package / help page) for every language,
so a group is in one split in every language. ``en-xx`` is built like ``debian_de_en`` (clean,
split, drop dev/test pairs whose English or xx key, ``dedup_key``, occurs on that side of
``en-xx`` train), then drops the dev/test pairs whose English key occurs in any other ``en-*``
train pair: a multilingual model trains on every pair, so a sentence counts as seen in any of
them (``en-de`` is ``debian_de_en`` less those pairs). ``xx-yy`` pairs join an ``en-xx`` and an
``en-yy`` unit with the same (group, key, aligned English text) from dev/test groups only, and
drop those whose English, xx or yy key occurs in that language's text of any ``en-*`` train
pair.
"""

from __future__ import annotations

import gzip
import itertools
import json
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.atomic import atomic_write_bytes, atomic_write_text
from data.build import (
    HELP_ROOT,
    LICENCES,
    RELEASE,
    SPLITS,
    BuiltCorpus,
    Log,
    assign_splits,
    provenance_path,
    split_of,
    tsv_gz,
)
from data.debian import FetchedFile, download_package, extract, update_indexes
from data.dedup_key import RULE, seen, side_keys
from data.errors import DataError
from data.sources import ddtp, lohelp
from data.sources.text import Unit, clean_pairs

MULTI_NAME = "debian_multi"
MULTI_LANGS = ("de", "fr", "es")
PIVOT = "en"
EVAL_SPLITS = ("dev", "test")
_LANG = re.compile(r"[a-z]{2,3}(_[A-Z]{2})?")

Row = tuple[str, str, str]  # (source, text in language a, text in language b)
PairKey = tuple[str, str]  # (a, b): the column order of the pair's files
SourceUnits = dict[str, list[Unit]]  # source ("ddtp", "lohelp") -> cleaned units of one language


@dataclass(frozen=True)
class MultiSplits:
    """Every stored pair's rows per split, and the dev/test pairs dropped for overlap."""

    rows: dict[PairKey, dict[str, list[Row]]]
    dropped: dict[str, dict[str, int]]


def pair_file(folder: Path, name: str, a: str, b: str, split: str) -> Path:
    """The file of pair ``a-b`` (column 1 ``a``, column 2 ``b``) for ``split``."""
    return folder / f"{name}.{a}-{b}.{split}.tsv.gz"


def stored_pairs(langs: Sequence[str] = MULTI_LANGS) -> dict[PairKey, tuple[str, ...]]:
    """(a, b) -> the splits stored for it: ``en-xx`` all, ``xx-yy`` (``langs`` order) dev/test."""
    pairs: dict[PairKey, tuple[str, ...]] = {(PIVOT, x): SPLITS for x in langs}
    pairs.update({(a, b): EVAL_SPLITS for a, b in itertools.combinations(langs, 2)})
    return pairs


def check_langs(langs: Sequence[str]) -> tuple[str, ...]:
    """The non-English languages, checked: distinct, not ``en``, codes like ``fr`` / ``pt_BR``."""
    bad = [x for x in langs if x == PIVOT or not _LANG.fullmatch(x)]
    if not langs or bad or len(set(langs)) != len(langs):
        raise DataError(
            f"debian_multi languages must be distinct non-English codes like 'fr' or 'pt_BR', "
            f"got {list(langs)}"
        )
    return tuple(langs)


def lo_package(lang: str) -> str:
    """The LibreOffice help package of a language (``en`` -> ``libreoffice-help-en-us``)."""
    return "libreoffice-help-en-us" if lang == PIVOT else f"libreoffice-help-{_dashed(lang)}"


def lo_folder(lang: str) -> str:
    """The language's folder under ``usr/share/libreoffice/help``."""
    return "en-US" if lang == PIVOT else lang.replace("_", "-")


def _dashed(lang: str) -> str:
    return lang.lower().replace("_", "-")


# ---------------------------------------------------------------- harvest and assemble


def clean_units(units: Iterable[Unit]) -> list[Unit]:
    """``text.clean_pairs`` on (group, en, xx), keeping each kept unit's group and key."""
    pool = list(units)
    indexed = ((str(i), u.en, u.xx) for i, u in enumerate(pool))
    return [
        Unit(pool[int(i)].group, pool[int(i)].key, en, xx) for i, en, xx in clean_pairs(indexed)
    ]


def pivot_splits(units: SourceUnits) -> tuple[dict[str, list[Row]], dict[str, int]]:
    """``en-xx`` rows per split, as ``build.assign_splits`` makes them for ``debian_de_en``."""
    sources = {src: [(u.group, u.en, u.xx) for u in us] for src, us in units.items()}
    by_split, dropped = assign_splits(sources)
    return by_split, {s: dropped[f"{s}_dropped_overlap"] for s in EVAL_SPLITS}


def train_keys(rows: dict[PairKey, dict[str, list[Row]]]) -> dict[str, set[str]]:
    """Language -> the ``dedup_key`` of its text in every ``en-*`` train pair."""
    keys: dict[str, set[str]] = {PIVOT: set()}
    for (a, b), by_split in rows.items():
        if a == PIVOT:
            keys[PIVOT] |= side_keys(en for _, en, _ in by_split["train"])
            keys[b] = side_keys(xx for _, _, xx in by_split["train"])
    return keys


def drop_seen(by_split: dict[str, list[Row]], keys: Sequence[set[str]]) -> dict[str, int]:
    """Drop (in place) the dev/test rows with a side whose key is in that side's ``keys``;
    return how many per split."""
    dropped = {}
    for split in EVAL_SPLITS:
        kept = [r for r in by_split[split] if not seen(r[1:], keys)]
        dropped[split] = len(by_split[split]) - len(kept)
        by_split[split] = kept
    return dropped


def zero_shot_splits(
    units_a: SourceUnits, units_b: SourceUnits, keys: Sequence[set[str]]
) -> tuple[dict[str, list[Row]], dict[str, int]]:
    """``a-b`` dev/test rows: an ``en-a`` and an ``en-b`` unit of the same source with the same
    (group, key, English text), from dev/test groups; dropped when the English, a or b text's
    key is in ``keys`` (English, a, b: each language's train keys); then cleaned like every
    pair (per source)."""
    by_split: dict[str, list[Row]] = {s: [] for s in EVAL_SPLITS}
    dropped = dict.fromkeys(EVAL_SPLITS, 0)
    for source, a_units in units_a.items():
        b_text: dict[tuple[str, str, str], str] = {}
        for u in units_b.get(source, []):
            b_text.setdefault((u.group, u.key, u.en), u.xx)
        candidates: list[tuple[str, str, str]] = []
        for u in a_units:
            split, xb = split_of(u.group), b_text.get((u.group, u.key, u.en))
            if split == "train" or xb is None:
                continue
            if seen((u.en, u.xx, xb), keys):
                dropped[split] += 1
                continue
            candidates.append((u.group, u.xx, xb))
        for group, xa, xb in clean_pairs(candidates):
            by_split[split_of(group)].append((source, xa, xb))
    return by_split, dropped


def assemble(units: dict[str, SourceUnits], langs: Sequence[str] = MULTI_LANGS) -> MultiSplits:
    """All stored pairs from each language's cleaned units (language -> source -> units)."""
    rows: dict[PairKey, dict[str, list[Row]]] = {}
    dropped: dict[str, dict[str, int]] = {}
    for x in langs:
        rows[(PIVOT, x)], dropped[f"{PIVOT}-{x}"] = pivot_splits(units[x])
    keys = train_keys(rows)
    for x in langs:
        more = drop_seen(rows[(PIVOT, x)], (keys[PIVOT], set()))
        dropped[f"{PIVOT}-{x}"] = {s: n + more[s] for s, n in dropped[f"{PIVOT}-{x}"].items()}
    for a, b in itertools.combinations(langs, 2):
        trio = (keys[PIVOT], keys[a], keys[b])
        rows[(a, b)], dropped[f"{a}-{b}"] = zero_shot_splits(units[a], units[b], trio)
    return MultiSplits(rows, dropped)


def _help_units(
    root: Path, langs: Sequence[str], log: Log
) -> tuple[dict[str, list[Unit]], dict[str, FetchedFile]]:
    """LibreOffice help units per language (packages at one version) and the packages."""
    debs = {lang: download_package(root, lo_package(lang)) for lang in (PIVOT, *langs)}
    versions = {f.name: f.version for f in debs.values()}
    if len(set(versions.values())) != 1:
        raise DataError(f"LibreOffice help packages differ in version: {versions}")
    folders: dict[str, Path] = {}
    for lang, deb in debs.items():
        folders[lang] = extract(deb.path, root / "x" / deb.name) / HELP_ROOT / lo_folder(lang)
        if not folders[lang].is_dir():
            raise DataError(f"{deb.path.name} has no help folder {HELP_ROOT}/{lo_folder(lang)}")
    log(f"aligning LibreOffice help pages (en-US with {', '.join(langs)})")
    return lohelp.harvest_many(folders[PIVOT], {x: folders[x] for x in langs}), debs


def harvest_multi(
    root: Path, langs: Sequence[str], log: Log
) -> tuple[dict[str, SourceUnits], dict[str, Any]]:
    """Fetch the sources into ``root``; return language -> source -> cleaned units, and where
    the text came from (release, index and package digests)."""
    log(f"apt-get update ({RELEASE}, Translation-{'/'.join((PIVOT, *langs))}) into {root}")
    indexes, date = update_indexes(root, RELEASE, (PIVOT, *langs))
    english = ddtp.english_descriptions(indexes[PIVOT].path)
    units: dict[str, SourceUnits] = {x: {} for x in langs}
    for x in langs:
        log(f"aligning DDTP package descriptions en-{x}")
        units[x]["ddtp"] = clean_units(ddtp.harvest_units(english, indexes[x].path))
    help_units, debs = _help_units(root, langs, log)
    for x in langs:
        units[x]["lohelp"] = clean_units(help_units[x])
    origin = {
        "debian_release": RELEASE,
        "release_date": date,
        "indexes": {f.name: {"sha256": f.sha256} for f in indexes.values()},
        "packages": {f.name: {"version": f.version, "sha256": f.sha256} for f in debs.values()},
    }
    return units, origin


# ---------------------------------------------------------------- write


def write_multi(
    folder: Path, name: str, splits: MultiSplits, origin: dict[str, Any], langs: Sequence[str]
) -> dict[str, Any]:
    """Write every pair file atomically, then the provenance (returned)."""
    provenance_path(folder, name).unlink(missing_ok=True)  # incomplete until rewritten
    files: dict[str, dict[str, Any]] = {}
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for (a, b), by_split in splits.rows.items():
        pair = f"{a}-{b}"
        files[pair], counts[pair] = {}, {}
        for split, rows in by_split.items():
            blob, digest, n = tsv_gz(((ta, tb) for _, ta, tb in rows), (a, b))
            path = pair_file(folder, name, a, b, split)
            atomic_write_bytes(path, blob)
            files[pair][split] = {"file": path.name, "sha256_text": digest, "pairs": n}
            per_source = Counter(src for src, _, _ in rows)
            counts[pair][split] = {**dict(sorted(per_source.items())), "total": n}
    provenance = {
        "corpus": name,
        "languages": [PIVOT, *langs],
        **origin,
        "licences": {k: LICENCES[k] for k in ("ddtp", "lohelp")},
        "command": f"nmt-prepare data={name}",
        "split_rule": "crc32(group) % 25: 0 -> test, 1 -> dev, else train; group = package "
        "name (ddtp) / help page path (lohelp), the same for every language",
        "zero_shot_rule": "xx-yy pairs (dev/test only) join the en-xx and en-yy units with the "
        "same group, key (description md5 / help paragraph id) and aligned English text",
        "overlap_rule": f"{RULE}; a language's train keys are those of its text in every en-* "
        "train pair (en-xx: the xx key against en-xx train, the English key against every en-* "
        "train; xx-yy: the English, xx and yy keys)",
        "counts": counts,
        "dropped_overlap": splits.dropped,
        "files": files,
    }
    atomic_write_text(provenance_path(folder, name), json.dumps(provenance, indent=2) + "\n")
    return provenance


def build_multi(
    cache_dir: Path, langs: Sequence[str] = MULTI_LANGS, log: Log = print, name: str = MULTI_NAME
) -> BuiltCorpus:
    """Build ``name`` into ``cache_dir/corpora/name`` (apt cache in ``cache_dir/debian``)."""
    langs = check_langs(langs)
    out = cache_dir / "corpora" / name
    out.mkdir(parents=True, exist_ok=True)
    units, origin = harvest_multi(cache_dir / "debian", langs, log)
    return BuiltCorpus(out, write_multi(out, name, assemble(units, langs), origin, langs))


# ---------------------------------------------------------------- read


def multi_folder(cache_dir: Path, name: str = MULTI_NAME) -> Path:
    """The folder of a complete build of ``name`` (its provenance written)."""
    folder = cache_dir / "corpora" / name
    if not provenance_path(folder, name).is_file():
        raise DataError(
            f"corpus '{name}' is not built in {folder}: run `nmt-prepare data={name}` first"
        )
    return folder


def available_pairs(folder: Path, name: str, split: str) -> list[PairKey]:
    """The (a, b) pairs with a ``split`` file in ``folder`` (each readable both ways)."""
    prefix, suffix = f"{name}.", f".{split}.tsv.gz"
    found: list[PairKey] = []
    for path in sorted(folder.glob(f"{prefix}*-*{suffix}")):
        a, _, b = path.name[len(prefix) : -len(suffix)].partition("-")
        if _LANG.fullmatch(a) and _LANG.fullmatch(b):
            found.append((a, b))
    return found


def read_pair_file(path: Path, columns: PairKey) -> list[tuple[str, str]]:
    """The (column 1, column 2) rows of a pair file whose header names ``columns``."""
    try:
        with gzip.open(path, "rt", encoding="utf-8", newline="\n") as f:
            header = f.readline().rstrip("\n")
            if header != "\t".join(columns):
                raise DataError(
                    f"{path} line 1: header {header!r}, expected {columns[0]}<TAB>{columns[1]}"
                )
            return [_fields(path, n, line) for n, line in enumerate(f, start=2)]
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as err:
        raise DataError(f"cannot read {path}: {err}") from err


def _fields(path: Path, n: int, line: str) -> tuple[str, str]:
    fields = line.rstrip("\n").split("\t")
    if len(fields) != 2:
        raise DataError(f"{path} line {n}: {len(fields)} tab-separated fields, expected 2")
    return fields[0], fields[1]


def load_pairs(folder: Path, name: str, src: str, tgt: str, split: str) -> list[tuple[str, str]]:
    """(src, tgt) text pairs of ``split`` for any stored direction: reads ``src-tgt``, or
    ``tgt-src`` with the columns swapped."""
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}' of {name}; known: {', '.join(SPLITS)}")
    if src != tgt:
        for a, b in ((src, tgt), (tgt, src)):
            path = pair_file(folder, name, a, b, split)
            if path.is_file():
                rows = read_pair_file(path, (a, b))
                return rows if a == src else [(t, s) for s, t in rows]
    have = ", ".join(f"{a}-{b}" for a, b in available_pairs(folder, name, split)) or (
        f"none (run `nmt-prepare data={name}`)"
    )
    raise DataError(
        f"no {src}->{tgt} {split} pairs of {name}: "
        f"{pair_file(folder, name, src, tgt, split)} does not exist (nor {tgt}-{src}); "
        f"available {split} pairs (either direction): {have}"
    )
