"""Per-chunk overhead of an LSTM layer call with its state passed in (the wavefront's cost).

A wavefront cuts a batch along time into C chunks and calls each layer once per chunk,
carrying (h, c) from chunk to chunk.  This times one ``nn.LSTM(H, H)`` over ``T`` steps as
one call and as C calls of ``T/C`` steps (lengths need not divide: the first ``T % C`` chunks
are one step longer), forward alone (autograd on) and forward + backward, and fits the extra
time per extra call::

    overhead(C) = (time_C - time_1) / (C - 1)        # per C, milliseconds
    overhead    = sum((C-1) (time_C - time_1)) / sum((C-1)^2)   # least squares over C

The backward overhead is the fwd+bwd overhead minus the forward one.  The C variants are
interleaved within each repetition; the fit uses the fastest repetition of each (``--stat
min``, the default: on a shared machine the noise only adds time) or the median.
``parallel.planning.wavefront_sim.ChunkOverhead`` takes ``fwd_ms`` / ``bwd_ms`` from the ``fit`` of
the JSON this writes (``parallel.planning.wavefront_report.load_chunk_overhead``).  Also
recorded: the time of one time step at batch 1 (the latency floor), for comparison with
devices where only that is known.

    python -m scripts.bench chunk_overhead                       # H 256, B 64, T 32 (< 2 min)
    python -m scripts.bench chunk_overhead --hidden 1024 --batch 128 --reps 10 \
        --out docs/results/planning/epyc/chunk_overhead_cpu_h1024.json
    python -m scripts.bench chunk_overhead --device cuda --dtype bfloat16 --hidden 1024 \
        --batch 128 --out chunk_overhead_h200_bf16.json  # plan_report --chunk-overhead takes it
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from scripts.bench.common import command, finish, machine, parser, results_for, set_threads, timed

Where = tuple[torch.device, torch.dtype]


def chunk_lengths(total: int, chunks: int) -> list[int]:
    """Balanced lengths: the first ``total % chunks`` chunks are one step longer."""
    q, r = divmod(total, chunks)
    return [q + (i < r) for i in range(chunks)]


def run_chunks(
    lstm: torch.nn.LSTM, x: torch.Tensor, chunks: int, backward: bool
) -> Callable[[], None]:
    """One forward (and backward) over ``x[T, B, H]`` as ``chunks`` calls, state carried;
    waits for the device to finish (CUDA)."""

    def step() -> None:
        state: tuple[torch.Tensor, torch.Tensor] | None = None
        outs = []
        start = 0
        for n in chunk_lengths(x.shape[0], chunks):
            y, state = lstm(x[start : start + n], state)
            outs.append(y)
            start += n
        if backward:
            torch.cat(outs).sum().backward()  # type: ignore[no-untyped-call]
        if x.is_cuda:
            torch.cuda.synchronize(x.device)

    return step


def measure(
    hidden: int, batch: int, steps: int, chunks: list[int], reps: int, stat: str, where: Where
) -> dict[str, Any]:
    """ms of each (C, mode) over ``reps`` interleaved repetitions (``stat``: min or median),
    per-C overheads and the least-squares fits."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(hidden, hidden).to(*where)
    x = torch.randn(steps, batch, hidden, device=where[0], dtype=where[1], requires_grad=True)
    fns = {(c, bw): run_chunks(lstm, x, c, bw) for c in chunks for bw in (False, True)}
    times: dict[tuple[int, bool], list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up (allocator, oneDNN primitives)
        fn()
    for _ in range(reps):
        for key, fn in fns.items():
            lstm.zero_grad(set_to_none=True)
            x.grad = None
            t = time.perf_counter()
            fn()
            times[key].append(1e3 * (time.perf_counter() - t))
    pick = min if stat == "min" else statistics.median
    med = {k: pick(v) for k, v in times.items()}
    rows = []
    for c in chunks:
        row: dict[str, Any] = {
            "chunks": c,
            "lengths": chunk_lengths(steps, c),
            "fwd_ms": round(med[(c, False)], 4),
            "fwd_bwd_ms": round(med[(c, True)], 4),
        }
        if c > 1:
            row["overhead_fwd_ms"] = round((med[(c, False)] - med[(1, False)]) / (c - 1), 4)
            row["overhead_fwd_bwd_ms"] = round((med[(c, True)] - med[(1, True)]) / (c - 1), 4)
        rows.append(row)
    fit = {mode: _fit(med, chunks, bw) for mode, bw in (("fwd", False), ("fwd_bwd", True))}
    return {
        "rows": rows,
        "fit": {
            "fwd_ms": round(fit["fwd"], 4),
            "bwd_ms": round(fit["fwd_bwd"] - fit["fwd"], 4),
            "fwd_bwd_ms": round(fit["fwd_bwd"], 4),
        },
        "samples_ms": {f"C{c}_{'fwd_bwd' if bw else 'fwd'}": v for (c, bw), v in times.items()},
    }


def _fit(med: dict[tuple[int, bool], float], chunks: list[int], bw: bool) -> float:
    """Least-squares slope of time_C - time_1 against C - 1 (through the origin)."""
    num = sum((c - 1) * (med[(c, bw)] - med[(1, bw)]) for c in chunks)
    den = sum((c - 1) ** 2 for c in chunks)
    return num / den if den else 0.0


def step_floor_ms(hidden: int, steps: int, reps: int, where: Where) -> float:
    """Fastest fwd+bwd ms of one time step at batch 1 (``steps`` steps in one call / steps)."""
    lstm = torch.nn.LSTM(hidden, hidden).to(*where)
    x = torch.randn(steps, 1, hidden, device=where[0], dtype=where[1], requires_grad=True)
    return 1e3 * min(timed(run_chunks(lstm, x, 1, True), reps, warmup=1)) / steps


def main(argv: list[str] | None = None) -> int:
    ap = parser(__name__, __doc__)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=32, help="time steps T")
    ap.add_argument("--chunks", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--stat", choices=("min", "median"), default="min")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    ap.add_argument("--out", default=str(results_for("planning", "chunk_overhead_cpu.json")))
    args = ap.parse_args(argv)
    if 1 not in args.chunks or min(args.chunks) < 1 or max(args.chunks) > args.steps:
        ap.error("--chunks must include 1 and lie in 1..--steps")
    set_threads(args.threads)
    where = (torch.device(args.device), getattr(torch, args.dtype))
    t0 = time.perf_counter()
    res = measure(args.hidden, args.batch, args.steps, sorted(args.chunks), args.reps, args.stat,
                  where)  # fmt: skip
    floor = step_floor_ms(args.hidden, args.steps, args.reps, where)
    doc = {
        "bench": "chunk_overhead",
        "what": "extra ms per extra nn.LSTM call when one layer's T steps run as C calls "
        "with (h, c) passed in; forward with autograd on, and forward+backward",
        "command": command(__name__, argv),
        "hidden": args.hidden,
        "batch": args.batch,
        "steps": args.steps,
        "dtype": args.dtype,
        "reps": args.reps,
        "stat": args.stat,
        **res,
        "step_b1_fwd_bwd_ms": round(floor, 4),
        "machine": machine(where[0]),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    return finish(doc, args.out)
