"""How much of the multilingual corpus's held-out English a multilingual model has seen.

    python scripts/multi_overlap.py --out docs/results/multilingual/overlap.json

``nmt-prepare data=debian_multi`` drops an en-xx dev/test pair whose English sentence occurs
in en-xx's training split, as the en-de corpus does. A model trained on several pairs also
reads the other pairs' training English; for every en-xx dev/test split this counts the
pairs whose English sentence occurs in another en-yy training split (boilerplate shared
across packages or help pages). Needs the built corpus (``nmt-prepare data=debian_multi``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data.atomic import atomic_write_text  # noqa: E402
from data.multi import MULTI_LANGS, MULTI_NAME, load_pairs, multi_folder  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", type=Path, default=Path("~/.cache/pipenmt").expanduser())
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    folder = multi_folder(args.cache_dir)
    train = {x: {en for en, _ in load_pairs(folder, MULTI_NAME, "en", x, "train")}
             for x in MULTI_LANGS}  # fmt: skip
    rows: dict[str, dict[str, dict[str, float | int]]] = {}
    for x in MULTI_LANGS:
        others = set().union(*(train[y] for y in MULTI_LANGS if y != x))
        for split in ("dev", "test"):
            english = [en for en, _ in load_pairs(folder, MULTI_NAME, "en", x, split)]
            seen = sum(en in others for en in english)
            rows.setdefault(f"en-{x}", {})[split] = {
                "pairs": len(english),
                "english_in_other_train": seen,
                "share": round(seen / max(1, len(english)), 4),
                "english_in_own_train": sum(en in train[x] for en in english),
            }
    doc = {"bench": "multi_overlap", "corpus": MULTI_NAME, "pairs": rows}
    text = json.dumps(doc, indent=1) + "\n"
    print(text, end="")
    if args.out:
        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
