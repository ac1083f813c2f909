"""Build the Debian-sourced en-de corpora: harvest, split by group, write, record provenance.

``debian_de_en`` (shipped under ``data/corpus/``): DDTP package descriptions + LibreOffice help.
``debian_de_en_full``: the same plus gettext catalogs of the packages in ``GETTEXT_PACKAGES``.
``debian_ui_de_en``: DDTP + LibreOffice help + the German UI catalogs of ``UI_PACKAGES``, with
pairs that hold placeables kept, masked on both sides (``clean_pairs(placeables="mask")``),
and every pair whose English occurs in the catalogs of ``RESERVED`` or ``PLACEABLES_HELD_OUT``
dropped. The other corpora drop every pair with a placeable.
Splits hold out whole groups (package / help page / catalog): ``crc32(group) % 25 == 0`` is
test, ``== 1`` is dev; dev/test pairs whose English or German side occurs on the same side in
train under ``dedup_key.dedup_key`` (NFKC, casefold, digits, punctuation) are dropped.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.atomic import atomic_write_bytes, atomic_write_text
from data.debian import FetchedFile, download_package, extract, update_indexes
from data.dedup_key import RULE, dedup_key, seen, side_keys
from data.errors import DataError
from data.placeables import SENTINEL, mask, split_lines
from data.sources import ddtp, gettext_mo, lohelp
from data.sources.gettext_mo import parse_mo
from data.sources.text import KEPT_WITH_PLACEABLES, PLACEABLE_MODES, clean_pairs

RELEASE = "bookworm"
SPLITS = ("train", "dev", "test")
SHIPPED_DIR = Path(__file__).parent / "corpus"
LO_PACKAGES = ("libreoffice-help-en-us", "libreoffice-help-de")
HELP_ROOT = "usr/share/libreoffice/help"  # inside the libreoffice-help-* packages
GETTEXT_PACKAGES = (
    "gcc-12-locales",
    "libreoffice-l10n-de",
    "freeciv-data",
    "gimp-data",
    "inkscape",
    "r-base-core",
    "blender-data",
)
# The GNU base tools reserved for an outside evaluation, and the packages the placeables
# benchmark holds out: no corpus takes their catalogs.
RESERVED = ("coreutils", "findutils", "diffutils", "grep", "sed", "tar", "gzip", "wget")
PLACEABLES_HELD_OUT = ("apt", "dpkg", "gnupg-l10n", "util-linux-locales", "e2fsprogs-l10n")
# German UI catalogs (small packages with many strings) on top of GETTEXT_PACKAGES.
UI_PACKAGES = (
    *GETTEXT_PACKAGES,
    "bash",
    "binutils-common",
    "evolution-data-server-common",
    "gettext",
    "gnome-shell-common",
    "gnumeric-common",
    "libc-l10n",
    "libglib2.0-data",
    "libgphoto2-l10n",
    "libgtk-3-common",
    "man-db",
    "mc-data",
    "nano",
    "sudo",
)


@dataclass(frozen=True)
class CorpusSpec:
    """What a Debian corpus takes: gettext packages, what ``clean_pairs`` does with
    placeables, and whether pairs whose English occurs in the reserved and held-out
    catalogs are dropped."""

    gettext: tuple[str, ...] = ()
    placeables: str = "drop"
    drop_held_out: bool = False

    def __post_init__(self) -> None:
        check_packages(self.gettext)
        if self.placeables not in PLACEABLE_MODES:
            raise DataError(f"placeables={self.placeables!r}; expected {PLACEABLE_MODES}")


def check_packages(packages: Iterable[str]) -> None:
    """Refuse the packages no corpus may take (``RESERVED``, ``PLACEABLES_HELD_OUT``)."""
    bad = sorted(set(packages) & {*RESERVED, *PLACEABLES_HELD_OUT})
    if bad:
        raise DataError(
            f"packages {', '.join(bad)} are reserved for evaluation and never used for training"
        )


CORPORA: dict[str, CorpusSpec] = {
    "debian_de_en": CorpusSpec(),
    "debian_de_en_full": CorpusSpec(GETTEXT_PACKAGES),
    "debian_ui_de_en": CorpusSpec(UI_PACKAGES, "mask", drop_held_out=True),
}
LICENCES = {
    "ddtp": "Debian package descriptions (DDTP); each text is under its package's licence",
    "lohelp": "LibreOffice help, MPL-2.0",
    "gettext": "gettext catalogs; each under its package's licence (see /usr/share/doc/PKG)",
}

Triple = tuple[str, str, str]  # (group, en, de)
Log = Callable[[str], None]


@dataclass(frozen=True)
class BuiltCorpus:
    folder: Path
    provenance: dict[str, Any]


def split_of(group: str) -> str:
    """The split a group belongs to (stable: crc32 of the group key)."""
    r = zlib.crc32(group.encode("utf-8")) % 25
    return "test" if r == 0 else "dev" if r == 1 else "train"


def assign_splits(sources: dict[str, list[Triple]]) -> tuple[dict[str, list[Triple]], Counter[str]]:
    """Split every source by group; drop dev/test pairs whose English key or German key
    (``dedup_key``) occurs on the same side in train."""
    by_split: dict[str, list[Triple]] = {s: [] for s in SPLITS}
    counts: Counter[str] = Counter()
    for source, triples in sources.items():
        for group, en, de in triples:
            by_split[split_of(group)].append((source, en, de))
    keys = [side_keys(t[i] for t in by_split["train"]) for i in (1, 2)]
    for split in ("dev", "test"):
        kept = [t for t in by_split[split] if not seen(t[1:], keys)]
        counts[f"{split}_dropped_overlap"] = len(by_split[split]) - len(kept)
        by_split[split] = kept
    return by_split, counts


def tsv_gz(
    rows: Iterable[tuple[str, str]], columns: tuple[str, str] = ("en", "de")
) -> tuple[bytes, str, int]:
    """Deterministic gzip (mtime 0) of a TSV with a header naming the ``columns``' languages;
    returns (bytes, sha256 of the text, pairs)."""
    text = "\t".join(columns) + "\n" + "".join(f"{a}\t{b}\n" for a, b in rows)
    raw = text.encode("utf-8")
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(raw)
    return buf.getvalue(), hashlib.sha256(raw).hexdigest(), text.count("\n") - 1


def _catalog_triples(root: Path, pkg: str, raw: bool) -> tuple[FetchedFile, list[Triple]]:
    """(the package, its German catalogs' (``package:catalog``, en, de)): as msgfmt wrote
    them (``raw``) or with accelerators stripped (``gettext_mo.harvest``); catalogs named
    after a reserved or held-out package are skipped."""
    fetched = download_package(root, pkg)
    dest = extract(fetched.path, root / "x" / pkg, ["*/de/LC_MESSAGES/*.mo"])
    if not raw:
        return fetched, list(gettext_mo.harvest(dest, pkg))
    triples: list[Triple] = []
    for mo in sorted(dest.rglob("de/LC_MESSAGES/*.mo")):
        if mo.stem not in {*RESERVED, *PLACEABLES_HELD_OUT}:
            triples.extend((f"{pkg}:{mo.stem}", en, de) for en, de in parse_mo(mo.read_bytes()))
    return fetched, triples


def held_out_keys(root: Path, log: Log) -> tuple[set[str], list[FetchedFile]]:
    """The ``dedup_key`` of every masked English line in the German catalogs of the reserved
    and held-out packages (and those packages)."""
    keys: set[str] = set()
    debs: list[FetchedFile] = []
    for pkg in (*RESERVED, *PLACEABLES_HELD_OUT):
        log(f"held-out catalogs of {pkg}")
        fetched, triples = _catalog_triples(root, pkg, raw=True)
        debs.append(fetched)
        for _, en, _ in triples:
            keys.update(dedup_key(mask(line).text) for _, line, _ in split_lines(en).parts)
    keys.discard("")
    return keys, debs


def _harvest_sources(
    root: Path, spec: CorpusSpec, log: Log
) -> tuple[dict[str, list[Triple]], dict[str, Any]]:
    log(f"apt-get update ({RELEASE}, Translation-en/de) into {root}")
    indexes, date = update_indexes(root, RELEASE, ("en", "de"))
    mode = spec.placeables
    stats: dict[str, Counter[str]] = {k: Counter() for k in ("ddtp", "lohelp", "gettext")}
    sources: dict[str, list[Triple]] = {}
    log("aligning DDTP package descriptions")
    ddtp_units = ddtp.harvest(indexes["en"].path, indexes["de"].path)
    sources["ddtp"] = list(clean_pairs(ddtp_units, placeables=mode, stats=stats["ddtp"]))
    debs: list[FetchedFile] = [download_package(root, p) for p in LO_PACKAGES]
    log("aligning LibreOffice help pages")
    en_dir = extract(debs[0].path, root / "x" / debs[0].name)
    de_dir = extract(debs[1].path, root / "x" / debs[1].name)
    pages = lohelp.harvest(en_dir / HELP_ROOT / "en-US", de_dir / HELP_ROOT / "de")
    sources["lohelp"] = list(clean_pairs(pages, placeables=mode, stats=stats["lohelp"]))
    if spec.gettext:
        triples: list[Triple] = []
        for pkg in spec.gettext:
            log(f"gettext catalogs of {pkg}")
            fetched, found = _catalog_triples(root, pkg, raw=mode == "mask")
            debs.append(fetched)
            triples.extend(found)
        sources["gettext"] = list(clean_pairs(triples, placeables=mode, stats=stats["gettext"]))
    origin: dict[str, Any] = {
        "debian_release": RELEASE,
        "release_date": date,
        "indexes": {f.name: {"sha256": f.sha256} for f in indexes.values()},
        "packages": {f.name: {"version": f.version, "sha256": f.sha256} for f in debs},
    }
    if spec.drop_held_out:
        keys, held = held_out_keys(root, log)
        for source, kept in sources.items():
            sources[source] = [t for t in kept if dedup_key(t[1]) not in keys]
            stats[source]["dropped_held_out"] = len(kept) - len(sources[source])
            with_sentinels = sum(SENTINEL.search(t[1]) is not None for t in sources[source])
            stats[source][KEPT_WITH_PLACEABLES] = with_sentinels  # of the pairs left
        origin["held_out_packages"] = {
            f.name: {"version": f.version, "sha256": f.sha256} for f in held
        }
    if mode == "mask":
        origin["placeables"] = {
            "mode": mode,
            "rule": "texts cut at line breaks alike, placeables masked as {1}, {2}, ... on "
            "both sides; pairs whose lines or placeables differ dropped",
            "sources": {k: dict(sorted(stats[k].items())) for k in sources},
            "gettext_catalogs": dict(
                sorted(Counter(t[0] for t in sources.get("gettext", [])).items())
            ),
        }
    return sources, origin


def build_corpus(name: str, cache_dir: Path, log: Log = print) -> BuiltCorpus:
    """Build corpus ``name`` into ``cache_dir/corpora/name`` (files first, provenance last)."""
    if name not in CORPORA:
        raise DataError(f"unknown Debian corpus '{name}'; known: {', '.join(CORPORA)}")
    out = cache_dir / "corpora" / name
    out.mkdir(parents=True, exist_ok=True)
    sources, origin = _harvest_sources(cache_dir / "debian", CORPORA[name], log)
    by_split, dropped = assign_splits(sources)
    files: dict[str, Any] = {}
    counts: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        blob, digest, lines = tsv_gz((en, de) for _, en, de in by_split[split])
        atomic_write_bytes(out / f"{name}.{split}.tsv.gz", blob)
        files[split] = {"file": f"{name}.{split}.tsv.gz", "sha256_text": digest, "pairs": lines}
        per_source = Counter(src for src, _, _ in by_split[split])
        counts[split] = {**dict(sorted(per_source.items())), "total": lines}
        if "placeables" in origin:
            with_sentinels = sum(SENTINEL.search(en) is not None for _, en, _ in by_split[split])
            origin["placeables"].setdefault("pairs_with_placeables", {})[split] = with_sentinels
    provenance = {
        "corpus": name,
        **origin,
        "licences": {k: v for k, v in LICENCES.items() if k in sources},
        "command": f"nmt-prepare data={name}",
        "split_rule": "crc32(group) % 25: 0 -> test, 1 -> dev, else train",
        "overlap_rule": RULE,
        "counts": counts,
        "dropped_overlap": dict(dropped),
        "files": files,
    }
    atomic_write_text(provenance_path(out, name), json.dumps(provenance, indent=2) + "\n")
    return BuiltCorpus(out, provenance)


def provenance_path(folder: Path, name: str) -> Path:
    """Where a corpus folder records its provenance (written last: it marks a complete build)."""
    return folder / f"{name}.provenance.json"


def load_provenance(folder: Path, name: str) -> dict[str, Any] | None:
    path = provenance_path(folder, name)
    if not path.is_file():
        return None
    result: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return result


def compare(built: dict[str, Any], shipped: dict[str, Any]) -> list[str]:
    """Differences between a rebuilt corpus and the shipped one (empty list: identical)."""
    diffs: list[str] = []
    for split in SPLITS:
        b, s = built["files"][split], shipped["files"][split]
        if b["sha256_text"] != s["sha256_text"]:
            diffs.append(
                f"{split}: {s['pairs']} pairs shipped, {b['pairs']} rebuilt (text differs)"
            )
    if not diffs:
        return diffs
    for kind in ("indexes", "packages"):
        for key, info in built[kind].items():
            old = shipped[kind].get(key, {})
            if old.get("version", "") != info.get("version", ""):
                diffs.append(f"{key}: version {old.get('version')} -> {info.get('version')}")
            elif old.get("sha256") != info.get("sha256"):
                diffs.append(f"{key}: content changed (sha256 differs)")
    if built.get("release_date") != shipped.get("release_date"):
        diffs.append(
            f"{RELEASE} Release date {shipped.get('release_date')} -> {built.get('release_date')}"
        )
    return diffs


def corpus_files(name: str, cache_dir: Path) -> dict[str, Path]:
    """Split -> file for a Debian corpus: the shipped copy, else a complete build in the cache."""
    for folder in (SHIPPED_DIR, cache_dir / "corpora" / name):
        paths = {s: folder / f"{name}.{s}.tsv.gz" for s in SPLITS}
        if provenance_path(folder, name).is_file() and all(p.is_file() for p in paths.values()):
            return paths
    raise DataError(
        f"corpus '{name}' is not built: run `nmt-prepare data={name}` first "
        f"(looked in {SHIPPED_DIR} and {cache_dir / 'corpora' / name})"
    )
