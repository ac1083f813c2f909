"""The fine-tuning set of the shipped models: a built corpus's training split, minus anything a
shipped model is scored on, plus the shipped training split replayed.

    python -m data.finetune_set OUT_DIR [--corpus debian_ui_de_en] [--base debian_de_en]
        [--replay 1] [--cache ~/.cache/pipenmt]

``--corpus`` must have been built (``nmt-prepare data=debian_ui_de_en``). Its training pairs
whose English or German side occurs in the base corpus's dev or test split (the normalised key
of :mod:`data.dedup_key`) are dropped, so the base test split stays unseen; the base corpus's
training split follows ``--replay`` times (what the model knew keeps its weight). Writes
``OUT_DIR/train.tsv``, ``dev.tsv`` and ``test.tsv`` (the base corpus's, unchanged) and
``stats.json``; then ``nmt-train data=files data.train=OUT_DIR/train.tsv ...``.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
from pathlib import Path

from data.build import SHIPPED_DIR
from data.dedup_key import seen, side_keys

Pair = tuple[str, str]


def read_tsv_gz(path: Path) -> list[Pair]:
    """The (en, de) rows of a corpus file (header skipped)."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [(a, b) for a, b in rows[1:]]


def base_file(name: str, split: str, cache: Path) -> Path:
    """A split of corpus ``name``: the shipped copy if there is one, else the built one."""
    shipped = SHIPPED_DIR / f"{name}.{split}.tsv.gz"
    return shipped if shipped.exists() else cache / "corpora" / name / f"{name}.{split}.tsv.gz"


def finetune_pairs(
    new_train: list[Pair], base_train: list[Pair], held: list[Pair], replay: int
) -> tuple[list[Pair], int]:
    """(``new_train`` without pairs that share a side with ``held``, then ``base_train``
    ``replay`` times; the number dropped)."""
    keys = [side_keys(p[i] for p in held) for i in (0, 1)]
    kept = [p for p in new_train if not seen(p, keys)]
    return kept + base_train * replay, len(new_train) - len(kept)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data.finetune_set", description=__doc__)
    ap.add_argument("out", type=Path)
    ap.add_argument("--corpus", default="debian_ui_de_en")
    ap.add_argument("--base", default="debian_de_en")
    ap.add_argument("--replay", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=Path("~/.cache/pipenmt").expanduser())
    args = ap.parse_args(argv)
    built = args.cache / "corpora" / args.corpus / f"{args.corpus}.train.tsv.gz"
    if not built.exists():
        ap.error(f"{built} not found: build it with nmt-prepare data={args.corpus}")
    new = read_tsv_gz(built)
    held = [p for s in ("dev", "test") for p in read_tsv_gz(base_file(args.base, s, args.cache))]
    base = read_tsv_gz(base_file(args.base, "train", args.cache))
    train, dropped = finetune_pairs(new, base, held, args.replay)
    args.out.mkdir(parents=True, exist_ok=True)
    lines = "".join(f"{a}\t{b}\n" for a, b in train)
    (args.out / "train.tsv").write_text("en\tde\n" + lines, encoding="utf-8")
    for split in ("dev", "test"):
        with gzip.open(base_file(args.base, split, args.cache), "rt", encoding="utf-8") as f:
            (args.out / f"{split}.tsv").write_text(f.read(), encoding="utf-8")
    stats = {
        "corpus": args.corpus,
        "base": args.base,
        "corpus_train": len(new),
        "dropped_shared_with_base_dev_test": dropped,
        "replay": args.replay,
        "base_train": len(base),
        "train": len(train),
        "train_with_sentinels": sum("{1}" in a for a, _ in train),
    }
    (args.out / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
