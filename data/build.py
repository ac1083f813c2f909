"""Build the Debian-sourced en-de corpora: harvest, split by group, write, record provenance.

``debian_de_en`` (shipped under ``data/corpus/``): DDTP package descriptions + LibreOffice help.
``debian_de_en_full``: the same plus gettext catalogs of the packages in ``GETTEXT_PACKAGES``.
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
from data.dedup_key import RULE, seen, side_keys
from data.errors import DataError
from data.sources import ddtp, gettext_mo, lohelp
from data.sources.text import clean_pairs

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
CORPORA: dict[str, tuple[str, ...]] = {
    "debian_de_en": (),
    "debian_de_en_full": GETTEXT_PACKAGES,
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


def _harvest_sources(
    root: Path, gettext_pkgs: tuple[str, ...], log: Log
) -> tuple[dict[str, list[Triple]], dict[str, Any]]:
    log(f"apt-get update ({RELEASE}, Translation-en/de) into {root}")
    indexes, date = update_indexes(root, RELEASE, ("en", "de"))
    sources: dict[str, list[Triple]] = {}
    log("aligning DDTP package descriptions")
    sources["ddtp"] = list(clean_pairs(ddtp.harvest(indexes["en"].path, indexes["de"].path)))
    debs: list[FetchedFile] = [download_package(root, p) for p in LO_PACKAGES]
    log("aligning LibreOffice help pages")
    en_dir = extract(debs[0].path, root / "x" / debs[0].name)
    de_dir = extract(debs[1].path, root / "x" / debs[1].name)
    sources["lohelp"] = list(
        clean_pairs(lohelp.harvest(en_dir / HELP_ROOT / "en-US", de_dir / HELP_ROOT / "de"))
    )
    if gettext_pkgs:
        triples: list[Triple] = []
        for pkg in gettext_pkgs:
            log(f"gettext catalogs of {pkg}")
            fetched = download_package(root, pkg)
            debs.append(fetched)
            dest = extract(fetched.path, root / "x" / pkg, ["*/de/LC_MESSAGES/*.mo"])
            triples.extend(gettext_mo.harvest(dest, pkg))
        sources["gettext"] = list(clean_pairs(triples))
    origin = {
        "debian_release": RELEASE,
        "release_date": date,
        "indexes": {f.name: {"sha256": f.sha256} for f in indexes.values()},
        "packages": {f.name: {"version": f.version, "sha256": f.sha256} for f in debs},
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
