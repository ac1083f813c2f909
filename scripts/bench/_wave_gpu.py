"""The GPU half of ``python -m scripts.bench wavefront --gpu``: one training step (loss and
backward) of gnmt4 in bf16 autocast on one CUDA device, plain against the one-process
wavefront with and without a CUDA stream per layer (``parallel.wave_streams``)."""

from __future__ import annotations

import statistics
from typing import Any

import torch

from nmt.models.gnmt import GNMT
from nmt.models.registry import build_model
from nmt.models.seq2seq import ModelSpec
from nmt.models.wavefront import Wavefront
from scripts.bench.common import GNMT_SIZES, timed


def gpu_rows(model_name: str, batch: int, length: int, chunks: list[int]) -> dict[str, Any]:
    """Median ms of a step: ``plain``, ``wave_c<C>`` and ``streams_c<C>`` (random ids, V 8,000)."""
    dev = torch.device("cuda")
    hidden, enc, dec = GNMT_SIZES[model_name]
    torch.manual_seed(0)
    spec = ModelSpec(hidden=hidden, enc_layers=enc, dec_layers=dec, dropout=0.2, init_range=0.1)
    model = build_model(spec, 8000, 0).to(dev).train()
    assert isinstance(model, GNMT)
    src = torch.randint(4, 8000, (length, batch), device=dev)
    src_len = torch.full((batch,), length, device=dev)
    tgt_in = torch.randint(4, 8000, (length, batch), device=dev)
    tgt_out = torch.randint(4, 8000, (length, batch), device=dev)

    def step(fn: Any) -> Any:
        def run() -> None:
            model.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss, _ = fn()
            loss.backward()

        return run

    rows: dict[str, Any] = {}
    plain = step(lambda: model.loss(src, src_len, tgt_in, tgt_out, 0, 0.1))
    rows["plain_ms"] = 1e3 * statistics.median(timed(plain, 10, warmup=3, device=dev))
    for c in chunks:
        for streams in (False, True):
            wf = Wavefront(model, c, streams=streams)
            fn = step(lambda wf=wf: wf.loss(src, src_len, tgt_in, tgt_out, 0, 0.1))
            name = f"{'streams' if streams else 'wave'}_c{c}_ms"
            rows[name] = 1e3 * statistics.median(timed(fn, 10, warmup=3, device=dev))
    rows["streams_speedup_vs_plain"] = {
        f"c{c}": round(rows["plain_ms"] / rows[f"streams_c{c}_ms"], 3) for c in chunks
    }
    return rows
