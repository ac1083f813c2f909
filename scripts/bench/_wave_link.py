"""The link half of ``python -m scripts.bench wavefront``'s prediction: messages and the
shared-gradient sum between two processes (gloo), or between the threads of one process
(copies and sums in memory)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
import torch.distributed as dist

from parallel.runtime.engine import init_distributed, launch


def probe_link(sizes: list[int], shared_numel: int, repeats: int = 20) -> dict[str, float]:
    """Between two processes (gloo): one-way ms of float32 messages of ``sizes`` elements
    (ping-pong / 2), fitted to latency + bytes / bandwidth, and the all-reduce ms of
    ``shared_numel`` float32 (the wavefront's shared gradients)."""
    out = launch(_link_worker, sizes, shared_numel, repeats, nproc=2, timeout_s=60)
    return dict(out[0])


def _link_worker(sizes: list[int], shared_numel: int, repeats: int) -> dict[str, float]:
    torch.set_num_threads(1)
    ctx = init_distributed(1, 2, backend="gloo", device="cpu", timeout_s=60)
    try:
        one_way = [pingpong(n, ctx.rank, repeats) for n in sizes]
        flat = torch.zeros(shared_numel)
        for _ in range(2):
            dist.all_reduce(flat)
        t = time.perf_counter()
        for _ in range(repeats // 2):
            dist.all_reduce(flat)
        allreduce = (time.perf_counter() - t) / (repeats // 2) * 1e3
    finally:
        ctx.close()
    (s0, t0), (s1, t1) = (sizes[0] * 4, one_way[0]), (sizes[-1] * 4, one_way[-1])
    per_byte = max((t1 - t0) / max(s1 - s0, 1), 1e-12)  # ms per byte
    latency = max(t0 - s0 * per_byte, 0.0)
    return {"latency_ms": latency, "bytes_per_s": 1e3 / per_byte, "allreduce_ms": allreduce,
            **{f"one_way_ms_{n}": t for n, t in zip(sizes, one_way, strict=True)}}  # fmt: skip


def probe_memory(
    sizes: list[int], shared_numel: int, numel: int, repeats: int = 20
) -> dict[str, float]:
    """Between the threads of one process (``parallel.wave_threads``): ms of a float32 copy of
    ``sizes`` elements (what :class:`parallel.runtime.wave_local.LocalWire` does per
    tensor), fitted as :func:`probe_link`; ``allreduce_ms``: the gradients summed in memory
    (``shared_numel`` elements) and the weights copied to the other replica (``numel``)."""
    torch.set_num_threads(1)

    def ms(fn: Any) -> float:
        fn()
        t = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - t) / repeats * 1e3

    def copy_of(n: int) -> float:
        x = torch.zeros(n)
        return ms(lambda: x.to(torch.float32, copy=True))

    copies = [copy_of(n) for n in sizes]
    a, b = torch.zeros(shared_numel), torch.ones(shared_numel)
    w, v = torch.zeros(numel), torch.ones(numel)
    summed = ms(lambda: a.add_(b)) + ms(lambda: w.copy_(v))
    (s0, t0), (s1, t1) = (sizes[0] * 4, copies[0]), (sizes[-1] * 4, copies[-1])
    per_byte = max((t1 - t0) / max(s1 - s0, 1), 1e-12)
    return {"latency_ms": max(t0 - s0 * per_byte, 0.0), "bytes_per_s": 1e3 / per_byte,
            "allreduce_ms": summed}  # fmt: skip


def pingpong(numel: int, rank: int, repeats: int, warmup: int = 2) -> float:
    """Median one-way ms of ``numel`` float32 values between ranks 0 and 1 (half of each
    round trip), leaving out the first ``warmup`` of ``repeats``."""
    x = torch.zeros(numel)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        if rank == 0:
            dist.send(x, 1)
            dist.recv(x, 1)
        else:
            dist.recv(x, 0)
            dist.send(x, 0)
        times.append((time.perf_counter() - t) * 1e3 / 2)
    return statistics.median(times[warmup:])
