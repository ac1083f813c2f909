"""One rank's part of GNMT's forward and backward in the wavefront across processes.

The layers ("units") in model order: ``0`` Embed+Enc1 (bidirectional: a barrier, whole
source), ``1..E-1`` Enc2..EncE (wave over source chunks), ``E`` Dec1+Attention, ``E+1..S-2``
Dec2..DecD (wave over target chunks), ``S-1`` the generator with the loss. ``owners[u]`` is
the rank of unit u (non-decreasing: each rank holds consecutive units). Dataflow, per batch:

1. the owner of unit 0 runs it on the whole source and sends the output chunk by chunk;
2. encoder units wave over the source chunks (:class:`parallel.runtime.wave.Carried`);
3. the top encoder output goes to the owner of Dec1 chunk by chunk, which concatenates it
   (barrier: the attention needs every source position) and builds the attention memory;
4. Dec1..DecD wave over the target chunks; the generator takes each chunk's (h, ctx) and
   runs forward and backward at once (it carries no state). A rank that holds only the
   generator takes chunk 0, then the last chunk back to chunk 1, so that the decoder's
   backward (last chunk first) can start early;
5. the backward runs the decoder units' chunks in reverse, then through the memory and the
   target embedding (one call each), then the encoder units' chunks in reverse, then unit 0.

Every tensor between two ranks goes through :class:`parallel.runtime.wave.Wire`; the
gradients of parameters used on several ranks are summed afterwards by the engine
(:mod:`nmt.train.wavefront_ranks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from data.batching import Batch
from nmt.models.gnmt import GNMT
from nmt.models.loss import label_smoothed_nll
from nmt.models.wavefront import chunk_bounds
from parallel.runtime.timeline import TimelineRecorder
from parallel.runtime.wave import Carried, Chunk, Pending, State, Wire, leaf, timed

FWD, BWD = 0, 1


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
    ) -> None:
        self.m, self.owners, self.rank, self.chunks = model, owners, rank, chunks
        self.wire, self.timeline, self.share = wire, timeline, generator_share
        self.E, self.S = model.n_enc, len(model.stages)
        mine = [u for u, r in enumerate(owners) if r == rank]
        self.enc_units = [u for u in mine if 1 <= u < self.E]
        self.dec_units = [u for u in mine if self.E <= u < self.S - 1]
        self.has_gen = owners[-1] == rank
        # the last decoder layer's rank also runs the generator on a share of the sentences
        self.splits = not self.has_gen and bool(self.dec_units) and self.dec_units[-1] == self.S - 2

    def kept(self, batch: int) -> int:
        """Sentences (the first ones of the batch) whose generator runs on the rank of the
        last decoder layer when the generator is on another rank: ``generator_share`` of
        ``batch``, at most ``batch - 1``."""
        if self.owners[-1] == self.owners[-2]:
            return 0
        return min(int(round(self.share * batch)), batch - 1)

    def run(self, b: Batch, scale: float, pad_id: int, eps: float) -> tuple[float, float]:
        """Forward and backward of batch ``b`` (loss gradient ``scale`` per unit of loss sum);
        returns (loss sum, nll sum) of the generator chunks this rank ran (0 elsewhere)."""
        sh = Shapes(
            chunk_bounds(b.src.size(0), self.chunks),
            chunk_bounds(b.tgt_in.size(0), self.chunks),
            b.src.size(1),
            self.m.hidden,
        )
        h_full, h_leaf, enc_seg = self.encode(b, sh)
        enc_leaf = self.top_encoder(sh, enc_seg)
        sums = self.decode(b, sh, enc_leaf, scale, pad_id, eps)
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
                h_full = self.m.embed_stage.encode(b.src, b.src_len)  # [Ts,B,2H]
            h_leaf = leaf(h_full)
            if own[1] != me:
                for c, (a, e) in enumerate(sh.src):
                    self.wire.send([h_leaf[a:e]], own[1], FWD, 1, c)
        if not self.enc_units:
            return h_full, h_leaf, None
        first, last = self.enc_units[0], self.enc_units[-1]
        seg = Carried(self.encoder_fn(sh), first, self.timeline)
        width = 2 * sh.hidden if first == 1 else sh.hidden
        pend = self.post(own[first - 1], FWD, first, sh.src, sh.batch, [width])
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
        pend = self.post(own[self.E - 1], FWD, self.E, sh.src, sh.batch, [sh.hidden])
        return leaf(torch.cat([p.wait()[0] for p in pend]))

    # ------------------------------------------------------------------ decoder
    def decode(
        self, b: Batch, sh: Shapes, enc_leaf: Tensor | None, scale: float, pad: int, eps: float
    ) -> tuple[float, float]:
        """The decoder wave, forward and backward; the gradient reaches ``enc_leaf``."""
        if not self.dec_units:
            return self.generator_only(b, sh, scale, pad, eps) if self.has_gen else (0.0, 0.0)
        first = self.dec_units[0]
        context = self.context(b, enc_leaf) if first == self.E else None
        seg = Carried(self.decoder_fn(sh, context), first, self.timeline)
        sums = [0.0, 0.0]
        held = self.decode_forward(b, sh, seg, context, (scale, pad, eps), sums)
        self.decode_backward(sh, seg, context, held)
        return sums[0], sums[1]

    def decode_forward(
        self,
        b: Batch,
        sh: Shapes,
        seg: Carried,
        context: Any,
        loss_args: tuple[float, int, float],
        sums: list[float],
    ) -> dict[int, list[Tensor | None]]:
        """This rank's decoder chunks forward (and the generator's chunks held here, forward
        and backward); returns the generator's input gradients per chunk."""
        own, first, last = self.owners, self.dec_units[0], self.dec_units[-1]
        widths = [sh.hidden] * 2
        pend = (
            []
            if context is not None
            else self.post(own[first - 1], FWD, first, sh.tgt, sh.batch, widths)
        )
        held: dict[int, list[Tensor | None]] = {}
        keep = self.kept(sh.batch) if self.splits else 0
        for c, (a, e) in enumerate(sh.tgt):
            x = (context[2][a:e],) if context is not None else tuple(map(leaf, pend[c].wait()))
            y = seg.forward(c, x)
            if self.has_gen:
                held[c] = self.generate(c, y, b.tgt_out[a:e], *loss_args, sums)
                continue
            if keep:  # the generator of the first `keep` sentences runs here
                mine = (y[0][:, :keep], y[1][:, :keep])
                held[c] = self.generate(c, mine, b.tgt_out[a:e, :keep], *loss_args, sums)
                y = (y[0][:, keep:], y[1][:, keep:])
            self.wire.send(y, own[last + 1], FWD, last + 1, c)
        return held

    def decode_backward(
        self, sh: Shapes, seg: Carried, context: Any, held: dict[int, list[Tensor | None]]
    ) -> None:
        """This rank's decoder chunks backward, last chunk first; then, on Dec1's rank, the
        memory and embedding backward."""
        own, first, last = self.owners, self.dec_units[0], self.dec_units[-1]
        keep = self.kept(sh.batch) if self.splits else 0
        back = self.post(own[last + 1], BWD, last + 1, sh.tgt, sh.batch - keep, [sh.hidden] * 2)
        for c in reversed(range(len(sh.tgt))):
            g: list[Tensor | None] = held.pop(c) if self.has_gen else list(back[c].wait())
            if keep:
                g = [torch.cat((mine_g, theirs), dim=1)  # type: ignore[arg-type]
                     for mine_g, theirs in zip(held.pop(c), g, strict=True)]  # fmt: skip
            grads = seg.backward(c, g)
            if context is None:
                a, e = sh.tgt[c]
                zeros = torch.zeros(e - a, sh.batch, sh.hidden)
                out = [g if g is not None else zeros for g in grads]
                self.wire.send(out, own[first - 1], BWD, first, c)
        if context is not None:
            with timed(self.timeline, "B", self.E, 0):
                backward_leaves(context)

    def context(self, b: Batch, enc_leaf: Tensor | None) -> tuple[Any, list[Tensor], Tensor]:
        """On Dec1's rank: (attention memory over leaves, [keys, values, target embedding]
        before the leaves, the embedding's leaf ``[Tt,B,H]``)."""
        assert enc_leaf is not None
        mem = self.m.prepare_memory(enc_leaf, b.src_len)
        emb = self.m.embed_stage.embedding(b.tgt_in)
        roots = [mem.keys, mem.values, emb]
        leaves = [leaf(t) for t in roots]
        memory = mem._replace(keys=leaves[0], values=leaves[1])
        return memory, roots, leaves[2]

    def decoder_fn(self, sh: Shapes, context: Any) -> Any:
        stages: list[Any] = [self.m.stages[u] for u in self.dec_units]
        with_attention = self.dec_units[0] == self.E
        total = sh.tgt[-1][1]

        def run(c: int, x: Chunk, state: State | None) -> tuple[Chunk, State]:
            span, new = (sh.tgt[c][0], total), []
            h, ctx = (x[0], None) if with_attention else (x[0], x[1])
            for i, stage in enumerate(stages):
                st = None if state is None else (state[2 * i], state[2 * i + 1])
                if i == 0 and with_attention:
                    h, ctx, (hn, cn) = stage.chunk(h, st, context[0], span)
                else:
                    h, (hn, cn) = stage.chunk(h, ctx, st, span)
                new += [hn, cn]
            assert ctx is not None
            return (h, ctx), tuple(new)

        return run

    def generate(
        self,
        c: int,
        x: Chunk,
        target: Tensor,
        scale: float,
        pad: int,
        eps: float,
        sums: list[float],
    ) -> list[Tensor | None]:
        """Generator and loss on chunk ``c`` (``x`` = (h, ctx) ``[t,B,H]``), forward and
        backward; returns the gradients of h and ctx."""
        h, ctx = leaf(x[0]), leaf(x[1])
        with timed(self.timeline, "F", self.S - 1, c):
            keep = target != pad
            rows = keep.reshape(-1).nonzero().squeeze(1)
            logits = self.m.generator(h.reshape(-1, h.size(-1)).index_select(0, rows), ctx)
            loss, nll = label_smoothed_nll(logits, target[keep], pad, eps)
            torch.autograd.backward([loss], [torch.full_like(loss, scale)])
        sums[0] += float(loss.detach())
        sums[1] += float(nll.detach())
        return [h.grad, ctx.grad]

    def generator_only(
        self, b: Batch, sh: Shapes, scale: float, pad: int, eps: float
    ) -> tuple[float, float]:
        """A rank with the generator alone: chunk 0 first, then the last chunk back to
        chunk 1 (:func:`generator_order`), so that the decoder's backward can start early."""
        src, keep = self.owners[self.S - 2], self.kept(sh.batch)
        pend = self.post(src, FWD, self.S - 1, sh.tgt, sh.batch - keep, [sh.hidden] * 2)
        sums = [0.0, 0.0]
        for c in generator_order(len(sh.tgt)):
            a, e = sh.tgt[c]
            target = b.tgt_out[a:e, keep:]
            grads = self.generate(c, tuple(pend[c].wait()), target, scale, pad, eps, sums)
            zeros = torch.zeros(e - a, sh.batch - keep, sh.hidden)
            out = [g if g is not None else zeros for g in grads]
            self.wire.send(out, src, BWD, self.S - 1, c)
        return sums[0], sums[1]

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
        back = self.post(own[last + 1], BWD, last + 1, sh.src, sh.batch, [sh.hidden])
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
            back = self.post(self.owners[1], BWD, 1, sh.src, sh.batch, [2 * sh.hidden])
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
        batch: int,
        widths: list[int],
    ) -> list[Pending]:
        """Receives of every chunk's message from ``src`` (none when ``src`` is this rank)."""
        if src == self.rank:
            return []
        return [
            self.wire.post([(e - a, batch, w) for w in widths], src, kind, boundary, c)
            for c, (a, e) in enumerate(spans)
        ]


def generator_order(chunks: int) -> list[int]:
    """The order of a generator-only rank: ``0, C-1, C-2, ..., 1``. Chunk 0 arrives first
    (nothing else to do meanwhile); the decoder's backward then needs the last chunk first.
    (Gloo cannot say which posted receive has arrived without waiting on it.)"""
    return [0, *range(chunks - 1, 0, -1)]


def grad_of(t: Tensor) -> Tensor:
    """``t.grad``, zeros when nothing reached ``t``."""
    return t.grad if t.grad is not None else torch.zeros_like(t)


def backward_leaves(context: tuple[Any, list[Tensor], Tensor]) -> None:
    """Backward from the context's roots with what their leaves collected."""
    memory, roots, emb_leaf = context
    leaves = [memory.keys, memory.values, emb_leaf]
    pairs = [(r, x.grad) for r, x in zip(roots, leaves, strict=True) if x.grad is not None]
    pairs = [(r, g) for r, g in pairs if r.requires_grad]
    if pairs:
        torch.autograd.backward([r for r, _ in pairs], [g for _, g in pairs])
