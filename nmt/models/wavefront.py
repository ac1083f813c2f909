"""GNMT's wavefront: the layers work at the same time along the sequence (time chunks).

Every layer but the bottom encoder one is unidirectional, so layer l+1 can run time chunk c
while layer l runs chunk c+1 (GNMT paper, section 3; TeraPipe for transformers). A batch is
cut along time into ``C`` chunks (:func:`chunk_bounds`; lengths need not divide T). Each layer
carries its LSTM state (h, c) from chunk to chunk, so the result is the same function as the
whole-sequence model (the tests check loss and every gradient). Barriers, as in the paper:
the bidirectional bottom encoder layer needs the whole source, and the attention needs every
encoder output before the decoder starts; the decoder layers and the generator (with the
loss) wave after it.

One process drives every layer's device: :meth:`Wavefront.loss` issues
the forward in diagonal order (wave step d runs chunk d-l of layer l), layer l on
``devices[l % len(devices)]``; autograd runs the backward, through the carried states in
reverse chunk order (on several GPUs its per-device threads give the backward wavefront).
On a CPU the chunks run one after another: the result is exact, the speed is the plain model's.
On a GPU, ``streams`` (``parallel.wave_streams``) gives every layer its own CUDA stream, with
an event per (layer, chunk) for the dependency on the layer below: the layers of one diagonal
can run at once on one GPU.

Dropout stays exact: each layer's input mask is drawn for the whole sequence at the layer's
chunk 0 and sliced per chunk (:class:`nmt.models.dropout.SeqDropout`); training seeds every
layer's mask from (run seed, step, batch, layer), so the plain model, this one-process wave
and the wave over several processes (:mod:`nmt.train.wavefront_ranks`) draw the same masks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor

from nmt.errors import UserError
from nmt.models.gnmt import GNMT
from nmt.models.loss import label_smoothed_nll
from nmt.models.seq2seq import Seq2Seq

Chunk = tuple[Tensor, ...]
# (chunk index, chunk inputs, state) -> (outputs, state)
Layer = Callable[[int, Chunk, Any], tuple[Chunk, Any]]


def chunk_bounds(total: int, chunks: int) -> list[tuple[int, int]]:
    """``min(chunks, total)`` contiguous ``[start, end)`` spans covering ``0..total``, the
    first ``total % n`` one step longer than the rest."""
    n = max(1, min(chunks, total))
    size, extra = divmod(total, n)
    bounds, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def wave(
    layers: Sequence[Layer],
    inputs: Sequence[Chunk],
    devices: Sequence[torch.device],
    streams: bool = False,
) -> list[list[Chunk]]:
    """Run ``layers`` over the chunks ``inputs`` in diagonal order; returns every layer's
    outputs per chunk (``out[l][c]``). Layer l's state goes from chunk c to c+1; its inputs
    are layer l-1's outputs of the same chunk, moved to layer l's device. ``streams`` (CUDA
    devices only): each layer issues its work on a CUDA stream of its own, after an event of
    the layer below on the same chunk, so that the GPU runs the layers of a diagonal at once."""
    n_layers, n_chunks = len(layers), len(inputs)
    out: list[list[Chunk]] = [[() for _ in range(n_chunks)] for _ in range(n_layers)]
    state: list[Any] = [None] * n_layers
    lanes = Lanes([devices[i % len(devices)] for i in range(n_layers)]) if streams else None
    if lanes is not None and not lanes.active:
        lanes = None
    for step in range(n_chunks + n_layers - 1):
        for layer in range(n_layers):
            c = step - layer
            if 0 <= c < n_chunks:
                dev = devices[layer % len(devices)]
                x = inputs[c] if layer == 0 else out[layer - 1][c]
                with lanes.run(layer, c) if lanes is not None else nullcontext():
                    xs = tuple(t.to(dev) for t in x)
                    if lanes is not None:
                        lanes.keep(layer, xs)
                    out[layer][c], state[layer] = layers[layer](c, xs, state[layer])
    if lanes is not None:
        lanes.join()
    return out


class Lanes:
    """One CUDA stream per layer and an event per (layer, chunk) (see :func:`wave`)."""

    def __init__(self, devices: Sequence[torch.device]) -> None:
        self.active = bool(devices) and all(d.type == "cuda" for d in devices)
        self.streams: list[Any] = []
        self.events: dict[tuple[int, int], Any] = {}
        if self.active:
            for d in devices:  # every lane starts after what the caller queued
                s = torch.cuda.Stream(device=d)  # type: ignore[no-untyped-call]
                s.wait_stream(torch.cuda.current_stream(d))
                self.streams.append(s)

    @contextmanager
    def run(self, layer: int, c: int) -> Iterator[None]:
        s = self.streams[layer]
        with torch.cuda.stream(s):
            if layer > 0:
                s.wait_event(self.events[(layer - 1, c)])
            yield
            ev = torch.cuda.Event()  # type: ignore[no-untyped-call]
            ev.record(s)
            self.events[(layer, c)] = ev

    def keep(self, layer: int, xs: Chunk) -> None:
        """Tensors made on another lane stay allocated until this lane is done with them."""
        for t in xs:
            t.record_stream(self.streams[layer])

    def join(self) -> None:
        """The caller's streams wait for every lane."""
        for s in self.streams:
            torch.cuda.current_stream(s.device).wait_stream(s)


class Wavefront:
    """Training loss of a :class:`GNMT` computed as a wavefront over ``chunks`` time chunks."""

    def __init__(
        self,
        model: Seq2Seq,
        chunks: int,
        devices: Sequence[torch.device] | None = None,
        streams: bool = False,
    ) -> None:
        if not isinstance(model, GNMT):
            raise UserError(
                f"parallel.time_chunks={chunks}: the wavefront carries LSTM state from chunk to "
                f"chunk; it needs model.arch=gnmt, not {model.arch}"
            )
        if chunks < 1:
            raise ValueError(f"time chunks must be >= 1, got {chunks}")
        self.model: GNMT = model
        self.chunks = chunks
        self.devices = list(devices) if devices else [next(model.parameters()).device]
        self.streams = streams  # a CUDA stream per layer (see :func:`wave`)

    def encode(self, src: Tensor, src_len: Tensor) -> Tensor:
        """``src[Ts,B]`` -> top encoder outputs ``[Ts,B,H]``; layers 2..E wave over time."""
        m = self.model
        h = m.embed_stage.encode(src, src_len)  # barrier: the bidirectional layer
        spans = chunk_bounds(h.size(0), self.chunks)

        total = h.size(0)

        def enc(stage: Any) -> Layer:
            def run(c: int, x: Chunk, st: Any) -> tuple[Chunk, Any]:
                y, st = stage.chunk(x[0], st, (spans[c][0], total))
                return (y,), st

            return run

        layers = [enc(stage) for stage in m.enc_stages]
        if not layers:
            return h
        outs = wave(layers, [(h[a:b],) for a, b in spans], self.devices, self.streams)
        return torch.cat([o[0] for o in outs[-1]], dim=0)  # barrier: attention needs it all

    def loss(
        self, src: Tensor, src_len: Tensor, tgt_in: Tensor, tgt_out: Tensor, pad_id: int, eps: float
    ) -> tuple[Tensor, Tensor]:
        """Label-smoothed (loss_sum, nll_sum) of ``tgt_out[Tt,B]``, equal to
        :meth:`GNMT.loss`; the generator runs on each chunk's non-pad positions."""
        m = self.model
        enc_out = self.encode(src, src_len)
        memory = m.prepare_memory(enc_out, src_len)
        emb = m.embed_stage.embedding(tgt_in)
        spans = chunk_bounds(emb.size(0), self.chunks)

        total = emb.size(0)

        def attend(c: int, x: Chunk, st: Any) -> tuple[Chunk, Any]:
            h, ctx, st = m.attn_stage.chunk(x[0], st, memory, (spans[c][0], total))
            return (h, ctx), st

        def dec(stage: Any) -> Layer:
            def run(c: int, x: Chunk, st: Any) -> tuple[Chunk, Any]:
                h, st = stage.chunk(x[0], x[1], st, (spans[c][0], total))
                return (h, x[1]), st

            return run

        def generate(c: int, x: Chunk, st: Any) -> tuple[Chunk, Any]:
            h, ctx, target = x
            keep = target != pad_id
            rows = keep.reshape(-1).nonzero().squeeze(1)
            logits = m.generator(h.reshape(-1, h.size(-1)).index_select(0, rows), ctx)
            return label_smoothed_nll(logits, target[keep], pad_id, eps), st

        def with_target(layer: Layer) -> Layer:  # carry the chunk's targets along the wave
            def run(c: int, x: Chunk, st: Any) -> tuple[Chunk, Any]:
                y, st = layer(c, x[:-1], st)
                return (*y, x[-1]), st

            return run

        layers = [with_target(attend)] + [with_target(dec(s)) for s in m.dec_stages] + [generate]
        outs = wave(
            layers, [(emb[a:b], tgt_out[a:b]) for a, b in spans], self.devices, self.streams
        )
        dev = self.devices[0]
        loss = torch.stack([o[0].to(dev) for o in outs[-1]]).sum()
        nll = torch.stack([o[1].to(dev) for o in outs[-1]]).sum()
        return loss, nll
