"""The generator and loss in the wavefront across processes, and which rank runs them for
which sentences.

The generator carries no state: each target chunk's forward and backward run at once (when:
see the last paragraph). It runs on the rank of the model's last unit
(``owners[-1]``); with ``parallel.generator_share=F`` the first F of each batch's sentences
run on a helper rank instead (:func:`helper_rank`):

- the generator alone on its rank: the helper is the rank of the last decoder layer, which
  keeps those sentences' output and sends only the others (:mod:`nmt.train.wave_program`);
- the generator with the last decoder layer: the helper is the rank before, which receives
  those sentences' (h, ctx) chunk by chunk after its own decoder forward and runs them last
  chunk first (:meth:`help`), and sends their gradients back.

A rank that holds the last decoder layer runs its generator chunks in that layer's backward
(:mod:`nmt.train.wave_program`): the decoder's backward needs the last chunk first, and the
generator of one chunk then overlaps the decoder backward of the chunk after it elsewhere.
"""

from __future__ import annotations

import torch
from torch import Tensor

from data.batching import Batch
from nmt.models.gnmt import GNMT
from nmt.models.loss import label_smoothed_nll
from parallel.runtime.timeline import TimelineRecorder
from parallel.runtime.wave import BWD, FWD, Chunk, Pending, Wire, leaf, timed

LossArgs = tuple[float, int, float]  # (gradient scale per unit of loss, pad id, smoothing)


def helper_rank(owners: list[int], share: float) -> int | None:
    """The rank that runs the generator of the batch's first ``share`` of sentences (None:
    no share, or one rank)."""
    gen, last_decoder = owners[-1], owners[-2]
    if share <= 0.0:
        return None
    if gen != last_decoder:
        return last_decoder
    return gen - 1 if gen > 0 else None


def generator_order(chunks: int) -> list[int]:
    """The order of a generator-only rank: ``0, C-1, C-2, ..., 1``. Chunk 0 arrives first
    (nothing else to do meanwhile); the decoder's backward then needs the last chunk first.
    (Gloo cannot say which posted receive has arrived without waiting on it.)"""
    return [0, *range(chunks - 1, 0, -1)]


class WaveGenerator:
    """The generator's part of one rank (module docstring)."""

    def __init__(
        self,
        model: GNMT,
        owners: list[int],
        rank: int,
        wire: Wire,
        timeline: TimelineRecorder | None,
        share: float,
    ) -> None:
        self.m, self.owners, self.rank, self.wire = model, owners, rank, wire
        self.timeline, self.share, self.unit = timeline, share, len(model.stages) - 1
        self.helper = helper_rank(owners, share)

    def kept(self, batch: int) -> int:
        """Sentences (the first ones of the batch) whose generator runs on the helper rank:
        ``generator_share`` of ``batch``, at most ``batch - 1``; 0 without a helper."""
        if self.helper is None:
            return 0
        return min(int(round(self.share * batch)), batch - 1)

    def generate(
        self, c: int, x: Chunk, target: Tensor, loss_args: LossArgs, sums: list[float]
    ) -> list[Tensor | None]:
        """Generator and loss on chunk ``c`` (``x`` = (h, ctx) ``[t,B,H]``), forward and
        backward; adds to ``sums`` (loss, nll); returns the gradients of h and ctx."""
        scale, pad, eps = loss_args
        h, ctx = leaf(x[0]), leaf(x[1])
        with timed(self.timeline, "F", self.unit, c):
            keep = target != pad
            rows = keep.reshape(-1).nonzero().squeeze(1)
            logits = self.m.generator(h.reshape(-1, h.size(-1)).index_select(0, rows), ctx)
            loss, nll = label_smoothed_nll(logits, target[keep], pad, eps)
            torch.autograd.backward([loss], [torch.full_like(loss, scale)])
        sums[0] += float(loss.detach())
        sums[1] += float(nll.detach())
        return [h.grad, ctx.grad]

    def alone(
        self, b: Batch, spans: list[tuple[int, int]], loss_args: LossArgs
    ) -> tuple[float, float]:
        """A rank with the generator alone: the sentences from :meth:`kept` on, chunk 0
        first, then the last chunk back to chunk 1 (:func:`generator_order`), so that the
        decoder's backward can start early."""
        batch = b.tgt_in.size(1)
        keep = self.kept(batch)
        src = self.owners[-2]
        sums = [0.0, 0.0]
        pend = [self.receive(src, a, e, batch - keep, c) for c, (a, e) in enumerate(spans)]
        for c in generator_order(len(spans)):
            a, e = spans[c]
            x = tuple(pend[c].wait())
            self.reply(self.generate(c, x, b.tgt_out[a:e, keep:], loss_args, sums), src, c, x)
        return sums[0], sums[1]

    def help(
        self, b: Batch, spans: list[tuple[int, int]], loss_args: LossArgs, sums: list[float]
    ) -> None:
        """The helper rank of a generator that shares its rank with the last decoder layer:
        the first :meth:`kept` sentences' chunks, last chunk first (the order of the decoder's
        backward), their gradients sent back."""
        keep, gen = self.kept(b.tgt_in.size(1)), self.owners[-1]
        if keep == 0:  # a batch too small for a share: the generator's rank keeps it all
            return
        pend = [self.receive(gen, a, e, keep, c) for c, (a, e) in enumerate(spans)]
        for c in reversed(range(len(spans))):
            a, e = spans[c]
            x = tuple(pend[c].wait())
            self.reply(self.generate(c, x, b.tgt_out[a:e, :keep], loss_args, sums), gen, c, x)

    def receive(self, src: int, a: int, e: int, batch: int, c: int) -> Pending:
        """Post the receive of chunk ``c``'s (h, ctx) ``[e-a, batch, H]`` from ``src``."""
        hidden = self.m.hidden
        return self.wire.post([(e - a, batch, hidden)] * 2, src, FWD, self.unit, c)

    def reply(self, grads: list[Tensor | None], dst: int, c: int, x: Chunk) -> None:
        """Send chunk ``c``'s input gradients (zeros where none) back to ``dst``."""
        out = [g if g is not None else torch.zeros_like(t) for g, t in zip(grads, x, strict=True)]
        self.wire.send(out, dst, BWD, self.unit, c)
