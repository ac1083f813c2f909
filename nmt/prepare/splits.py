"""From a data config to tokenized splits: load (shipped Debian corpus, local files or the hub),
filter, train/load the joint sentencepiece model, encode."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.build import SPLITS, corpus_files
from data.corpus import load_hub, load_split_counted, load_text_pair
from data.filtering import FilterStats, filter_pairs
from data.tokenizer import Tokenizer, lang_tag, train_or_load
from nmt.config import DataConfig
from nmt.errors import UserError
from nmt.prepare.multilingual import (
    Direction,
    directions,
    is_multilingual,
    load_direction,
    name,
    zero_shot,
)

log = logging.getLogger(__name__)
Pair = tuple[str, str]


@dataclass
class Corpus:
    """Text splits, their token ids and the tokenizer."""

    tokenizer: Tokenizer
    text: dict[str, list[Pair]]
    ids: dict[str, tuple[list[list[int]], list[list[int]]]] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    # multilingual: split -> direction ("en-de") -> (start, end) in text/ids; empty: one pair
    parts: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)


def cache_dir(dcfg: DataConfig) -> Path:
    return Path(str(dcfg.cache_dir)).expanduser()


def split_paths(dcfg: DataConfig) -> dict[str, str]:
    """Where each split comes from for ``source=debian`` or ``source=files``."""
    if dcfg.source == "debian":
        return {k: str(v) for k, v in corpus_files(dcfg.corpus, cache_dir(dcfg)).items()}
    if dcfg.source == "files":
        paths = {"train": dcfg.train, "dev": dcfg.dev, "test": dcfg.test}
        missing = [f"data.{s}" for s, p in paths.items() if not p]
        if missing:
            raise UserError(f"data.source=files needs {', '.join(missing)} (file paths)")
        return {s: str(p) for s, p in paths.items()}
    raise UserError(f"data.source={dcfg.source!r} has no files (known: debian, files, hub)")


def checkpoint_split(ckpt: dict[str, Any], split: str) -> list[Pair]:
    """The (source, target) pairs of ``split`` of the data a checkpoint was trained on (its
    saved ``config.data``)."""
    from nmt.config import DataConfig, from_dict

    return load_text(from_dict(DataConfig, ckpt["config"]["data"]), (split,))[split]


def load_text(
    dcfg: DataConfig, splits: tuple[str, ...] = ("train", "dev", "test")
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


def _load_one(path: str, dcfg: DataConfig) -> tuple[list[Pair], int]:
    """One split: a TSV/JSONL/parquet file, or a prefix with one plain-text file per language
    (``PREFIX.en`` + ``PREFIX.de``, line-aligned)."""
    src, tgt = Path(f"{path}.{dcfg.src_lang}"), Path(f"{path}.{dcfg.tgt_lang}")
    if not Path(path).exists() and src.exists() and tgt.exists():
        return load_text_pair(str(src), str(tgt), str(dcfg.on_bad_utf8))
    return load_split_counted(
        path, dcfg.src_lang, dcfg.tgt_lang, dcfg.on_bad_utf8, str(cache_dir(dcfg) / "hf")
    )


def tokenizer_for(
    dcfg: DataConfig, texts: Sequence[str], seed: int, user_symbols: Sequence[str] = ()
) -> Tokenizer:
    """The joint sentencepiece model for these training texts (cached by content + settings);
    ``user_symbols``: reserved pieces (the language tags of a multilingual corpus)."""
    return train_or_load(
        texts,
        cache_dir(dcfg) / "spm",
        vocab_size=int(dcfg.vocab_size),
        model_type=str(dcfg.spm_model_type),
        max_sentences=int(dcfg.spm_max_sentences),
        seed=seed,
        user_symbols=user_symbols,
    )


def drop_long(
    src: list[list[int]], tgt: list[list[int]], pairs: list[Pair], max_len: int, tags: int = 0
) -> tuple[list[list[int]], list[list[int]], list[Pair]]:
    """Keep the pairs whose both sides have 1..max_len subwords (sources: + ``tags`` pieces)."""
    n_src = max_len + tags
    keep = [
        i for i in range(len(src)) if tags < len(src[i]) <= n_src and 0 < len(tgt[i]) <= max_len
    ]
    return [src[i] for i in keep], [tgt[i] for i in keep], [pairs[i] for i in keep]


def prepare_corpus(dcfg: DataConfig, seed: int = 1, tokenizer: Tokenizer | None = None) -> Corpus:
    """Load, filter (train only), tokenize. Dev/test are kept whole for evaluation."""
    if tokenizer is None and dcfg.tokenizer:
        tokenizer = checkpoint_tokenizer(dcfg.tokenizer)
    if is_multilingual(dcfg):
        return prepare_multi(dcfg, seed, tokenizer)
    text = load_text(dcfg)
    train, stats = filter_pairs(
        text["train"],
        min_len=int(dcfg.min_len),
        max_len=0,  # the subword limit below is the real one
        max_ratio=float(dcfg.max_ratio),
        dedupe=bool(dcfg.dedupe),
        drop_identical=bool(dcfg.drop_identical),
    )
    tok = tokenizer or tokenizer_for(dcfg, [s for s, _ in train] + [t for _, t in train], seed)
    src, tgt = tok.encode([s for s, _ in train]), tok.encode([t for _, t in train])
    src, tgt, train = drop_long(src, tgt, train, int(dcfg.max_len))
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


def checkpoint_tokenizer(checkpoint: str) -> Tokenizer:
    """The sentencepiece model of a checkpoint file or shipped model (``data.tokenizer``)."""
    from nmt.checkpoint.files import load
    from nmt.release.shipped import resolve_checkpoint

    path, _ = resolve_checkpoint(checkpoint)
    spm = load(path).get("spm")
    if not isinstance(spm, bytes):
        raise UserError(f"data.tokenizer={checkpoint}: {path} holds no sentencepiece model")
    return Tokenizer.from_bytes(spm)


def _tag(ids: list[list[int]], tag: int) -> list[list[int]]:
    return [[tag, *seq] for seq in ids]


def prepare_multi(dcfg: DataConfig, seed: int = 1, tokenizer: Tokenizer | None = None) -> Corpus:
    """Every direction's splits, one joint tokenizer with a tag per language, tagged sources.

    ``corpus.text[split]`` / ``corpus.ids[split]`` concatenate the directions in config order;
    ``corpus.parts[split]["en-de"] = (start, end)`` says where each direction lies.
    """
    dirs = directions(dcfg)
    zero_shot(dcfg)  # checks: both languages of each are trained
    langs = sorted({lang for d in dirs for lang in d})
    raw = {(d, s): load_direction(dcfg, d, s) for d in dirs for s in SPLITS}
    train: dict[Direction, list[Pair]] = {}
    filtered: dict[str, int] = {}
    for d in dirs:
        train[d], stats = filter_pairs(
            raw[d, "train"],
            min_len=int(dcfg.min_len),
            max_len=0,
            max_ratio=float(dcfg.max_ratio),
            dedupe=bool(dcfg.dedupe),
            drop_identical=bool(dcfg.drop_identical),
        )
        filtered[name(d)] = stats.total - stats.kept if isinstance(stats, FilterStats) else 0
    if tokenizer is None:
        texts = list(dict.fromkeys(x for d in dirs for pair in train[d] for x in pair))
        tokenizer = tokenizer_for(dcfg, texts, seed, [lang_tag(x) for x in langs])
    corpus = Corpus(tokenizer, {s: [] for s in SPLITS}, {s: ([], []) for s in SPLITS})
    for split in SPLITS:
        corpus.parts[split] = {}
        for d in dirs:
            pairs = train[d] if split == "train" else raw[d, split]
            src = _tag(tokenizer.encode([s for s, _ in pairs]), tokenizer.tag_id(d[1]))
            tgt = tokenizer.encode([t for _, t in pairs])
            if split == "train":
                src, tgt, pairs = drop_long(src, tgt, pairs, int(dcfg.max_len), tags=1)
            if dcfg.target_tag:  # the decoder's first input names it
                tgt = _tag(tgt, tokenizer.tag_id(d[1]))
            start = len(corpus.text[split])
            corpus.text[split].extend(pairs)
            corpus.ids[split][0].extend(src)
            corpus.ids[split][1].extend(tgt)
            corpus.parts[split][name(d)] = (start, len(corpus.text[split]))
    corpus.stats = {
        "directions": [name(d) for d in dirs],
        "pairs": {s: len(p) for s, p in corpus.text.items()},
        "pairs_by_direction": {
            s: {k: b - a for k, (a, b) in corpus.parts[s].items()} for s in SPLITS
        },
        "filter": {"dropped_by_direction": filtered},
        "vocab_size": tokenizer.vocab_size,
        "tags": dict(tokenizer.tags),
    }
    return corpus
