"""Adam's step on gnmt_demo's parameters, per-tensor loop (``foreach``) against one fused
kernel (what ``nmt-train`` takes on a CPU or a CUDA device: :func:`nmt.train.trainer.adam`);
and the gradients' squared norm, a float64 copy per tensor against one ``_foreach_norm``
call (what the wavefront's ranks take: :func:`nmt.train.wave_gradients.squared_norm`).

    python -m scripts.bench adam [--threads 1] [--repeats 50] [--out FILE]

Every parameter gets a random gradient; each optimizer takes 5 untimed steps, then the mean
of ``--repeats`` timed steps. Writes ``docs/results/train/<machine>/adam.json``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from nmt.config import compose_config
from nmt.train.build import build_from_config
from scripts.bench.common import command, finish, machine, parser, results_for


def step_ms(opt: torch.optim.Optimizer, repeats: int) -> float:
    for _ in range(5):
        opt.step()
    start = time.perf_counter()
    for _ in range(repeats):
        opt.step()
    return (time.perf_counter() - start) / repeats * 1e3


def call_ms(fn: Callable[[], float], repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = parser(__name__, __doc__)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = build_from_config(compose_config(["model=gnmt_demo"]).model, 8000, None)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    optimizers = {"foreach": torch.optim.Adam(params, lr=1e-4, foreach=True),
                  "fused": torch.optim.Adam(params, lr=1e-4, fused=True)}  # fmt: skip
    ms: dict[str, Any] = {k: round(step_ms(o, a.repeats), 2) for k, o in optimizers.items()}
    grads = [p.grad for p in params if p.grad is not None]
    norm = {"float64_copy_per_tensor": lambda: sum(float(g.double().pow(2).sum()) for g in grads),
            "foreach_norm": lambda: float(torch.stack(torch._foreach_norm(grads)).double()
                                          .pow(2).sum())}  # fmt: skip
    doc = {
        "command": command(__name__, argv),
        "machine": machine(threads=a.threads),
        "config": {
            "model": "gnmt_demo",
            "vocab": 8000,
            "parameters": sum(p.numel() for p in params),
            "repeats": a.repeats,
        },  # fmt: skip
        "step_ms": ms,
        "fused_speedup": round(ms["foreach"] / ms["fused"], 2),
        "squared_norm_ms": {k: round(call_ms(f, a.repeats), 2) for k, f in norm.items()},
    }
    return finish(doc, a.out or results_for("train", "adam.json"))


if __name__ == "__main__":
    raise SystemExit(main())
