"""The Python API: a model loaded once, translating batches of strings.

    from nmt.translator import Translator

    tr = Translator("gnmt-debian-en-de")            # a shipped model's name or a checkpoint path
    [best] = tr.translate(["Could not open file %s: %s"])[0]
    best.text, best.score, best.placeables_ok

Placeables (``%s``, ``{0}``, ``<b>``, ``$VAR``, URLs, ...; :mod:`data.placeables`) are masked
before the search and put back after it, in the translation's order; ``placeables_ok`` says
whether every one came back exactly once. Decoding settings are the model's own (its
``decode.yaml``) unless given. One lock serialises the searches, so a :class:`Translator` can
be shared by threads (a server batches concurrent requests into one call).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from data.placeables import mask
from data.tokenizer import BOS_ID, EOS_ID, Tokenizer
from nmt.config import DataConfig, DecodeConfig, from_dict
from nmt.decode.inference import Arithmetic, load_for_decoding
from nmt.decode.translate import check_decode, source_prefix, translate_masked
from nmt.errors import UserError
from nmt.models.seq2seq import Seq2Seq


@dataclass(frozen=True)
class Alignment:
    """Attention of a translation: ``weights[t][s]`` from target piece ``t`` (eos last) to
    source piece ``s`` (eos last), the model's own attention when forced to produce it."""

    source: list[str]
    target: list[str]
    weights: list[list[float]]


@dataclass(frozen=True)
class Translation:
    """One hypothesis: text, GNMT score, whether its placeables survived, and the attention
    alignment when asked for."""

    text: str
    score: float
    placeables_ok: bool = True
    alignment: Alignment | None = None


class Translator:
    """A translation model ready for :meth:`translate` (see the module docstring)."""

    def __init__(self, checkpoint: str, decode: DecodeConfig | None = None) -> None:
        from nmt.checkpoint.files import load, require_single_device
        from nmt.release.shipped import resolve_checkpoint, tuned_decode

        path, self.name = resolve_checkpoint(checkpoint)
        ckpt = require_single_device(load(path), checkpoint)
        self.decode = decode or from_dict(DecodeConfig, tuned_decode(path))
        check_decode(self.decode)
        loaded: tuple[Seq2Seq, Tokenizer, Arithmetic] = load_for_decoding(
            checkpoint, self.decode, ckpt
        )
        self.model, self.tokenizer, self.arithmetic = loaded
        data = from_dict(DataConfig, ckpt["config"]["data"])
        self.source_lang, self.target_lang = data.src_lang, data.tgt_lang
        self.directions: list[str] = list(data.directions)  # a multilingual model's
        self._lock = threading.Lock()

    def translate(
        self,
        texts: Sequence[str],
        *,
        beam_size: int | None = None,
        n_best: int = 1,
        alignments: bool = False,
        placeables: bool = True,
        placeable_constraint: bool | None = None,
        target_lang: str | None = None,
    ) -> list[list[Translation]]:
        """Up to ``n_best`` translations of each text, best first (empty text: one empty
        translation). Line breaks inside a text are placeables (kept) when ``placeables``,
        else spaces; ``placeable_constraint`` (default: ``decode.placeable_constraint``) makes
        the search write each placeable exactly once. A long text is translated in pieces and
        joined (its 1-best only)."""
        settings = dataclasses.replace(
            self.decode,
            beam_size=beam_size or self.decode.beam_size,
            nbest=n_best,
            target_lang=self.decode.target_lang if target_lang is None else target_lang,
        )
        check_decode(settings)
        constrain = self.decode.placeable_constraint
        settings = dataclasses.replace(
            settings,
            placeables=placeables,
            placeable_constraint=constrain
            if placeable_constraint is None
            else placeable_constraint,
        )
        with self._lock:
            hyps = translate_masked(self.model, self.tokenizer, texts, settings)
            return [
                [
                    Translation(
                        text,
                        score,
                        ok,
                        self._align(source, text, settings) if alignments else None,
                    )
                    for text, score, ok in h
                ]
                for source, h in zip(texts, hyps, strict=True)
            ]

    @torch.inference_mode()
    def _align(self, source: str, target: str, settings: DecodeConfig) -> Alignment:
        """The model's attention when forced to translate ``source`` into ``target`` (both
        masked as the search saw them, when ``decode.placeables``)."""
        if settings.placeables:
            source, target = mask(source).text, mask(target).text
        tok, model = self.tokenizer, self.model
        src_ids = source_prefix(tok, settings.target_lang) + tok.encode([source])[0]
        tgt_ids = tok.encode([target])[0]
        src = torch.tensor([*src_ids, EOS_ID]).unsqueeze(1)
        src_len = torch.tensor([src.size(0)])
        device = model.input_embedding().weight.device
        src, src_len = src.to(device), src_len.to(device)
        memory = model.prepare_memory(model.encode(src, src_len), src_len)
        state = model.init_state(1)
        rows: list[list[float]] = []
        for y in [BOS_ID, *tgt_ids]:
            y_prev = torch.tensor([y], device=device)
            _, state, attn = model.step(y_prev, state, memory)
            rows.append([round(float(a), 4) for a in attn[0]])
        pieces = [tok.id_to_piece(i) for i in [*src_ids, EOS_ID]]
        return Alignment(pieces, [tok.id_to_piece(i) for i in [*tgt_ids, EOS_ID]], rows)

    def languages(self) -> list[dict[str, Any]]:
        """LibreTranslate's ``/languages`` answer: each source language with its targets."""
        if self.directions:
            pairs = [d.split("-", 1) for d in self.directions]
        else:
            pairs = [[self.source_lang, self.target_lang]]
        sources = sorted({s for s, _ in pairs})
        return [
            {"code": s, "name": s, "targets": sorted(t for a, t in pairs if a == s)}
            for s in sources
        ]

    def target_for(self, source: str, target: str) -> str | None:
        """``target_lang`` for a request ``source -> target`` (``None``: the model's only
        pair); an unsupported pair is a :class:`nmt.errors.UserError`."""
        pairs = {(d["code"], t) for d in self.languages() for t in d["targets"]}
        if (source, target) not in pairs:
            known = ", ".join(f"{s}-{t}" for s, t in sorted(pairs))
            raise UserError(f"{source}-{target} is not a direction of this model ({known})")
        return target if self.directions else None
