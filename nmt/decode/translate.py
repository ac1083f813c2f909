"""Translation: token-budget batches sorted by length, beam search, input order restored.

``nmt-translate checkpoint=PATH|NAME input=FILE|- output=FILE|-``: exactly one output line per input
line, in order (an empty line gives an empty line; a line longer than the model's maximum is
translated in chunks). Output files are written atomically; ``-`` streams stdin/stdout. The
command itself is :mod:`nmt.decode.command`.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Sequence
from typing import IO

from tqdm import tqdm

from data.batching import inference_batches
from data.errors import DataError
from data.placeables import Masked, mask, restore, split_lines
from data.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer
from nmt.config import DecodeConfig
from nmt.decode.line_files import (
    input_chunks,
)
from nmt.decode.search import Hypothesis, Pruning, SearchSettings, beam_search
from nmt.decode.sentinels import SentinelVocab
from nmt.errors import UserError
from nmt.models.seq2seq import Seq2Seq

MAX_SRC_TOKENS = 200  # longer sources are split into chunks of this many subwords
# Characters that some readers take as line breaks (str.splitlines, Unicode line/paragraph
# separators, NEL): never written inside an output line, so one input line is one output line.
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_ONE_LINE = str.maketrans(dict.fromkeys(_LINE_BREAKS, " "))
_ONE_FIELD = str.maketrans(dict.fromkeys(_LINE_BREAKS + "\t", " "))


def one_line(text: str, tsv: bool = False) -> str:
    """``text`` with every line-break character (and, for a TSV field, tab) made a space."""
    return text.translate(_ONE_FIELD if tsv else _ONE_LINE)


def check_decode(dcfg: DecodeConfig) -> None:
    """Decoding settings a search can run with; a bad one is a one-line user error."""
    beam, nbest = int(dcfg.beam_size), int(dcfg.nbest)
    if beam < 1:
        raise UserError(f"decode.beam_size={beam}: must be >= 1")
    if not 1 <= nbest <= beam:
        raise UserError(f"decode.nbest={nbest}: must be between 1 and decode.beam_size={beam}")
    if int(dcfg.batch_tokens) < 1:
        raise UserError(f"decode.batch_tokens={dcfg.batch_tokens}: must be >= 1")
    rel, ab = dcfg.prune_relative, dcfg.prune_absolute
    if not 0.0 <= rel <= 1.0:
        raise UserError(f"decode.prune_relative={rel}: must be between 0 (off) and 1")
    if ab < 0.0:
        raise UserError(f"decode.prune_absolute={ab}: must be >= 0 (0 = off)")
    if float(dcfg.max_len_a) < 0 or int(dcfg.max_len_b) < 0:
        raise UserError(
            f"decode.max_len_a={dcfg.max_len_a}, decode.max_len_b={dcfg.max_len_b}: must be >= 0"
        )


def search_settings(dcfg: DecodeConfig) -> SearchSettings:
    """What the search takes of the decode settings (checked by :func:`check_decode`)."""
    return SearchSettings(
        beam_size=dcfg.beam_size,
        alpha=dcfg.alpha,
        beta=dcfg.beta,
        max_len=(dcfg.max_len_a, dcfg.max_len_b),
        nbest=dcfg.nbest,
        prune=Pruning(dcfg.prune_relative, dcfg.prune_absolute),
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        pad_id=PAD_ID,
    )


def translate_ids(
    model: Seq2Seq,
    src_ids: Sequence[Sequence[int]],
    dcfg: DecodeConfig,
    progress: tqdm | None = None,
    sentinels: SentinelVocab | None = None,
) -> list[list[Hypothesis]]:
    """N-best hypotheses for each source (ids without eos), in input order.

    ``dcfg`` carries beam_size, alpha, beta, max_len_a, max_len_b, nbest, batch_tokens;
    ``sentinels`` constrains the search over masked placeables (:mod:`nmt.decode.sentinels`).
    """
    out: list[list[Hypothesis]] = [[] for _ in src_ids]
    shortlist = model.shortlist if dcfg.shortlist else None
    settings = search_settings(dcfg)
    for batch in inference_batches(src_ids, int(dcfg.batch_tokens), 8):
        vocab_index = None if shortlist is None else shortlist.candidates(batch.src)
        hyps = beam_search(model, batch.src, batch.src_len, settings, vocab_index, sentinels)
        for i, h in zip(batch.indices, hyps, strict=True):
            out[i] = h
        if progress is not None:
            progress.update(len(batch.indices))
    return out


def source_prefix(tok: Tokenizer, target_lang: str) -> list[int]:
    """What starts every source: ``[<2xx>]`` for a multilingual model, nothing otherwise."""
    if not tok.tags:
        if target_lang:
            raise UserError(
                f"decode.target_lang={target_lang}: this model has no language tags (one "
                "language pair); leave decode.target_lang empty"
            )
        return []
    if not target_lang:
        raise UserError(
            "this model is multilingual: set decode.target_lang (one of "
            f"{', '.join(sorted(tok.tags))})"
        )
    try:
        return [tok.tag_id(target_lang)]
    except DataError as err:
        raise UserError(f"decode.target_lang={target_lang}: {err}") from None


def translate_lines(
    model: Seq2Seq,
    tok: Tokenizer,
    lines: Sequence[str],
    dcfg: DecodeConfig,
    progress: tqdm | None = None,
    sentinels: bool = False,
) -> list[list[tuple[str, float]]]:
    """Detokenized n-best (text, score) per line; empty lines give [("", 0.0)]; sources longer
    than ``MAX_SRC_TOKENS`` subwords are translated chunk by chunk and joined. ``sentinels``:
    lines with masked placeables get each of their sentinels exactly once."""
    ids = tok.encode([line.strip() for line in lines])
    prefix = source_prefix(tok, dcfg.target_lang)
    pieces: list[list[int]] = []
    owner: list[int] = []
    for i, seq in enumerate(ids):
        for start in range(0, len(seq), MAX_SRC_TOKENS):
            pieces.append(prefix + seq[start : start + MAX_SRC_TOKENS])
            owner.append(i)
    rules = sentinel_vocab(tok) if sentinels else None
    hyps = translate_ids(model, pieces, dcfg, progress, rules) if pieces else []
    result: list[list[tuple[str, float]]] = [[("", 0.0)] for _ in lines]
    chunks: dict[int, list[list[Hypothesis]]] = {}
    for i, h in zip(owner, hyps, strict=True):
        chunks.setdefault(i, []).append(h)
    for i, parts in chunks.items():
        if len(parts) == 1:
            texts = tok.decode([h.tokens for h in parts[0]])
            result[i] = [(t, h.score) for t, h in zip(texts, parts[0], strict=True)]
        else:  # chunked: best hypothesis of each chunk, joined
            text = " ".join(tok.decode([p[0].tokens for p in parts]))
            result[i] = [(text, sum(p[0].score for p in parts))]
    return result


def translate_stream(
    model: Seq2Seq,
    tok: Tokenizer,
    src: IO[bytes],
    name: str,
    out: IO[str],
    dcfg: DecodeConfig,
    on_bad_utf8: str = "error",
    total: int | None = None,
) -> int:
    """Translate ``src`` chunk by chunk into ``out``; returns the number of lines written.
    With ``decode.placeables`` the placeables of each line are masked and restored; lines
    whose translation lost or repeated one are reported on stderr at the end."""
    written = 0
    nbest = int(dcfg.nbest)
    changed: list[int] = []
    if nbest > 1:
        out.write("line\trank\tscore\thypothesis\n")
    with tqdm(total=total, unit="sent", file=sys.stderr, disable=None, desc="translate") as bar:
        for lines in input_chunks(src, name, on_bad_utf8):
            for i, hyps in enumerate(translate_masked(model, tok, lines, dcfg, bar)):
                if not all(ok for _, _, ok in hyps[:1]):
                    changed.append(written + i + 1)
                if nbest > 1:
                    for rank, (text, score, _) in enumerate(hyps, start=1):
                        text = one_line(text, tsv=True)
                        out.write(f"{written + i + 1}\t{rank}\t{score:.4f}\t{text}\n")
                else:
                    out.write(one_line(hyps[0][0]) + "\n")
            written += len(lines)
            out.flush()
    if changed:
        first = ", ".join(map(str, changed[:10])) + (", ..." if len(changed) > 10 else "")
        print(
            f"nmt-translate: {len(changed)} of {written} lines lost or repeated a placeable "
            f"(lines {first})",
            file=sys.stderr,
        )
    return written


def mask_unknown(masked: Masked, tok: Tokenizer) -> Masked:
    """``masked`` with each run of characters the vocabulary lacks (``|``, ``@``, ... that
    would come back as ``⁇``) made one more placeable, carried over like the others."""
    runs = tok.unknown(masked.text)
    if not runs:
        return masked
    parts: list[str] = []
    originals, at = list(masked.originals), 0
    for start, end in runs:
        originals.append(masked.text[start:end])
        parts += [masked.text[at:start], f"{{{len(originals)}}}"]
        at = end
    parts.append(masked.text[at:])
    return dataclasses.replace(masked, text="".join(parts), originals=tuple(originals))


def translate_masked(
    model: Seq2Seq,
    tok: Tokenizer,
    lines: Sequence[str],
    dcfg: DecodeConfig,
    progress: tqdm | None = None,
) -> list[list[tuple[str, float, bool]]]:
    """:func:`translate_lines` with each line's placeables masked and restored when
    ``decode.placeables`` (:mod:`data.placeables`; characters the vocabulary lacks too):
    (text, score, placeables kept) per hypothesis."""
    if not dcfg.placeables:
        hyps = translate_lines(model, tok, [one_line(x) for x in lines], dcfg, progress)
        return [[(text, score, True) for text, score in h] for h in hyps]
    texts = [split_lines(x) for x in lines]  # a text with line breaks goes line by line
    masked = [[mask_unknown(mask(core), tok) for _, core, _ in x.parts] for x in texts]
    flat = [m.text for ms in masked for m in ms]
    exact = len(flat) == len(lines)  # the bar counts lines: pieces are lines unless cut
    hyps = translate_lines(
        model, tok, flat, dcfg, progress if exact else None, dcfg.placeable_constraint
    )
    if progress is not None and not exact:
        progress.update(len(lines))
    out: list[list[tuple[str, float, bool]]] = []
    at = 0
    for x, ms in zip(texts, masked, strict=True):
        mine, at = hyps[at : at + len(ms)], at + len(ms)
        rows = [[(*restore(h, m), s) for h, s in hs] for m, hs in zip(ms, mine, strict=True)]
        if len(rows) == 1:  # one line: its n-best
            out.append([(x.join([text]), score, ok) for text, ok, score in rows[0]])
        else:  # several lines: the 1-best of each, joined
            best = [r[0] for r in rows]
            ok = all(b[1] for b in best)
            out.append([(x.join([b[0] for b in best]), sum(b[2] for b in best), ok)])
    return out


@functools.lru_cache(maxsize=8)
def sentinel_vocab(tok: Tokenizer) -> SentinelVocab:
    """The tokenizer's pieces for :mod:`nmt.decode.sentinels` (built once per tokenizer)."""
    return SentinelVocab([tok.id_to_piece(i) for i in range(tok.vocab_size)], EOS_ID)


def translate_texts(
    model: Seq2Seq,
    tok: Tokenizer,
    texts: Sequence[str],
    dcfg: DecodeConfig,
    target_lang: str | None = None,
    progress: tqdm | None = None,
) -> list[str]:
    """Best translation of each text (in memory; used by validation and nmt-eval);
    ``target_lang`` overrides ``dcfg.target_lang`` (a multilingual model); ``progress``
    advances by the sentences done."""
    lang = dcfg.target_lang if target_lang is None else target_lang
    best = dataclasses.replace(dcfg, nbest=1, target_lang=lang)
    hyps = translate_lines(model, tok, [one_line(t) for t in texts], best, progress)
    return [one_line(h[0][0]) for h in hyps]
