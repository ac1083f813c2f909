"""A tiny synthetic en-de corpus (word-by-word 'translations' of random sentences) for tests,
fault-injection scripts and smoke runs: real file formats, no downloads."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

WORDS = {
    "the": "das", "a": "ein", "house": "Haus", "cat": "Katze", "dog": "Hund", "runs": "läuft",
    "sleeps": "schläft", "big": "groß", "small": "klein", "red": "rot", "blue": "blau",
    "green": "grün", "file": "Datei", "opens": "öffnet", "closes": "schließt",
    "window": "Fenster", "menu": "Menü", "and": "und",
}  # fmt: skip


def write_corpus(folder: Path, sizes: dict[str, int], seed: int = 0) -> dict[str, Path]:
    """Write ``{split}.tsv.gz`` files (header ``en\\tde``) with ``sizes[split]`` pairs each."""
    rng = random.Random(seed)
    words = sorted(WORDS)
    paths: dict[str, Path] = {}
    for split, n in sizes.items():
        path = folder / f"{split}.tsv.gz"
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write("en\tde\n")
            for _ in range(n):
                s = [rng.choice(words) for _ in range(rng.randint(2, 9))]
                f.write(" ".join(s) + "\t" + " ".join(WORDS[w] for w in s) + "\n")
        paths[split] = path
    return paths
