"""From a data config to tokenized splits: load (shipped Debian corpus, local files or the hub),
filter, train/load the joint sentencepiece model, encode."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.build import corpus_files
from data.corpus import FilterStats, filter_pairs, load_hub, load_split_counted, load_text_pair
from data.tokenizer import Tokenizer, train_or_load
from nmt.errors import UserError

log = logging.getLogger(__name__)
Pair = tuple[str, str]


@dataclass
class Corpus:
    """Text splits, their token ids and the tokenizer."""

    tokenizer: Tokenizer
    text: dict[str, list[Pair]]
    ids: dict[str, tuple[list[list[int]], list[list[int]]]] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)


def cache_dir(dcfg: Any) -> Path:
    return Path(str(dcfg.cache_dir)).expanduser()


def split_paths(dcfg: Any) -> dict[str, str]:
    """Where each split comes from for ``source=debian`` or ``source=files``."""
    if dcfg.source == "debian":
        return {k: str(v) for k, v in corpus_files(dcfg.corpus, cache_dir(dcfg)).items()}
    if dcfg.source == "files":
        paths = {s: getattr(dcfg, s) for s in ("train", "dev", "test")}
        missing = [f"data.{s}" for s, p in paths.items() if not p]
        if missing:
            raise UserError(f"data.source=files needs {', '.join(missing)} (file paths)")
        return {s: str(p) for s, p in paths.items()}
    raise UserError(f"data.source={dcfg.source!r} has no files (known: debian, files, hub)")


def load_text(
    dcfg: Any, splits: tuple[str, ...] = ("train", "dev", "test")
) -> dict[str, list[Pair]]:
    """Load the requested splits as (source, target) text pairs (direction from the config)."""
    if dcfg.source == "hub":
        if not dcfg.hub_name:
            raise UserError("data.source=hub needs data.hub_name")
        hub_split = {"dev": "validation"}
        return {
            s: load_hub(
                dcfg.hub_name,
                dcfg.hub_config,
                hub_split.get(s, s),
                dcfg.src_lang,
                dcfg.tgt_lang,
                str(cache_dir(dcfg) / "hf"),
            )
            for s in splits
        }
    paths = split_paths(dcfg)
    out: dict[str, list[Pair]] = {}
    for s in splits:
        pairs, n_bad = _load_one(paths[s], dcfg)
        if n_bad:
            log.warning("%s: %d lines had invalid UTF-8 (replaced)", paths[s], n_bad)
        out[s] = pairs
    return out


def _load_one(path: str, dcfg: Any) -> tuple[list[Pair], int]:
    """One split: a TSV/JSONL/parquet file, or a prefix with one plain-text file per language
    (``PREFIX.en`` + ``PREFIX.de``, line-aligned)."""
    src, tgt = Path(f"{path}.{dcfg.src_lang}"), Path(f"{path}.{dcfg.tgt_lang}")
    if not Path(path).exists() and src.exists() and tgt.exists():
        return load_text_pair(str(src), str(tgt), str(dcfg.on_bad_utf8))
    return load_split_counted(
        path, dcfg.src_lang, dcfg.tgt_lang, dcfg.on_bad_utf8, str(cache_dir(dcfg) / "hf")
    )


def tokenizer_for(dcfg: Any, train_pairs: list[Pair], seed: int) -> Tokenizer:
    """The joint sentencepiece model for these training pairs (cached by content + settings)."""
    texts = [s for s, _ in train_pairs] + [t for _, t in train_pairs]
    return train_or_load(
        texts,
        cache_dir(dcfg) / "spm",
        vocab_size=int(dcfg.vocab_size),
        model_type=str(dcfg.spm_model_type),
        max_sentences=int(dcfg.spm_max_sentences),
        seed=seed,
    )


def _drop_long(src: list[list[int]], tgt: list[list[int]], pairs: list[Pair], max_len: int):
    keep = [i for i in range(len(src)) if 0 < len(src[i]) <= max_len and 0 < len(tgt[i]) <= max_len]
    return [src[i] for i in keep], [tgt[i] for i in keep], [pairs[i] for i in keep]


def prepare_corpus(dcfg: Any, seed: int = 1, tokenizer: Tokenizer | None = None) -> Corpus:
    """Load, filter (train only), tokenize. Dev/test are kept whole for evaluation."""
    text = load_text(dcfg)
    train, stats = filter_pairs(
        text["train"],
        min_len=int(dcfg.min_len),
        max_len=0,  # the subword limit below is the real one
        max_ratio=float(dcfg.max_ratio),
        dedupe=bool(dcfg.dedupe),
        drop_identical=bool(dcfg.drop_identical),
    )
    tok = tokenizer or tokenizer_for(dcfg, train, seed)
    src, tgt = tok.encode([s for s, _ in train]), tok.encode([t for _, t in train])
    src, tgt, train = _drop_long(src, tgt, train, int(dcfg.max_len))
    corpus = Corpus(tok, {**text, "train": train})
    corpus.ids["train"] = (src, tgt)
    for split in ("dev", "test"):
        pairs = text[split]
        corpus.ids[split] = (tok.encode([s for s, _ in pairs]), tok.encode([t for _, t in pairs]))
    corpus.stats = {
        "filter": stats.as_dict() if isinstance(stats, FilterStats) else {},
        "too_long_subwords": stats.kept - len(train),
        "pairs": {s: len(p) for s, p in corpus.text.items()},
        "vocab_size": tok.vocab_size,
    }
    return corpus
