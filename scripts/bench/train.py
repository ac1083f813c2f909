"""GNMT's training throughput and MFU beside a bare LSTM stack and the measured matmul peak.

The bare stack is ``torch.nn.LSTM`` layers of GNMT's shapes; the peak is measured in the same
run on the same device.

    python -m scripts.bench train                     # gnmt_small on CPU (gnmt4 too on a GPU)
    python -m scripts.bench train --model gnmt4 --batch 128 --len 32

MFU = model FLOPs/s / peak matmul FLOP/s measured in the same run on the same device.
Model FLOPs count the matmuls of a training step (forward + backward = 3 x forward):
LSTM 8*(in+H)*H per token per direction, attention, generator 2*H*V per target token.
Prints a final JSON line with the machine and writes it to ``--out``
(``docs/results/train/<machine>/bench_train.json`` by default; ``--out -`` writes nothing).
Runs with the allocator settings every command line entry point uses (``nmt/machine/hostmem.py``).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from nmt.machine import hostmem
from nmt.models.loss import label_smoothed_nll
from nmt.models.registry import build_model
from nmt.models.seq2seq import ModelSpec
from scripts.bench.common import (
    GNMT_SIZES,
    add_step_args,
    command,
    finish,
    machine,
    parser,
    results_for,
    timed,
)


def median_s(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after 2 warm-up runs."""
    return statistics.median(timed(fn, repeats, warmup=2, device=device))


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    n = 2048 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sec = median_s(lambda: a @ b, device, 5 if device.type == "cpu" else 20)
    return 2 * n**3 / sec


def lstm_flops(h: int, enc: int, dec: int, v: int, ts: int, tt: int, b: int) -> float:
    """Forward FLOPs of one batch (multiply-adds x 2)."""
    enc_f = 2 * 8 * (h + h) * h + 8 * (2 * h + h) * h + (enc - 2) * 8 * (h + h) * h
    dec_f = 8 * (h + h) * h + (dec - 1) * 8 * (2 * h + h) * h
    attn = 2 * h * h * 2 + 4 * ts * h  # query/key projections + scores/context per target token
    gen = 2 * h * v
    return b * (ts * enc_f + tt * (dec_f + attn + gen))


class BareStack(nn.Module):
    """The same LSTM layers as GNMT (bi layer 1, 2H->H layer 2, decoder 2H inputs), no
    attention, no embedding, no generator: the practical limit for this kind of model."""

    def __init__(self, h: int, enc: int, dec: int) -> None:
        super().__init__()
        self.enc = nn.ModuleList(
            [nn.LSTM(h, h, bidirectional=True), nn.LSTM(2 * h, h)]
            + [nn.LSTM(h, h) for _ in range(enc - 2)]
        )
        self.dec = nn.ModuleList([nn.LSTM(h, h)] + [nn.LSTM(2 * h, h) for _ in range(dec - 1)])

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        x = src
        for layer in self.enc:
            x = layer(x)[0]
        y = self.dec[0](tgt)[0]
        for layer in self.dec[1:]:
            y = layer(torch.cat((y, y), dim=-1))[0]
        return x.sum() + y.sum()


def bench(
    model_name: str, device: torch.device, b: int, t: int, v: int, repeats: int
) -> dict[str, Any]:
    h, enc, dec = GNMT_SIZES[model_name]
    torch.manual_seed(0)
    amp = torch.bfloat16 if device.type == "cuda" else None
    model = build_model(
        ModelSpec(hidden=h, enc_layers=enc, dec_layers=dec, dropout=0.2, init_range=0.1), v, 0
    ).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    src = torch.randint(4, v, (t, b), device=device)
    tgt = torch.randint(4, v, (t, b), device=device)
    src_len = torch.full((b,), t, device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(src, src_len, tgt)
            loss, _ = label_smoothed_nll(logits, tgt, 0, 0.1)
        (loss / (t * b)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    sec = median_s(step, device, repeats)
    bare = BareStack(h, enc, dec).to(device)
    bopt = torch.optim.Adam(bare.parameters(), lr=1e-3)
    xs = torch.randn(t, b, h, device=device)
    xt = torch.randn(t, b, h, device=device)

    def bare_step() -> None:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = bare(xs, xt)
        out.backward()
        bopt.step()
        bopt.zero_grad(set_to_none=True)

    bare_sec = median_s(bare_step, device, repeats)
    peak = matmul_peak(device, amp or torch.float32)
    flops = 3 * lstm_flops(h, enc, dec, v, t, t, b)
    return {
        "model": model_name,
        "params": sum(p.numel() for p in model.parameters()),
        "batch": b,
        "len": t,
        "dtype": "bf16" if amp else "fp32",
        "step_ms": round(1000 * sec, 1),
        "tok_per_s": round(b * t / sec, 1),
        "bare_lstm_tok_per_s": round(b * t / bare_sec, 1),
        "vs_bare_lstm": round(bare_sec / sec, 3),
        "model_gflop_per_s": round(flops / sec / 1e9, 1),
        "peak_matmul_gflop_per_s": round(peak / 1e9, 1),
        "mfu": round(flops / sec / peak, 3),
    }


def main(argv: list[str] | None = None) -> int:
    ap = parser(__name__, __doc__)
    ap.add_argument("--model", action="append", choices=sorted(GNMT_SIZES))
    add_step_args(ap, batch=64, length=30, repeats=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--out", default=str(results_for("train", "bench_train.json")), help="'-': none"
    )
    args = ap.parse_args(argv)
    allocator = hostmem.tune()
    device = torch.device(args.device)
    names = args.model or (["gnmt_small", "gnmt4"] if device.type == "cuda" else ["gnmt_small"])
    results = []
    for name in names:
        r = bench(name, device, args.batch, args.len, args.vocab, args.repeats)
        print(f"{name}: {r['tok_per_s']:.0f} tok/s ({r['step_ms']} ms/step), bare LSTM stack "
              f"{r['bare_lstm_tok_per_s']:.0f} tok/s -> {r['vs_bare_lstm']:.0%} of it; "
              f"MFU {r['mfu']:.2f} ({r['model_gflop_per_s']} of {r['peak_matmul_gflop_per_s']} "
              "GFLOP/s)", flush=True)  # fmt: skip
        results.append(r)
    doc = {"bench": "train", "command": command(__name__, argv), "results": results,
           "machine": machine(device, allocator=allocator)}  # fmt: skip
    return finish(doc, args.out)
