"""A tiny synthetic en-de corpus (word-by-word 'translations' of random sentences) for tests,
fault-injection scripts and smoke runs: real file formats, no downloads."""

from __future__ import annotations

import gzip
import json
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


FR = {
    "the": "le", "a": "un", "house": "maison", "cat": "chat", "dog": "chien", "runs": "court",
    "sleeps": "dort", "big": "grand", "small": "petit", "red": "rouge", "blue": "bleu",
    "green": "vert", "file": "fichier", "opens": "ouvre", "closes": "ferme",
    "window": "fenêtre", "menu": "menu", "and": "et",
}  # fmt: skip


def write_multi_corpus(
    cache_dir: Path, sizes: dict[str, int], name: str = "debian_multi", seed: int = 0
) -> Path:
    """A tiny corpus in the layout of ``data.multi`` (``<cache>/corpora/<name>/``): en-de and
    en-fr pairs per split (different English sentences in each), de-fr dev/test pairs for
    zero-shot, and a provenance file. Returns the folder."""
    from data.build import provenance_path

    rng = random.Random(seed)
    words = sorted(WORDS)
    folder = cache_dir / "corpora" / name
    folder.mkdir(parents=True, exist_ok=True)
    counts: dict[str, dict[str, int]] = {}
    for split, n in sizes.items():
        rows: dict[tuple[str, str], list[str]] = {("en", "de"): [], ("en", "fr"): []}
        if split != "train":
            rows["de", "fr"] = []
        for i in range(2 * n):
            s = [rng.choice(words) for _ in range(rng.randint(2, 8))]
            de, fr = " ".join(WORDS[w] for w in s), " ".join(FR[w] for w in s)
            rows["en", "de" if i % 2 else "fr"].append(f"{' '.join(s)}\t{de if i % 2 else fr}")
            if ("de", "fr") in rows and i % 2:
                rows["de", "fr"].append(f"{de}\t{fr}")
        for (a, b), lines in rows.items():
            with gzip.open(folder / f"{name}.{a}-{b}.{split}.tsv.gz", "wt", encoding="utf-8") as f:
                f.write(f"{a}\t{b}\n" + "".join(x + "\n" for x in lines))
            counts.setdefault(f"{a}-{b}", {})[split] = len(lines)
    provenance_path(folder, name).write_text(
        json.dumps({"corpus": name, "synthetic": True, "counts": counts}) + "\n"
    )
    return folder
