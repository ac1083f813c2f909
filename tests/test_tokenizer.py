"""Tests for data.tokenizer: fixed ids, caching, determinism, round trip (tiny corpus)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from data.errors import DataError
from data.tokenizer import Tokenizer, cache_key, train_model, train_or_load

EN = ["the", "a", "green", "red", "house", "street", "dog", "cat", "is", "was", "small", "big"]
DE = ["der", "die", "das", "grüne", "rote", "Haus", "Straße", "Hund", "Katze", "ist", "für", "über"]
ORDINARY = [
    "Die Straße ist sehr schön, aber das Wetter war schlecht.",
    "Über den Wolken: grüne Äpfel für Müller & Söhne (2024).",
    "The old house is very big; the cat was small!",
]


def corpus(n: int = 300, seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    lines = [" ".join(rng.choices(EN, k=rng.randint(3, 12))) + "." for _ in range(n)]
    lines += [" ".join(rng.choices(DE, k=rng.randint(3, 12))) + "." for _ in range(n)]
    return lines + ORDINARY * 5  # rare characters need a few occurrences to be covered


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return train_or_load(corpus(), tmp_path_factory.mktemp("spm"), 120, "unigram", 0, 1)


def test_special_ids(tok: Tokenizer) -> None:
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    assert [tok.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert 4 < tok.vocab_size <= 120


def test_round_trip_restores_text(tok: Tokenizer) -> None:
    ids = tok.encode(ORDINARY)
    assert len(ids) == len(ORDINARY)
    assert all(i not in (0, 1, 2, 3) for seq in ids for i in seq)  # no specials, no unk
    assert tok.decode(ids) == ORDINARY


def test_decode_strips_pad_bos_eos(tok: Tokenizer) -> None:
    ids = tok.encode(["der grüne Hund"])[0]
    assert tok.decode([[2, *ids, 3, 0, 0]]) == ["der grüne Hund"]
    assert tok.decode([[]]) == [""]


def test_cache_reuses_model_file(tmp_path: Path) -> None:
    texts = corpus(100)
    first = train_or_load(texts, tmp_path, 80, "unigram", 0, 1)
    assert first.trained and first.path is not None and first.path.parent == tmp_path
    mtime = os.stat(first.path).st_mtime_ns
    second = train_or_load(texts, tmp_path, 80, "unigram", 0, 1)
    assert not second.trained
    assert second.path == first.path and os.stat(first.path).st_mtime_ns == mtime
    assert second.model_bytes() == first.model_bytes()
    # different settings or text -> a different cache entry
    third = train_or_load(texts, tmp_path, 90, "unigram", 0, 1)
    assert third.trained and third.path != first.path
    assert cache_key(texts, 80, "unigram", 0, 1) != cache_key(texts[:-1], 80, "unigram", 0, 1)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".model", ".model"]


def test_training_is_deterministic() -> None:
    texts = corpus(150)
    a = train_model(texts, 90, "unigram", max_sentences=200, seed=5)
    b = train_model(texts, 90, "unigram", max_sentences=200, seed=5)
    assert a == b
    assert train_model(texts, 90, "bpe", seed=5) == train_model(texts, 90, "bpe", seed=5)


def test_from_bytes_matches(tok: Tokenizer) -> None:
    clone = Tokenizer.from_bytes(tok.model_bytes())
    assert clone.vocab_size == tok.vocab_size
    assert clone.encode(ORDINARY) == tok.encode(ORDINARY)
    assert clone.path is None and not clone.trained


def test_errors() -> None:
    with pytest.raises(DataError, match="spm_model_type='wordpiece'"):
        train_model(corpus(10), 50, "wordpiece")
    with pytest.raises(DataError, match="no non-empty sentences among 2"):
        train_model(["", "  "], 50)
    with pytest.raises(DataError, match="not a valid sentencepiece model"):
        Tokenizer.from_bytes(b"garbage")
