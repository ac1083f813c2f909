"""Constrained search over masked placeables: a translation writes exactly its source's sentinels.

With placeables masked (:mod:`data.placeables`) a source carries the sentinels ``{1}`` ..
``{n}``, several subword pieces each (``▁``, ``{``, ``1``, ``}``). Left alone, a model may
drop one, write one twice or invent ``{7}``. :class:`SentinelVocab` knows which pieces can
touch a sentinel (those with a brace or a digit in their text); :class:`SentinelRows` follows
every hypothesis of a beam search and bans, at each step, the pieces that would

- open a sentinel when none is left to write, or close a sentinel the source lacks or that
  was already written, or put anything but digits and ``}`` inside an open one;
- end the translation (eos) while a sentinel is still open or unwritten.

So every finished hypothesis holds each source sentinel exactly once, in any order; the one
exception is the length cap, where the search forces eos whatever is missing (the
restore step reports such a line). Only sources with at least one sentinel and no other brace
are constrained: the others are searched exactly as without this module.

State of a hypothesis: (the digits of the sentinel it has open, or ``None``; the sentinel
numbers still to write). Masks are cached per state (few distinct states per batch).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from data.placeables import SENTINEL

State = tuple[str | None, frozenset[int]]
_DIGITS = frozenset("0123456789")


def advance(state: State, text: str) -> State | None:
    """``state`` after writing ``text``; ``None`` when the text breaks the rules above."""
    open_, left = state
    for ch in text:
        if open_ is None:
            if ch == "{":
                if not left:
                    return None
                open_ = ""
            elif ch == "}":
                return None
        elif ch in _DIGITS:
            digits = open_ + ch
            if not any(str(k).startswith(digits) for k in left):
                return None
            open_ = digits
        elif ch == "}" and open_ and int(open_) in left:
            left, open_ = left - {int(open_)}, None
        else:
            return None
    return open_, left


class SentinelVocab:
    """The pieces of a vocabulary as text, and the banned-piece mask of each state.

    ``pieces[i]`` is piece ``i`` as the tokenizer spells it (``▁`` for a space)."""

    def __init__(self, pieces: Sequence[str], eos_id: int) -> None:
        self.text = [p.replace("\u2581", " ") for p in pieces]
        self.eos_id = eos_id
        self.touching = [
            i for i, t in enumerate(self.text) if any(c in "{}" or c in _DIGITS for c in t)
        ]
        self._touching = frozenset(self.touching)
        self._banned: dict[tuple[State, torch.device], Tensor] = {}
        self._next: dict[tuple[State, int], State | None] = {}

    def requirement(self, ids: Sequence[int]) -> State | None:
        """The start state for a source of piece ``ids``: ``None`` (not constrained) when
        it has no sentinel, a repeated one, or a brace that is not part of a sentinel."""
        text = "".join(self.text[i] for i in ids if 0 <= i < len(self.text))
        numbers = [int(n) for n in SENTINEL.findall(text)]
        braces = text.count("{") + text.count("}")
        if not numbers or braces != 2 * len(numbers) or len(set(numbers)) != len(numbers):
            return None
        return None, frozenset(numbers)

    def step(self, state: State, piece: int) -> State | None:
        """The state after writing ``piece`` (``None``: a rule was broken)."""
        if piece not in self._touching:
            return state if state[0] is None else None
        key = (state, piece)
        if key not in self._next:
            self._next[key] = advance(state, self.text[piece])
        return self._next[key]

    def banned(self, state: State, device: torch.device) -> Tensor:
        """``[V]`` bool: the pieces a hypothesis in ``state`` must not write next."""
        key = (state, device)
        if key not in self._banned:
            ok = [i for i in self.touching if advance(state, self.text[i]) is not None]
            if state[0] is None:  # outside a sentinel: plain pieces are fine
                mask = torch.zeros(len(self.text), dtype=torch.bool)
                mask[self.touching] = True
                mask[ok] = False
            else:  # inside one: only its digits and its closing brace
                mask = torch.ones(len(self.text), dtype=torch.bool)
                mask[ok] = False
            mask[self.eos_id] = state[0] is not None or bool(state[1])
            self._banned[key] = mask.to(device)
        return self._banned[key]

    def rows(self, src: Tensor, src_len: Tensor) -> SentinelRows | None:
        """The per-hypothesis rules for a batch ``src[Ts,B]`` (``src_len[B]``, the source eos
        included), one row per sentence; ``None`` when no sentence is constrained."""
        cols = src.t().tolist()
        starts = [self.requirement(c[: n - 1]) for c, n in zip(cols, src_len.tolist(), strict=True)]
        if all(s is None for s in starts):
            return None
        return SentinelRows(self, starts, src.device)


class SentinelRows:
    """The state of every hypothesis row of a search (``None``: not constrained)."""

    def __init__(self, vocab: SentinelVocab, states: list[State | None], device: torch.device):
        self.vocab, self.states, self.device = vocab, states, device

    def restrict(
        self, log_probs: Tensor, row_sent: Tensor, ids: Tensor | None, force: Tensor
    ) -> None:
        """Set the banned pieces of ``log_probs[N, V|S]`` to -inf, in place. ``row_sent[N]``:
        each row's active sentence; ``ids[ba, S]``: the shortlist (columns -> vocabulary ids);
        ``force[ba]``: sentences at their length cap (left alone: only eos is open to them)."""
        forced = force[row_sent].tolist()
        live = [(r, s) for r, s in enumerate(self.states) if s is not None and not forced[r]]
        if not live:
            return
        index = torch.tensor([r for r, _ in live], dtype=torch.long, device=log_probs.device)
        banned = torch.stack([self.vocab.banned(s, log_probs.device) for _, s in live])
        if ids is not None:
            banned = banned.gather(1, ids[row_sent[index]].clamp(min=0))
        log_probs[index] = log_probs[index].masked_fill(banned, float("-inf"))

    def advance(self, parents: Tensor, tokens: Tensor) -> None:
        """The rows after a step: row ``i`` continues row ``parents[i]`` with ``tokens[i]``."""
        old = [self.states[p] for p in parents.tolist()]
        self.states = [
            None if s is None else self.vocab.step(s, t)
            for s, t in zip(old, tokens.tolist(), strict=True)
        ]
