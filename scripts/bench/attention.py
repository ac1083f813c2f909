"""Why the additive attention goes through sigmoid: tanh against sigmoid on this CPU, in one run.

Also GNMT's attention with the written-out tanh formula against
``nmt.models.attention.BahdanauAttention``.

    python -m scripts.bench attention [--threads 1] [--out FILE]

(default ``--out``: ``docs/results/train/<machine>/bench_attention.json``)

Rows: the elementwise ops alone (3.3 M fp32 elements); a beam-search step's attention
(no gradients: 64 sentences x 5 beams, 40 source positions, H 256); a training step's attention
forward + backward (64 sentences, 32 target x 32 source positions, H 256). Median of repeats;
the ratio tanh-form / sigmoid-form is what the JSON's ``speedup`` says.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nmt.models.attention import AttentionMemory, BahdanauAttention
from scripts.bench.common import (
    command,
    finish,
    machine,
    parser,
    results_for,
    set_threads,
    timed,
)


def median_ms(fn: Callable[[], object], reps: int = 15) -> float:
    return 1e3 * statistics.median(timed(fn, reps, warmup=3))


def tanh_form(att: BahdanauAttention, query: Tensor, memory: AttentionMemory) -> Tensor:
    """The formula as written: ``g (v/||v||) . tanh(W_q q + W_k k + b)``, softmax, context
    (``memory.keys`` hold ``2 (W_k k + b)``, hence the halving)."""
    keys, values, mask = memory.keys, memory.values, memory.mask
    batch, ts, hidden = keys.shape
    bq, m, _ = query.shape
    q = att.linear_q(query).view(batch, (bq // batch) * m, 1, hidden)
    energy = torch.tanh(q + keys.unsqueeze(1) * 0.5)
    scores = (energy @ (att.v * (att.g / att.v.norm()))).masked_fill(mask.unsqueeze(1), -1e30)
    return torch.bmm(torch.softmax(scores, dim=-1), values)


def row(
    case: str, tanh: Callable[[], object], sigmoid: Callable[[], object], reps: int
) -> dict[str, Any]:
    t, g = median_ms(tanh, reps), median_ms(sigmoid, reps)
    return {"case": case, "tanh_ms": round(t, 3), "sigmoid_ms": round(g, 3),
            "speedup": round(t / g, 2)}  # fmt: skip


def rows() -> list[dict[str, Any]]:
    torch.manual_seed(0)
    x = torch.randn(3_300_000)
    out = [row("elementwise, 3.3 M fp32", lambda: torch.tanh(x), lambda: torch.sigmoid(x), 15)]
    att = BahdanauAttention(256)
    with torch.no_grad():
        att.v.uniform_(-0.1, 0.1)
    memory = att.memory(torch.randn(40, 64, 256), torch.full((64,), 40))
    query = torch.randn(64 * 5, 1, 256)
    with torch.inference_mode():
        beam = "beam step: 64 sentences x 5 beams, Ts 40, H 256, no grad"
        out.append(row(beam, lambda: tanh_form(att, query, memory), lambda: att(query, memory), 15))
    enc = torch.randn(32, 64, 256, requires_grad=True)
    queries = torch.randn(64, 32, 256, requires_grad=True)
    mem = att.memory(enc, torch.full((64,), 32))
    out.append(row("training: 64 sentences, Tt 32 x Ts 32, H 256, fwd + bwd",
                   lambda: tanh_form(att, queries, mem).sum().backward(retain_graph=True),
                   lambda: att(queries, mem)[0].sum().backward(retain_graph=True), 7))  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    ap = parser(__name__, __doc__)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=results_for("train", "bench_attention.json"))
    args = ap.parse_args(argv)
    set_threads(args.threads)
    result = {"bench": "attention", "command": command(__name__, argv), "rows": rows(),
              "machine": machine()}  # fmt: skip
    for r in result["rows"]:
        print(f"{r['case']}: tanh form {r['tanh_ms']} ms, sigmoid form {r['sigmoid_ms']} ms "
              f"(x{r['speedup']})")  # fmt: skip
    return finish(result, args.out)
