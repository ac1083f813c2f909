"""One model, many directions (Johnson et al. 2017, Google's multilingual NMT): the corpus holds
every configured direction, and each source starts with the reserved piece ``<2xx>`` that names
the target language. Nothing else changes: the model, batching, pipelining and resume are the
one-pair ones; batches mix directions in proportion to their training pairs.

``data.directions=[en-de,de-en,en-fr,...]`` turns it on (``data=debian_multi``);
``data.zero_shot=[de-fr,...]`` names directions that are never trained, only evaluated.
"""

from __future__ import annotations

from pathlib import Path

from data.errors import DataError
from data.multi import load_pairs, multi_folder
from data.tokenizer import lang_tag
from nmt.config import DataConfig
from nmt.errors import UserError

Direction = tuple[str, str]
Pair = tuple[str, str]


def parse_direction(text: str, key: str = "data.directions") -> Direction:
    """``"en-de"`` -> ``("en", "de")``; anything else is a one-line error naming ``key``."""
    parts = str(text).split("-")
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise UserError(f"{key}: {text!r} is not a direction SRC-TGT such as en-de")
    lang_tag(parts[0]), lang_tag(parts[1])  # checks the language codes
    return parts[0], parts[1]


def directions(dcfg: DataConfig) -> list[Direction]:
    """The trained directions (empty: a one-pair corpus); each at most once."""
    out = [parse_direction(d) for d in dcfg.directions]
    twice = sorted({name(d) for d in out if out.count(d) > 1})
    if twice:
        raise UserError(f"data.directions: {', '.join(twice)} given more than once")
    return out


def zero_shot(dcfg: DataConfig) -> list[Direction]:
    """Directions evaluated but never trained; both languages must occur in training."""
    trained = {lang for d in directions(dcfg) for lang in d}
    out = [parse_direction(d, "data.zero_shot") for d in dcfg.zero_shot]
    for src, tgt in out:
        if src not in trained or tgt not in trained:
            raise UserError(
                f"data.zero_shot: {src}-{tgt} needs both languages in data.directions "
                f"(trained: {', '.join(sorted(trained))})"
            )
    return out


def is_multilingual(dcfg: DataConfig) -> bool:
    return bool(dcfg.directions)


def name(d: Direction) -> str:
    return f"{d[0]}-{d[1]}"


def load_direction(dcfg: DataConfig, d: Direction, split: str) -> list[Pair]:
    """(source, target) text pairs of one direction and split of the multilingual corpus."""
    if dcfg.source != "debian":
        raise UserError(
            f"data.directions needs data.source=debian (e.g. data=debian_multi), got {dcfg.source}"
        )
    try:
        folder = multi_folder(Path(str(dcfg.cache_dir)).expanduser(), str(dcfg.corpus))
        return load_pairs(folder, str(dcfg.corpus), d[0], d[1], split)
    except DataError as err:
        raise UserError(str(err)) from None
