"""The link half of ``python -m scripts.bench wavefront``'s prediction: messages and the
shared-gradient sum between two processes (gloo), or between the threads of one process
(copies and sums in memory)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
import torch.distributed as dist

from nmt.machine import hostmem
from nmt.train.wave_gradients import sum_over
from parallel.runtime.engine import init_distributed, launch


def probe_link(sizes: list[int], shared: list[list[int]], repeats: int = 20) -> dict[str, float]:
    """Between two processes (gloo): one-way ms of float32 messages of ``sizes`` elements
    (ping-pong / 2), fitted to latency + bytes / bandwidth, and the ms of summing gradients
    of the ``shared`` shapes (the wavefront's shared parameters) as a step sums them
    (:func:`nmt.train.wave_gradients.sum_over`: new gradients flattened into one float32
    tensor, all-reduced, put back)."""
    out = launch(_link_worker, sizes, shared, repeats, nproc=2, timeout_s=60)
    return dict(out[0])


def _link_worker(sizes: list[int], shared: list[list[int]], repeats: int) -> dict[str, float]:
    hostmem.tune()  # the allocator as in training: the flat tensor is new every step
    torch.set_num_threads(1)
    ctx = init_distributed(1, 2, backend="gloo", device="cpu", timeout_s=60)
    try:
        one_way = [pingpong(n, ctx.rank, repeats) for n in sizes]
        params = [torch.nn.Parameter(torch.zeros(s)) for s in shared]
        times = []
        for _ in range(2 + repeats // 2):  # the first two untimed
            for p in params:  # new gradients, as a backward leaves them
                p.grad = torch.ones_like(p)
            t = time.perf_counter()
            sum_over(params, None)
            times.append((time.perf_counter() - t) * 1e3)
        allreduce = statistics.fmean(times[2:])
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
