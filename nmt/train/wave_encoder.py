"""The encoder shared out over the wavefront's ranks by sentences (``parallel.encoder_split``).

GNMT's encoder is the wavefront's serial part: its first layer is bidirectional (it needs
the whole source before any output chunk is final) and the attention needs every source
position before the decoder starts, so while one rank encodes, the others wait, and again
in the backward. Its sentences, though, are independent. With the split, every rank runs
every encoder layer (whole sequence, one call per layer) on its own slice of the batch's
sentences; the rank of Dec1 gathers the top outputs (one message per rank), and after the
decoder's backward sends each rank the gradient of its slice, so the encoder's forward and
backward run on all ranks at once. The encoder's parameter gradients are partial on every
rank and summed over them after the encoder's backward (:mod:`nmt.train.wave_gradients`).

Exact: each dropout module draws the whole batch's mask and applies its rank's columns
(:func:`nmt.models.dropout.sentence_slice`), so the masks equal one device's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from data.batching import Batch
from nmt.models.dropout import SeqDropout, sentence_slice
from nmt.models.gnmt import GNMT
from nmt.models.wavefront import chunk_bounds
from parallel.runtime.timeline import TimelineRecorder
from parallel.runtime.wave import BWD, FWD, Wire, leaf, saving, timed


def sentence_spans(
    batch: int, ranks: int, shares: Sequence[float] | None = None
) -> list[tuple[int, int]]:
    """Each rank's sentences ``[lo, hi)`` of a batch, consecutive. Without ``shares`` the
    sizes differ by at most one (the first ranks take the extra ones; empty where ``batch <
    ranks``); with them (one weight per rank, ``parallel.encoder_shares``) rank r's span
    ends at ``batch`` times the weights up to r over their sum, rounded half up. Either way
    rank 0 has a sentence when the batch has one (it never keeps its own attention, so Dec1
    always has a sentence to attend for)."""
    if shares is None:
        spans = chunk_bounds(batch, ranks)
        return spans + [(batch, batch)] * (ranks - len(spans))
    total, running = sum(shares), 0.0
    ends: list[int] = []
    for w in shares:
        running += w
        floor = ends[-1] if ends else min(1, batch)
        ends.append(max(floor, min(batch, int(batch * running / total + 0.5))))
    ends[-1] = batch
    return [(0 if r == 0 else ends[r - 1], e) for r, e in enumerate(ends)]


class SplitEncoder:
    """One rank's part of the split encoder (module docstring); ``gather`` is the rank of
    Dec1; ``keeper`` (None: none) a rank that keeps its own top output for an attention of
    its own (``parallel.attention_split``): it is not gathered, and its gradient comes from
    the keeper's own backward. ``forward`` then ``backward``, once per batch."""

    def __init__(
        self,
        model: GNMT,
        rank: int,
        ranks: int,
        gather: int,
        wire: Wire,
        timeline: TimelineRecorder | None = None,
        keeper: int | None = None,
        recompute: bool = False,
        shares: Sequence[float] | None = None,
    ) -> None:
        self.m, self.rank, self.ranks, self.gather = model, rank, ranks, gather
        self.shares = shares  # the ranks' weights in the share-out (None: equal)
        self.wire, self.timeline, self.keeper = wire, timeline, keeper
        self.recompute = recompute  # the encoder's forward runs again in its backward
        encoder = [model.embed_stage, *model.enc_stages]
        self.drops: list[SeqDropout] = [
            d for stage in encoder for d in stage.modules() if isinstance(d, SeqDropout)
        ]
        self._mine: Tensor | None = None  # this rank's top output [Ts,b,H], with its graph
        self._spans: list[tuple[int, int]] = []

    def forward(self, b: Batch) -> Tensor | None:
        """Encode this rank's sentences; on the gathering rank the top output of every
        gathered rank's sentences ``[Ts,B',H]`` as a leaf, in sentence order (B' = B but for
        the keeper's); on the keeper its own ``[Ts,b,H]`` as a leaf; None elsewhere."""
        batch, steps, hidden = b.src.size(1), b.src.size(0), self.m.hidden
        self._spans = spans = sentence_spans(batch, self.ranks, self.shares)
        lo, hi = spans[self.rank]
        gathered = self.gathered()
        pend = {}
        if self.rank == self.gather:  # post first: the others' slices may arrive meanwhile
            pend = {
                r: self.wire.post([(steps, e - a, hidden)], r, FWD, self.m.n_enc, 0)
                for r, (a, e) in gathered
                if r != self.rank
            }
        self._mine = self.encode(b, lo, hi, batch) if hi > lo else None
        if self.rank == self.keeper:
            return None if self._mine is None else leaf(self._mine)
        if self.rank != self.gather:
            if self._mine is not None:
                self.wire.send([self._mine], self.gather, FWD, self.m.n_enc, 0)
            return None
        parts: list[Tensor] = []
        for r, _ in gathered:
            if r == self.rank and self._mine is not None:
                parts.append(self._mine.detach().float())
            else:
                parts.append(pend[r].wait()[0])
        return leaf(torch.cat(parts, dim=1))

    def gathered(self) -> list[tuple[int, tuple[int, int]]]:
        """(rank, sentences) of every rank whose top output the gathering rank collects."""
        return [(r, (a, e)) for r, (a, e) in enumerate(self._spans) if e > a and r != self.keeper]

    def encode(self, b: Batch, lo: int, hi: int, batch: int) -> Tensor:
        """Every encoder layer over sentences ``[lo, hi)``: ``[Ts,hi-lo,H]``."""

        def run(src: Tensor, src_len: Tensor) -> Tensor:  # the columns, also when recomputed
            with sentence_slice(self.drops, lo, batch):
                return self.m.encode(src, src_len)

        with timed(self.timeline, "F", 0, 0):
            return saving(self.recompute, run, b.src[:, lo:hi], b.src_len[lo:hi])

    def backward(self, top: Tensor | None) -> None:
        """After the decoder's backward: the gathering rank sends every gathered rank the
        gradient of its slice of ``top`` (the leaf :meth:`forward` returned; the keeper's
        gradient is its own leaf's); every rank runs its encoder backward."""
        mine = self._mine
        if self.rank == self.gather:
            assert top is not None
            grad = grad_of(top)
            own: Tensor | None = None
            offset = 0
            for r, (a, e) in self.gathered():
                part, offset = grad[:, offset : offset + e - a], offset + e - a
                if r == self.rank:
                    own = part
                else:
                    self.wire.send([part], r, BWD, self.m.n_enc, 0)
        elif self.rank == self.keeper:
            own = None if top is None else grad_of(top)
        elif mine is not None:
            own = self.wire.post([tuple(mine.shape)], self.gather, BWD, self.m.n_enc, 0).wait()[0]
        else:
            own = None
        if mine is not None and own is not None:
            with timed(self.timeline, "B", 0, 0):
                torch.autograd.backward([mine], [own.to(mine.dtype)])
        self._mine, self._spans = None, []


def grad_of(t: Tensor) -> Tensor:
    """``t.grad``, zeros when nothing reached ``t``."""
    return t.grad if t.grad is not None else torch.zeros_like(t)


def encoder_parameters(model: GNMT) -> Sequence[torch.nn.Parameter]:
    """The parameters the split encoder uses on every rank (source embedding included)."""
    return [p for stage in (model.embed_stage, *model.enc_stages) for p in stage.parameters()]
