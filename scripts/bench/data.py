"""The data pipeline: load -> filter -> sentencepiece -> encode -> one epoch of batches.

    python -m scripts.bench data --corpus data/corpus
    python -m scripts.bench data --corpus a.train.tsv.gz,a.dev.tsv.gz --vocab-size 8000

``--corpus`` is a folder (all ``*.train.*``/``*.dev.*``/``*.test.*`` corpus files in it) or a
comma-separated list of files (the first is the training split). Prints one line per step and a
final JSON line with the numbers and machine info, also written to ``--out``
(``docs/results/data/amx/bench_data.json``; ``-``: none). Caches go to a temp folder (cold timings).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from data.batching import Batcher, round_up
from data.corpus import load_split
from data.filtering import filter_pairs
from data.tokenizer import train_or_load
from scripts.bench.common import command, finish, machine, parser, results_for

SPLITS = ("train", "dev", "test")


def find_files(corpus: str) -> dict[str, Path]:
    """Map split name -> file for a folder or a comma-separated file list."""
    root = Path(corpus)
    if root.is_dir():
        found = {s: sorted(root.glob(f"*.{s}.*")) for s in SPLITS}
        files = {s: [p for p in ps if ".provenance" not in p.name] for s, ps in found.items()}
        if not files["train"]:
            sys.exit(f"data: no '*.train.*' file in folder {str(root)!r}")
        return {s: ps[0] for s, ps in files.items() if ps}
    paths = [Path(p) for p in corpus.split(",") if p]
    names = [
        next((s for s in SPLITS if f".{s}." in p.name), f"file{i}") for i, p in enumerate(paths)
    ]
    names[0] = "train"
    return dict(zip(names, paths, strict=True))


def lap(label: str, t0: float, timings: dict[str, float]) -> float:
    """Record and print the seconds since ``t0`` as ``label``; -> now."""
    now = time.perf_counter()
    timings[label] = round(now - t0, 3)
    print(f"{label:<14} {now - t0:8.2f} s", flush=True)
    return now


def main(argv: list[str] | None = None) -> int:
    ap = parser(__name__, __doc__)
    ap.add_argument("--corpus", default="data/corpus", help="folder or comma-separated files")
    ap.add_argument("--src-lang", default="en")
    ap.add_argument("--tgt-lang", default="de")
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--model-type", default="unigram")
    ap.add_argument("--max-sentences", type=int, default=300000)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--microbatches", type=int, default=4)
    ap.add_argument("--pad-multiple", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=100, help="subword tokens, either side")
    ap.add_argument("--max-ratio", type=float, default=2.5)
    ap.add_argument("--out", default=str(results_for("data", "bench_data.json")), help="'-': none")
    args = ap.parse_args(argv)

    files = find_files(args.corpus)
    timings: dict[str, float] = {}
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        t = time.perf_counter()
        splits = {
            name: load_split(path, args.src_lang, args.tgt_lang, cache_dir=f"{tmp}/hf")
            for name, path in files.items()
        }
        t = lap("load", t, timings)
        train_raw = splits["train"]
        counts.update({f"{name}_pairs": len(p) for name, p in splits.items()})

        train, pre_stats = filter_pairs(train_raw, min_len=1, max_len=0, max_ratio=0)
        t = lap("prefilter", t, timings)

        texts = [s for s, _ in train] + [t_ for _, t_ in train]
        tok = train_or_load(
            texts, f"{tmp}/spm", args.vocab_size, args.model_type, args.max_sentences, seed=1
        )
        t = lap("spm_train", t, timings)

        src_ids = tok.encode([s for s, _ in train])
        tgt_ids = tok.encode([t_ for _, t_ in train])
        n_other = sum(len(tok.encode([s for s, _ in p])) for n, p in splits.items() if n != "train")
        t = lap("encode", t, timings)

        lengths = {text: len(ids) for text, ids in zip(texts, src_ids + tgt_ids, strict=True)}
        kept, stats = filter_pairs(
            train, 1, args.max_len, args.max_ratio, length_fn=lengths.__getitem__
        )
        keep = set(kept)
        mask = [pair in keep for pair in train]
        src_ids = [ids for ids, m in zip(src_ids, mask, strict=True) if m]
        tgt_ids = [ids for ids, m in zip(tgt_ids, mask, strict=True) if m]
        t = lap("length_filter", t, timings)

        batcher = Batcher(
            src_ids, tgt_ids, args.batch_tokens, args.pad_multiple, args.microbatches, seed=1
        )
        n_batches = n_tokens = 0
        for batch in batcher:
            n_batches += 1
            n_tokens += batch.ntokens
        t = lap("batch_epoch", t, timings)

    overhead = batcher.padding_overhead()
    floor = {  # overhead of rounding each sentence up to pad_multiple alone (no batching loss)
        side: sum(round_up(len(x) + 1, args.pad_multiple) for x in ids)
        / sum(len(x) + 1 for x in ids)
        - 1
        for side, ids in (("src", src_ids), ("tgt", tgt_ids))
    }
    src_tok = sum(map(len, src_ids))
    tgt_tok = sum(map(len, tgt_ids))
    print(f"prefilter: {pre_stats}")
    print(f"length filter: {stats}")
    print(
        f"vocab {tok.vocab_size}; {len(src_ids)} pairs; {src_tok / len(src_ids):.1f} src / "
        f"{tgt_tok / len(tgt_ids):.1f} tgt subwords per sentence; {n_other} dev/test sentences"
    )
    print(f"{n_batches} batches, {len(batcher.shapes())} shapes, {n_tokens} target tokens")
    goal = "OK" if overhead["tgt"] < 0.15 else "above goal"
    print(
        f"padding overhead (padded/real - 1): src {overhead['src']:.1%}, "
        f"tgt {overhead['tgt']:.1%} (goal < 15%: {goal}); floor from rounding to "
        f"pad_multiple={args.pad_multiple} alone: src {floor['src']:.1%}, tgt {floor['tgt']:.1%}"
    )
    result: dict[str, Any] = {
        "bench": "data",
        "corpus": {k: str(v) for k, v in files.items()},
        "timings_s": timings,
        "total_s": round(sum(timings.values()), 3),
        **counts,
        "pairs_after_filter": len(src_ids),
        "vocab_size": tok.vocab_size,
        "batches": n_batches,
        "shapes": len(batcher.shapes()),
        "target_tokens": n_tokens,
        "padding_overhead_src": round(overhead["src"], 4),
        "padding_overhead_tgt": round(overhead["tgt"], 4),
        "padding_floor_src": round(floor["src"], 4),
        "padding_floor_tgt": round(floor["tgt"], 4),
        "pad_multiple": args.pad_multiple,
        "batch_tokens": args.batch_tokens,
        "microbatches": args.microbatches,
        "command": command(__name__, argv),
        "machine": machine(),
    }
    return finish(result, args.out)
