"""Dropout of GNMT's layer inputs whose mask does not depend on how the sequence is cut.

Why: the wavefront (:mod:`nmt.models.wavefront`, :mod:`nmt.train.wavefront_ranks`) runs each
layer over time chunks, possibly in another process than its neighbours. A mask drawn per
chunk differs from the whole-sequence mask of the plain model, so its losses would differ at
any dropout > 0. :class:`SeqDropout` therefore always draws the mask of the *whole* sequence
(at chunk 0, :meth:`SeqDropout.chunk`) and slices it per chunk; a rank that encodes a share
of the batch's sentences draws the whole batch's mask and applies its columns
(:func:`sentence_slice`).

Where the random bits come from: with :func:`seed_masks` (what training does, on one device
and in every wavefront process) each dropout module of the model draws from its own
generator, seeded from (run seed, step, batch of the step, module index). One process or N,
whole sequence or chunks, every layer gets the same mask; nothing depends on the order in
which processes reach their layers (there is no global RNG order across processes), and a
resumed run redraws the masks of its steps exactly (``train.resume=auto`` stays bitwise
exact: the seed is a function of the step). Without a seed (pipelined micro-batch runs,
direct use of the model) the mask comes from the global RNG, in the order the layers draw.

The mask is ``empty_like(x).bernoulli_(1 - p) / (1 - p)``, what ``nn.Dropout`` computes on a
CPU, on every device.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn


def mask_seed(run_seed: int, step: int, batch: int, module: int) -> int:
    """A 63-bit generator seed from (run seed, step, batch index, module index)."""
    key = f"{run_seed}:{step}:{batch}:{module}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


class SeqDropout(nn.Module):
    """Dropout with probability ``p`` whose mask covers the whole sequence (dim 0 = time).

    ``forward(x[T,...])``: ``x`` times a fresh mask. ``chunk(x[t,...], start, total)``: the
    slice ``[start, start+t)`` of one mask of shape ``[total, ...]``, drawn when ``start == 0``
    (the chunks of one sequence come in order).
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.seed: int | None = None  # None: the global RNG
        self._generator: torch.Generator | None = None
        self._mask: Tensor | None = None  # the sequence's mask that chunks slice
        self._drawn: dict[tuple[object, ...], Tensor] = {}  # seeded: this seed's masks
        # (first sentence, batch size): the input holds these columns of a larger batch
        self.columns: tuple[int, int] | None = None

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def reseed(self, seed: int | None) -> None:
        """Draw the next masks from a generator seeded with ``seed`` (None: global RNG)."""
        self.seed, self._generator, self._mask = seed, None, None
        self._drawn = {}

    def active(self) -> bool:
        return self.training and self.p > 0.0

    def draw(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A scaled keep-mask of ``shape`` with ``like``'s dtype and device. Seeded, a module
        draws each mask once per seed: a second draw of the same shape, dtype and device (a
        forward recomputed in the backward, ``parallel.recompute``) gets that mask again."""
        key = (shape, like.dtype, like.device)
        if self.seed is not None and key in self._drawn:
            return self._drawn[key]
        keep = 1.0 - self.p
        if self.seed is not None and self._generator is None:
            self._generator = torch.Generator(device=like.device).manual_seed(self.seed)
        noise = torch.empty(shape, dtype=like.dtype, device=like.device)
        mask = noise.bernoulli_(keep, generator=self._generator).div_(keep)
        if self.seed is not None:
            self._drawn[key] = mask
        return mask

    def forward(self, x: Tensor) -> Tensor:
        """``x[T,...]`` -> ``x * mask`` (``x`` itself in eval mode or at p = 0)."""
        if not self.active():
            return x
        if self.columns is None:
            return x * self.draw(tuple(x.shape), x)
        lo, batch = self.columns  # the whole batch's mask, this slice of its sentences
        mask = self.draw((x.size(0), batch, *x.shape[2:]), x)
        return x * mask[:, lo : lo + x.size(1)]

    def chunk(self, x: Tensor, start: int, total: int) -> Tensor:
        """Time chunk ``x[t,...]`` at ``start`` of a ``total``-step sequence -> ``x * mask``
        with the whole sequence's mask sliced at ``[start, start + t)``."""
        if not self.active():
            return x
        if start == 0 or self._mask is None:
            self._mask = self.draw((total, *x.shape[1:]), x)
        return x * self._mask[start : start + x.size(0)]


@contextmanager
def sentence_slice(drops: Sequence[SeqDropout], lo: int, batch: int) -> Iterator[None]:
    """Within: the dropout modules ``drops`` see sentences ``[lo, lo + b)`` of a ``batch``
    of sentences, and apply that slice of the whole batch's mask (a rank that encodes a
    share of the batch: :mod:`nmt.train.wave_encoder`)."""
    for m in drops:
        m.columns = (lo, batch)
    try:
        yield
    finally:
        for m in drops:
            m.columns = None


def seed_masks(model: nn.Module, run_seed: int, step: int, batch: int = 0) -> None:
    """Seed every :class:`SeqDropout` of ``model`` for batch ``batch`` of step ``step``
    (module index: its position among the model's SeqDropout modules)."""
    drops = [m for m in model.modules() if isinstance(m, SeqDropout)]
    for i, m in enumerate(drops):
        m.reseed(mask_seed(run_seed, step, batch, i))
