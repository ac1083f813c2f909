"""One rank's part of GNMT's forward and backward in the wavefront across processes.

The layers ("units") in model order: ``0`` Embed+Enc1 (bidirectional: a barrier, whole
source), ``1..E-1`` Enc2..EncE (wave over source chunks), ``E`` Dec1+Attention, ``E+1..S-2``
Dec2..DecD (wave over target chunks), ``S-1`` the generator with the loss. ``owners[u]`` is
the rank of unit u (non-decreasing: each rank holds consecutive units). Dataflow, per batch:

1. the owner of unit 0 runs it on the whole source and sends the output chunk by chunk;
2. encoder units wave over the source chunks (:class:`parallel.runtime.wave.Carried`);
3. the top encoder output goes to the owner of Dec1 chunk by chunk, which concatenates it
   (barrier: the attention needs every source position) and builds the attention memory;
   with ``encoder_split`` steps 1-3 are instead every rank encoding its share of the
   sentences and Dec1's rank gathering them (:mod:`nmt.train.wave_encoder`); with
   ``attention_split`` too, the rank of Dec2 keeps its share and runs the attention of its
   own sentences (it receives Dec1's h and the others' context, and returns h's gradient
   with its attention's part added), so its encoder output and gradient stay local;
4. Dec1..DecD wave over the target chunks; the generator takes each chunk's (h, ctx) and
   runs forward and backward at once (it carries no state; who runs which sentences:
   :mod:`nmt.train.wave_generator`). A rank that holds only the generator takes chunk 0,
   then the last chunk back to chunk 1, so that the decoder's backward (last chunk first)
   can start early; a rank that also holds the last decoder layer runs its generator
   chunks in that layer's backward, each just before the chunk's decoder backward (the
   generator of chunk c overlaps the decoder backward of chunk c+1 on the rank before); a
   helper rank without it takes its share last chunk first;
5. the backward runs the decoder units' chunks in reverse, then through the memory and the
   target embedding (one call each), then the encoder units' chunks in reverse, then unit 0
   (with ``encoder_split``: every rank's encoder share at once).

Every tensor between two ranks goes through :class:`parallel.runtime.wave.Wire`; the
gradients of parameters used on several ranks are summed by the engine, those that the
encoder's backward leaves alone while it runs (:mod:`nmt.train.wave_gradients`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from data.batching import Batch
from nmt.models.gnmt import GNMT
from nmt.models.gnmt_layers import attend
from nmt.models.wavefront import chunk_bounds
from nmt.train.wave_encoder import SplitEncoder, grad_of, sentence_spans
from nmt.train.wave_generator import LossArgs, WaveGenerator
from nmt.train.wave_memory import Memory, decoder_memory, own_memory
from parallel.runtime.timeline import TimelineRecorder
from parallel.runtime.wave import (
    BWD,
    FWD,
    Carried,
    Chunk,
    Pending,
    State,
    Wire,
    leaf,
    saving,
    timed,
)


@dataclass
class Shapes:
    """Sizes of one batch: chunk spans of source and target, batch size, hidden size."""

    src: list[tuple[int, int]]
    tgt: list[tuple[int, int]]
    batch: int
    hidden: int


class WaveProgram:
    """Forward and backward of one batch on rank ``rank`` (see the module docstring)."""

    def __init__(
        self,
        model: GNMT,
        owners: list[int],
        rank: int,
        chunks: int,
        wire: Wire,
        timeline: TimelineRecorder | None = None,
        generator_share: float = 0.0,
        encoder_split: bool = False,
        attention_split: bool = False,
        recompute: bool = False,
        encoder_shares: Sequence[float] | None = None,
    ) -> None:
        self.m, self.owners, self.rank, self.chunks = model, owners, rank, chunks
        self.wire, self.timeline, self.recompute = wire, timeline, recompute
        self.E, self.S = model.n_enc, len(model.stages)
        self.ranks = ranks = max(owners) + 1
        # the rank that runs the attention of its own sentences (``attention_split``)
        self.attends = owners[self.E + 1] if attention_split else None
        if attention_split and not (encoder_split and owners[self.E + 1] != owners[self.E]):
            raise ValueError("attention_split needs encoder_split and Dec2 off Dec1's rank")
        split_args = (owners[self.E], wire, timeline, self.attends, recompute, encoder_shares)
        self.split = SplitEncoder(model, rank, ranks, *split_args) if encoder_split else None
        mine = [u for u, r in enumerate(owners) if r == rank]
        self.enc_units = [u for u in mine if 1 <= u < self.E and self.split is None]
        self.dec_units = [u for u in mine if self.E <= u < self.S - 1]
        self.has_gen = owners[-1] == rank
        self.gen = WaveGenerator(model, owners, rank, wire, timeline, generator_share)
        helper = self.gen.helper == rank
        last_decoder = owners[-2] == rank
        # the generator's share of the sentences: kept by the last decoder layer's rank
        # (generator alone elsewhere), or sent to the rank before (generator with Dec_D)
        self.splits = helper and last_decoder
        self.helps = helper and not last_decoder
        self.shares = self.has_gen and last_decoder and self.gen.helper is not None
        # called between the decoder's and the encoder's backward (the engine's gradient sums)
        self.on_decoded: Callable[[], None] | None = None

    def run(self, b: Batch, scale: float, pad_id: int, eps: float) -> tuple[float, float]:
        """Forward and backward of batch ``b`` (loss gradient ``scale`` per unit of loss sum);
        returns (loss sum, nll sum) of the generator chunks this rank ran (0 elsewhere)."""
        sh = Shapes(
            chunk_bounds(b.src.size(0), self.chunks),
            chunk_bounds(b.tgt_in.size(0), self.chunks),
            b.src.size(1),
            self.m.hidden,
        )
        if self.split is not None:  # every rank encodes a share of the sentences
            enc_leaf = self.split.forward(b)
            sums = self.decode(b, sh, enc_leaf, scale, pad_id, eps)
            if self.on_decoded is not None:
                self.on_decoded()
            self.split.backward(enc_leaf)
            self.wire.flush()
            return sums
        h_full, h_leaf, enc_seg = self.encode(b, sh)
        enc_leaf = self.top_encoder(sh, enc_seg)
        sums = self.decode(b, sh, enc_leaf, scale, pad_id, eps)
        if self.on_decoded is not None:
            self.on_decoded()
        self.encoder_backward(sh, enc_leaf, enc_seg)
        if h_full is not None and h_leaf is not None:
            self.bottom_backward(sh, h_full, h_leaf)
        self.wire.flush()
        return sums

    # ------------------------------------------------------------------ encoder forward
    def encode(
        self, b: Batch, sh: Shapes
    ) -> tuple[Tensor | None, Tensor | None, tuple[Carried, list[Chunk]] | None]:
        """Units 0..E-1 forward: unit 0's output (and its leaf) where it runs here; this
        rank's encoder segment with its output chunks."""
        own, me = self.owners, self.rank
        h_full = h_leaf = None
        if own[0] == me:
            with timed(self.timeline, "F", 0, 0):
                h_full = saving(self.recompute, self.m.embed_stage.encode, b.src, b.src_len)
            h_leaf = leaf(h_full)
            if own[1] != me:
                for c, (a, e) in enumerate(sh.src):
                    self.wire.send([h_leaf[a:e]], own[1], FWD, 1, c)
        if not self.enc_units:
            return h_full, h_leaf, None
        first, last = self.enc_units[0], self.enc_units[-1]
        seg = Carried(self.encoder_fn(sh), first, self.timeline, self.recompute)
        width = 2 * sh.hidden if first == 1 else sh.hidden
        pend = self.post(own[first - 1], FWD, first, sh.src, [(sh.batch, width)])
        outs: list[Chunk] = []
        for c, (a, e) in enumerate(sh.src):
            x = (h_leaf[a:e],) if h_leaf is not None else (leaf(pend[c].wait()[0]),)
            y = seg.forward(c, x)
            outs.append(y)
            if own[last + 1] != me:
                self.wire.send(y, own[last + 1], FWD, last + 1, c)
        return h_full, h_leaf, (seg, outs)

    def encoder_fn(self, sh: Shapes) -> Any:
        stages: list[Any] = [self.m.stages[u] for u in self.enc_units]
        total = sh.src[-1][1]

        def run(c: int, x: Chunk, state: State | None) -> tuple[Chunk, State]:
            h, new = x[0], []
            for i, stage in enumerate(stages):
                st = None if state is None else (state[2 * i], state[2 * i + 1])
                h, (hn, cn) = stage.chunk(h, st, (sh.src[c][0], total))
                new += [hn, cn]
            return (h,), tuple(new)

        return run

    def top_encoder(self, sh: Shapes, enc_seg: tuple[Carried, list[Chunk]] | None) -> Tensor | None:
        """On Dec1's rank: the whole top encoder output ``[Ts,B,H]`` as a leaf."""
        own, me = self.owners, self.rank
        if own[self.E] != me:
            return None
        if own[self.E - 1] == me and enc_seg is not None:
            return leaf(torch.cat([y[0] for y in enc_seg[1]]))
        pend = self.post(own[self.E - 1], FWD, self.E, sh.src, [(sh.batch, sh.hidden)])
        return leaf(torch.cat([p.wait()[0] for p in pend]))

    # ------------------------------------------------------------------ decoder
    def decode(
        self, b: Batch, sh: Shapes, enc_leaf: Tensor | None, scale: float, pad: int, eps: float
    ) -> tuple[float, float]:
        """The decoder wave, forward and backward; the gradient reaches ``enc_leaf``."""
        loss_args, sums = (scale, pad, eps), [0.0, 0.0]
        if not self.dec_units and self.has_gen:
            return self.gen.alone(b, sh.tgt, loss_args)
        if not self.dec_units:
            if self.helps:
                self.gen.help(b, sh.tgt, loss_args, sums)
            return sums[0], sums[1]
        first, elsewhere = self.dec_units[0], self.elsewhere(b.src.size(1))
        context = local = None
        if first == self.E:
            assert enc_leaf is not None
            context = decoder_memory(self.m, b, enc_leaf, elsewhere)
        elif self.rank == self.attends and enc_leaf is not None:
            local = own_memory(self.m, b, enc_leaf, elsewhere)
        seg = Carried(self.decoder_fn(sh, context, local), first, self.timeline, self.recompute)
        deferred = self.decode_forward(b, sh, seg, context)
        if self.helps:  # the generator's share, between this rank's forward and backward
            self.gen.help(b, sh.tgt, loss_args, sums)
        self.decode_backward(sh, seg, context, deferred, (loss_args, sums))
        if local is not None:
            with timed(self.timeline, "B", self.E, 0):
                local.backward()
        return sums[0], sums[1]

    def elsewhere(self, batch: int) -> tuple[int, int]:
        """The sentences ``[lo, hi)`` whose attention runs on the rank of Dec2
        (``attention_split``; ``(0, 0)`` without)."""
        if self.attends is None:
            return (0, 0)
        assert self.split is not None  # attention_split needs encoder_split
        return sentence_spans(batch, self.ranks, self.split.shares)[self.attends]

    def dec_sizes(self, boundary: int, batch: int) -> list[tuple[int, int]]:
        """(batch, width) of the (h, ctx) message into unit ``boundary``: Dec2's input
        lacks the context of the sentences whose attention runs on Dec2's rank."""
        lo, hi = self.elsewhere(batch) if boundary == self.E + 1 else (0, 0)
        return [(batch, self.m.hidden), (batch - (hi - lo), self.m.hidden)]

    def keep(self, batch: int) -> int:
        """Sentences (the first ones) whose generator runs on the helper rank, as seen by
        the rank of the last decoder layer; 0 elsewhere."""
        return self.gen.kept(batch) if self.splits or self.shares else 0

    def decode_forward(
        self, b: Batch, sh: Shapes, seg: Carried, context: Memory | None
    ) -> dict[int, tuple[Chunk, Tensor]]:
        """This rank's decoder chunks forward. Returns, on a rank that holds the last decoder
        layer and runs generator chunks (its own or a helper's share), each chunk's generator
        input and target: the generator runs in the backward, just before the chunk's decoder
        backward, last chunk first. Every chunk's output leaves for the next rank (and the
        helper) as soon as it is computed."""
        own, first, last = self.owners, self.dec_units[0], self.dec_units[-1]
        pend = (
            []
            if context is not None
            else self.post(own[first - 1], FWD, first, sh.tgt, self.dec_sizes(first, sh.batch))
        )
        deferred: dict[int, tuple[Chunk, Tensor]] = {}
        keep = self.keep(sh.batch)
        for c, (a, e) in enumerate(sh.tgt):
            if context is not None:
                x: Chunk = (context.embedding[a:e],)
            else:
                x = tuple(map(leaf, pend[c].wait()))
            y = seg.forward(c, x)
            if keep:  # the first `keep` sentences: generator here, or on the helper rank
                kept, y = (y[0][:, :keep], y[1][:, :keep]), (y[0][:, keep:], y[1][:, keep:])
                if self.splits:
                    self.wire.send(y, own[last + 1], FWD, last + 1, c)
                    deferred[c] = (kept, b.tgt_out[a:e, :keep])
                    continue
                self.wire.send(kept, self.gen.helper or 0, FWD, self.S - 1, c)
            if self.has_gen:
                deferred[c] = (y, b.tgt_out[a:e, keep:])
            else:
                self.wire.send(y, own[last + 1], FWD, last + 1, c)
        return deferred

    def decode_backward(
        self,
        sh: Shapes,
        seg: Carried,
        context: Memory | None,
        deferred: dict[int, tuple[Chunk, Tensor]],
        loss: tuple[LossArgs, list[float]],
    ) -> None:
        """This rank's decoder chunks backward, last chunk first, each after this rank's
        generator chunk from ``deferred`` (if any: adds to ``loss``'s sums); then, on Dec1's
        rank, the memory and embedding backward."""
        loss_args, sums = loss
        own, first, last = self.owners, self.dec_units[0], self.dec_units[-1]
        keep, sizes = self.keep(sh.batch), self.dec_sizes(first, sh.batch)
        if self.shares:  # the helper's gradients of the first `keep` sentences (if any)
            helper, kept = self.gen.helper or 0, [(keep, sh.hidden)] * 2
            back = self.post(helper, BWD, self.S - 1, sh.tgt, kept) if keep else []
        else:
            back_sizes = self.dec_sizes(last + 1, sh.batch - keep)
            back = self.post(own[last + 1], BWD, last + 1, sh.tgt, back_sizes)
        for c in reversed(range(len(sh.tgt))):
            parts = []
            if c in deferred:
                parts.append(self.gen.generate(c, *deferred.pop(c), loss_args, sums))
            if back:  # in sentence order: the helper's first, or after the ones kept here
                parts.insert(0 if self.shares else len(parts), list(back[c].wait()))
            g: list[Tensor | None] = (
                parts[0]
                if len(parts) == 1
                else [torch.cat(pair, dim=1) for pair in zip(*parts, strict=True)]
            )
            grads = seg.backward(c, g)
            if context is None:
                a, e = sh.tgt[c]
                out = [g if g is not None else torch.zeros(e - a, *size)
                       for g, size in zip(grads, sizes, strict=True)]  # fmt: skip
                self.wire.send(out, own[first - 1], BWD, first, c)
        if context is not None:
            with timed(self.timeline, "B", self.E, 0):
                context.backward()

    def decoder_fn(self, sh: Shapes, context: Memory | None, local: Memory | None) -> Any:
        """This rank's decoder units as one chunk function: (h, ctx) -> (h', ctx), or from
        Dec1 (target embedding) -> (h, ctx); with ``local`` (``attention_split``, Dec2's
        rank) the context of its own sentences is computed here first and put in place."""
        stages: list[Any] = [self.m.stages[u] for u in self.dec_units]
        total = sh.tgt[-1][1]
        lo, hi = self.elsewhere(sh.batch)
        attention = self.m.attn_stage.attention

        def run(c: int, x: Chunk, state: State | None) -> tuple[Chunk, State]:
            span, new = (sh.tgt[c][0], total), []
            h, ctx = (x[0], None) if context is not None else (x[0], x[1])
            if local is not None and ctx is not None:
                mine = attend(attention, h[:, lo:hi], local.memory)
                ctx = torch.cat((ctx[:, :lo], mine, ctx[:, lo:]), dim=1)
            for i, stage in enumerate(stages):
                st = None if state is None else (state[2 * i], state[2 * i + 1])
                if i == 0 and context is not None:
                    h, ctx, (hn, cn) = stage.chunk(h, st, context.memory, span, (lo, hi))
                else:
                    h, (hn, cn) = stage.chunk(h, ctx, st, span)
                new += [hn, cn]
            assert ctx is not None
            return (h, ctx), tuple(new)

        return run

    # ------------------------------------------------------------------ encoder backward
    def encoder_backward(
        self, sh: Shapes, enc_leaf: Tensor | None, enc_seg: tuple[Carried, list[Chunk]] | None
    ) -> None:
        own, me = self.owners, self.rank
        top = own[self.E - 1]
        if enc_leaf is not None and top != me:
            grad = grad_of(enc_leaf)
            for c in reversed(range(len(sh.src))):
                a, e = sh.src[c]
                self.wire.send([grad[a:e]], top, BWD, self.E, c)
        if enc_seg is None:
            return
        seg, first, last = enc_seg[0], self.enc_units[0], self.enc_units[-1]
        back = self.post(own[last + 1], BWD, last + 1, sh.src, [(sh.batch, sh.hidden)])
        for c in reversed(range(len(sh.src))):
            a, e = sh.src[c]
            if own[last + 1] == me:
                g = [grad_of(enc_leaf)[a:e]] if enc_leaf is not None else [None]
            else:
                g = list(back[c].wait())
            grads = seg.backward(c, g)
            if own[first - 1] != me and grads[0] is not None:
                self.wire.send([grads[0]], own[first - 1], BWD, first, c)

    def bottom_backward(self, sh: Shapes, h_full: Tensor, h_leaf: Tensor) -> None:
        """Unit 0's backward with the gradient of its whole output."""
        if self.owners[1] == self.rank:
            grad = grad_of(h_leaf)
        else:
            back = self.post(self.owners[1], BWD, 1, sh.src, [(sh.batch, 2 * sh.hidden)])
            grad = torch.cat([back[c].wait()[0] for c in range(len(sh.src))])
        with timed(self.timeline, "B", 0, 0):
            torch.autograd.backward([h_full], [grad.to(h_full.dtype)])

    # ------------------------------------------------------------------ messages
    def post(
        self,
        src: int,
        kind: int,
        boundary: int,
        spans: list[tuple[int, int]],
        sizes: list[tuple[int, int]],
    ) -> list[Pending]:
        """Receives of every chunk's message from ``src`` (none when ``src`` is this rank):
        one tensor ``[chunk length, batch, width]`` per (batch, width) of ``sizes``."""
        if src == self.rank:
            return []
        return [
            self.wire.post([(e - a, n, w) for n, w in sizes], src, kind, boundary, c)
            for c, (a, e) in enumerate(spans)
        ]
