"""Joint sentencepiece tokenizer, trained once per (training text, settings) and cached.

Special ids are fixed for the whole project: pad=0, unk=1, bos=2, eos=3. A multilingual model
reserves one piece per language, ``<2xx>`` (Johnson et al. 2017): sentencepiece
``user_defined_symbols``, so a tag is always one piece and never split.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm

from data.atomic import atomic_write_bytes
from data.errors import DataError

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
MODEL_TYPES = ("unigram", "bpe", "char", "word")
# Bump when the training recipe changes so that old cached models are not reused.
_RECIPE_VERSION = 1
_TAG = re.compile(r"^<2([a-z]{2,3}(?:_[A-Za-z]{2})?)>$")


def lang_tag(lang: str) -> str:
    """The piece that asks for a translation into ``lang``: ``<2de>``."""
    if not _TAG.match(f"<2{lang}>"):
        raise DataError(f"language code {lang!r} is not like 'de', 'fr' or 'pt_BR'")
    return f"<2{lang}>"


class Tokenizer:
    """A sentencepiece model with the project's fixed special ids.

    Attributes:
        path: the model file it was loaded from (``None`` when built from bytes).
        trained: ``True`` if :func:`train_or_load` trained it in this call, ``False`` if it came
            from the cache or from bytes.
    """

    pad_id = PAD_ID
    unk_id = UNK_ID
    bos_id = BOS_ID
    eos_id = EOS_ID

    def __init__(self, model_proto: bytes, path: Path | None = None, trained: bool = False):
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(model_proto)
        except (RuntimeError, OSError) as err:
            where = str(path) if path else "<bytes>"
            raise DataError(f"{where!r} is not a valid sentencepiece model: {err}") from None
        got = (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id())
        if got != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            where = str(path) if path else "<bytes>"
            raise DataError(
                f"sentencepiece model {where!r} has special ids (pad, unk, bos, eos)={got}, "
                f"expected {(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}"
            )
        self._sp = sp
        self._proto = model_proto
        self._special = frozenset((PAD_ID, BOS_ID, EOS_ID))
        self._tags: dict[str, int] | None = None
        self._lacks: dict[str, bool] = {}  # character -> the vocabulary lacks it
        self.path = path
        self.trained = trained

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load a ``.model`` file. Raises DataError if it is missing or invalid."""
        file = Path(path)
        try:
            proto = file.read_bytes()
        except OSError as err:
            raise DataError(f"cannot read sentencepiece model {str(file)!r}: {err}") from None
        return cls(proto, path=file)

    @classmethod
    def from_bytes(cls, model_proto: bytes) -> Tokenizer:
        """Rebuild a tokenizer from :meth:`model_bytes` (e.g. embedded in a checkpoint)."""
        return cls(bytes(model_proto))

    def __reduce__(self) -> tuple[type[Tokenizer], tuple[bytes, Path | None, bool]]:
        """Pickled as its model bytes (a prepared corpus goes to spawned ranks as it is)."""
        return (Tokenizer, (self._proto, self.path, self.trained))

    def model_bytes(self) -> bytes:
        """The serialized sentencepiece model (a few hundred KB)."""
        return self._proto

    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode a batch of sentences to ids (no bos/eos added)."""
        out: list[list[int]] = self._sp.encode(list(texts), out_type=int)
        return out

    def encode_pieces(self, texts: Sequence[str]) -> list[list[str]]:
        """Encode a batch of sentences to subword pieces (for inspection)."""
        return [list(p) for p in self._sp.encode(list(texts), out_type=str)]

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Decode a batch of id sequences; pad/bos/eos and language tag ids are removed first."""
        drop = self._special | frozenset(self.tags.values())
        clean = [[int(i) for i in seq if int(i) not in drop] for seq in ids]
        return [str(s) for s in self._sp.decode(clean)]

    def id_to_piece(self, i: int) -> str:
        return str(self._sp.id_to_piece(i))

    def unknown(self, text: str) -> list[tuple[int, int]]:
        """``[start, end)`` of each run of characters of ``text`` that the vocabulary lacks
        (they would come back as the unknown piece)."""
        for c in set(text) - self._lacks.keys():
            self._lacks[c] = c not in " \t" and UNK_ID in self._sp.encode(c, out_type=int)
        runs: list[tuple[int, int]] = []
        for i, ch in enumerate(text):
            if self._lacks[ch]:
                if runs and runs[-1][1] == i:
                    runs[-1] = (runs[-1][0], i + 1)
                else:
                    runs.append((i, i + 1))
        return runs

    @property
    def tags(self) -> dict[str, int]:
        """Language -> id of its reserved ``<2xx>`` piece (empty for a one-pair tokenizer)."""
        if self._tags is None:  # user-defined symbols take ids 4, 5, ... in order
            self._tags = {}
            for i in range(EOS_ID + 1, self.vocab_size):
                m = _TAG.match(self.id_to_piece(i))
                if not m:
                    break
                self._tags[m.group(1)] = i
        return self._tags

    def tag_id(self, lang: str) -> int:
        """Id of ``<2lang>``; DataError naming the known languages if it has none."""
        if lang not in self.tags:
            known = ", ".join(sorted(self.tags)) or "none: not a multilingual tokenizer"
            raise DataError(f"no language tag {lang_tag(lang)} in the tokenizer (known: {known})")
        return self.tags[lang]

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, path={str(self.path)!r})"


def cache_key(
    texts: Sequence[str],
    vocab_size: int,
    model_type: str,
    max_sentences: int,
    seed: int,
    character_coverage: float = 0.9999,
    user_symbols: Sequence[str] = (),
) -> str:
    """sha256 hex digest of the training text content and all training settings."""
    h = hashlib.sha256()
    settings: dict[str, object] = {
        "recipe": _RECIPE_VERSION,
        "vocab_size": vocab_size,
        "model_type": model_type,
        "max_sentences": max_sentences,
        "seed": seed,
        "character_coverage": character_coverage,
    }
    if user_symbols:  # absent otherwise: one-pair cache keys stay what they were
        settings["user_symbols"] = list(user_symbols)
    h.update(json.dumps(settings, sort_keys=True).encode())
    h.update(len(texts).to_bytes(8, "little"))
    for text in texts:
        data = text.encode("utf-8", errors="surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _sample(texts: Sequence[str], max_sentences: int, seed: int) -> list[str]:
    """Seeded subsample (order preserved) of at most ``max_sentences`` non-blank sentences."""
    lines = [t for t in texts if t.strip()]
    if max_sentences <= 0 or len(lines) <= max_sentences:
        return lines
    rng = np.random.Generator(np.random.PCG64(seed))
    keep = np.sort(rng.choice(len(lines), size=max_sentences, replace=False))
    return [lines[i] for i in keep.tolist()]


def train_model(
    texts: Sequence[str],
    vocab_size: int,
    model_type: str = "unigram",
    max_sentences: int = 0,
    seed: int = 1,
    character_coverage: float = 0.9999,
    num_threads: int = 0,
    user_symbols: Sequence[str] = (),
) -> bytes:
    """Train a sentencepiece model on ``texts`` and return its serialized bytes.

    Deterministic for fixed inputs: the subsample is drawn with a seeded numpy generator and
    sentencepiece's own shuffling is disabled. ``hard_vocab_limit=False`` lets tiny corpora
    produce fewer pieces than ``vocab_size`` instead of failing. ``user_symbols`` (e.g. the
    language tags) become single pieces, ids 4, 5, ... in order.
    """
    if model_type not in MODEL_TYPES:
        raise DataError(f"spm_model_type={model_type!r} is not one of {list(MODEL_TYPES)}")
    if vocab_size < 8:
        raise DataError(f"vocab_size={vocab_size} is too small (need >= 8)")
    lines = _sample(texts, max_sentences, seed)
    if not lines:
        raise DataError(f"cannot train sentencepiece: no non-empty sentences among {len(texts)}")
    out = io.BytesIO()
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=out,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            pad_piece="<pad>",
            unk_piece="<unk>",
            bos_piece="<s>",
            eos_piece="</s>",
            hard_vocab_limit=False,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            num_threads=num_threads or min(16, os.cpu_count() or 1),
            minloglevel=2,
            user_defined_symbols=list(user_symbols),
        )
    except RuntimeError as err:
        raise DataError(
            f"sentencepiece training failed (vocab_size={vocab_size}, model_type={model_type!r}, "
            f"{len(lines)} sentences): {err}"
        ) from None
    return out.getvalue()


def train_or_load(
    texts: Sequence[str],
    cache_dir: str | os.PathLike[str],
    vocab_size: int,
    model_type: str = "unigram",
    max_sentences: int = 0,
    seed: int = 1,
    character_coverage: float = 0.9999,
    user_symbols: Sequence[str] = (),
) -> Tokenizer:
    """Return the joint tokenizer for ``texts`` (source + target training sentences).

    The model is cached as ``<cache_dir>/spm-<sha256[:20]>.model`` keyed by the text content and
    every setting; a later call with the same inputs loads that file (``tokenizer.trained`` is
    then ``False``). The file is written atomically, so concurrent runs never see a partial file.

    Raises:
        DataError: bad settings, no text, or ``cache_dir`` cannot be created.
    """
    folder = Path(cache_dir).expanduser()
    key = cache_key(
        texts, vocab_size, model_type, max_sentences, seed, character_coverage, user_symbols
    )
    path = folder / f"spm-{key[:20]}.model"
    if path.is_file():
        return Tokenizer(path.read_bytes(), path=path, trained=False)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create tokenizer cache folder {str(folder)!r}: {err}") from None
    proto = train_model(
        texts, vocab_size, model_type, max_sentences, seed, character_coverage, 0, user_symbols
    )
    atomic_write_bytes(path, proto)
    return Tokenizer(proto, path=path, trained=True)
