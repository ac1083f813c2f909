"""The wavefront's pieces that its ranks share out by sentences, timed as each rank runs its
share for ``python -m scripts.bench wavefront``'s prediction: the generator
(``parallel.generator_share``) and the split encoder (``parallel.encoder_split``,
``parallel.encoder_shares``). A part has its own shapes, and so its own kernels to build, and
fewer rows per matmul: it takes more than its share of the whole."""

from __future__ import annotations

import time

import torch

from data.batching import Batch
from data.tokenizer import PAD_ID
from nmt.models.gnmt import GNMT
from nmt.models.wavefront import chunk_bounds
from nmt.train.wave_encoder import sentence_spans
from nmt.train.wave_generator import WaveGenerator
from parallel.runtime.wave import Wire


def generator_costs(
    model: GNMT, batches: list[Batch], chunks: int, shares: list[float], eps: float
) -> dict[str, float]:
    """Mean ms per batch of the generator and loss (forward and backward, every chunk)
    through :meth:`nmt.train.wave_generator.WaveGenerator.generate` (the chunk's non-pad
    rows): on all the sentences (``gen_s<F>_whole``), and as the two ranks of a
    ``parallel.generator_share=F`` run each run it, the first F of the sentences
    (``gen_s<F>_0``) and the others (``gen_s<F>_1``); each chunk's three in turn (the
    machine's drift hits them alike), random inputs of the batch's shapes, one untimed pass
    first. A part has its own shapes, and so its own kernels to build, and fewer rows per
    matmul: it takes more than its share of the whole."""
    gen = WaveGenerator(model, [0, 1], 0, Wire(torch.device("cpu")), None, 0.0)
    out: dict[str, float] = {}
    for share in shares:
        totals = [0.0, 0.0, 0.0]  # whole, part 0, part 1
        for rep in range(2):
            for b in batches:
                steps, batch = b.tgt_in.shape
                keep = min(int(round(share * batch)), batch - 1)
                args = (1.0 / max(b.ntokens, 1), PAD_ID, eps)
                for c, (a, e) in enumerate(chunk_bounds(steps, chunks)):
                    for part, (lo, hi) in enumerate(((0, batch), (0, keep), (keep, batch))):
                        if hi == lo:
                            continue
                        x = tuple(torch.randn(e - a, hi - lo, model.hidden) for _ in "hc")
                        t0 = time.perf_counter()
                        gen.generate(c, x, b.tgt_out[a:e, lo:hi], args, [0.0, 0.0])
                        totals[part] += (time.perf_counter() - t0) * 1e3 * rep
        model.zero_grad(set_to_none=True)
        out |= per_batch(f"gen_s{share}", totals, len(batches))
    return out


def encoder_costs(
    model: GNMT, batches: list[Batch], shares: list[tuple[float, float]]
) -> dict[str, float]:
    """Mean ms per batch of the encoder (every layer over the whole source, forward and
    backward, as :class:`nmt.train.wave_encoder.SplitEncoder` runs it): on all the sentences
    (``enc_e<E>_whole``), and as the two ranks of ``parallel.encoder_shares=[E,1-E]`` run it,
    their sentences by :func:`nmt.train.wave_encoder.sentence_spans` (``enc_e<E>_0``,
    ``enc_e<E>_1``); each batch's three in turn, one untimed pass first."""
    out: dict[str, float] = {}
    for share in shares:
        totals = [0.0, 0.0, 0.0]  # whole, part 0, part 1
        for rep in range(2):
            for b in batches:
                batch = b.src.size(1)
                for part, (lo, hi) in enumerate([(0, batch), *sentence_spans(batch, 2, share)]):
                    if hi == lo:
                        continue
                    t0 = time.perf_counter()
                    top = model.encode(b.src[:, lo:hi], b.src_len[lo:hi])
                    torch.autograd.backward([top], [torch.ones_like(top)])
                    totals[part] += (time.perf_counter() - t0) * 1e3 * rep
        model.zero_grad(set_to_none=True)
        out |= per_batch(f"enc_e{share[0]}", totals, len(batches))
    return out


def per_batch(prefix: str, totals: list[float], batches: int) -> dict[str, float]:
    """``totals`` (ms of the whole, part 0, part 1 over ``batches``) per batch, keyed
    ``<prefix>_whole``, ``<prefix>_0``, ``<prefix>_1``."""
    names = ("whole", "0", "1")
    return {f"{prefix}_{n}": t / batches for n, t in zip(names, totals, strict=True)}
