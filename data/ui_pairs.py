"""UI strings for training: gettext catalogues with their placeables masked on both sides.

Each catalogue line pair (msgid and msgstr cut at their line breaks alike) is masked as
translation masks it (:mod:`data.placeables`): the English side numbers its placeables
``{1}``, ``{2}``, ... in order, the German side gets the same sentinel for the same
placeable (:func:`data.placeables.mask_like`), so a model learns to carry them over and to
move them.
Pairs whose placeables differ are dropped and counted. The replay sample of an existing
training split keeps what the model knew.

    python -m data.ui_pairs OUT_DIR [--packages gcc-12-locales libreoffice-l10n-de]

writes ``OUT_DIR/train.tsv`` (catalogue pairs + twice as many replayed pairs), ``dev.tsv`` and
``test.tsv`` (the shipped corpus's, unchanged) and ``stats.json``.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import random
import tempfile
from collections import Counter
from pathlib import Path

from data.build import GETTEXT_PACKAGES, RELEASE, RESERVED, check_packages
from data.debian import download_package, extract, update_indexes
from data.placeables import mask_like as mask_like
from data.sources.gettext_mo import parse_mo
from data.sources.text import DROPPED_LINES_DIFFER, DROPPED_PLACEABLES_DIFFER, mask_pair

CORPUS = Path(__file__).resolve().parent / "corpus"


def masked_pairs(pairs: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], int]:
    """(masked line pairs, pairs dropped because their lines or placeables differ)."""
    counts: Counter[str] = Counter()
    out = [line for en, de in pairs for line in mask_pair(en, de, counts)]
    return out, counts[DROPPED_LINES_DIFFER] + counts[DROPPED_PLACEABLES_DIFFER]


def catalogue_pairs(root: Path, packages: tuple[str, ...]) -> list[tuple[str, str]]:
    """(msgid, msgstr) of the German catalogues of ``packages`` (never a reserved one)."""
    check_packages(packages)
    update_indexes(root, RELEASE, ("en", "de"))
    pairs: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for pkg in packages:
            deb = download_package(root, pkg)
            dest = extract(deb.path, Path(tmp) / pkg, ["*/de/LC_MESSAGES/*.mo"])
            for mo in sorted(dest.rglob("de/LC_MESSAGES/*.mo")):
                if mo.stem not in RESERVED:
                    pairs.extend(parse_mo(mo.read_bytes(), str(mo)))
    return pairs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data.ui_pairs", description=__doc__)
    ap.add_argument("out", type=Path)
    ap.add_argument("--packages", nargs="+", default=list(GETTEXT_PACKAGES[:2]))
    ap.add_argument("--root", type=Path, default=Path("~/.cache/pipenmt/placeables").expanduser())
    args = ap.parse_args(argv)
    masked, dropped = masked_pairs(catalogue_pairs(args.root, tuple(args.packages)))
    ui = sorted(set(masked))
    random.Random(1).shuffle(ui)
    with gzip.open(CORPUS / "debian_de_en.train.tsv.gz", "rt", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    random.Random(2).shuffle(rows)
    replay = [(a, b) for a, b in rows[: 2 * len(ui)]]
    train = ui + replay
    random.Random(3).shuffle(train)
    args.out.mkdir(parents=True, exist_ok=True)
    lines = ["en\tde", *(f"{a}\t{b}" for a, b in train)]
    (args.out / "train.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for split in ("dev", "test"):
        with gzip.open(CORPUS / f"debian_de_en.{split}.tsv.gz", "rt", encoding="utf-8") as f:
            (args.out / f"{split}.tsv").write_text(f.read(), encoding="utf-8")
    stats = {
        "packages": args.packages,
        "ui_pairs": len(ui),
        "ui_pairs_with_placeables": sum("{1}" in a for a, _ in ui),
        "dropped_placeables_differ": dropped,
        "replay_pairs": len(replay),
    }
    (args.out / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
