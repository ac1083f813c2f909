"""This machine's rates for the analytic cost tables of the ``plan_report`` benchmark: matmul
FLOP/s at an LSTM-like GEMM shape, the latency of one tiny kernel launch, and one measured
LSTM layer to calibrate the two against (``--rates lstm``).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch

from scripts.bench.common import timed


def _median_s(
    fn: Callable[[], object], dev: torch.device, reps: int, inner: int = 1, best: bool = False
) -> float:
    """Median (or, ``best``, the minimum: robust to a busy machine) seconds per call, each
    repetition ``inner`` calls, after 2 warm-up calls."""
    for _ in range(2):
        fn()
    times = timed(lambda: [fn() for _ in range(inner)], reps, device=dev)
    return (min(times) if best else statistics.median(times)) / inner


def measure(device: str, dtype: torch.dtype, hidden: int, rows: int) -> dict[str, Any]:
    """Matmul FLOP/s at an LSTM-like GEMM shape, tiny-op latency, and one LSTM layer."""
    dev = torch.device(device)
    a = torch.randn(rows, 2 * hidden, device=dev, dtype=dtype)
    w = torch.randn(2 * hidden, 4 * hidden, device=dev, dtype=dtype)
    reps = 5 if dev.type == "cpu" else 20
    mm_s = _median_s(lambda: a @ w, dev, reps, 1 if dev.type == "cpu" else 20, best=True)
    x, y = torch.randn(8, 64, device=dev), torch.randn(64, 256, device=dev)
    launch_s = _median_s(lambda: torch.addmm(y[0], x, y), dev, 7, 200, best=True)
    name = (
        torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu-{torch.get_num_threads()}t"
    )
    return {
        "device": name,
        "dtype": str(dtype).removeprefix("torch."),
        "matmul_flops_per_s": 2 * rows * 2 * hidden * 4 * hidden / mm_s,
        "matmul_shape": [rows, 2 * hidden, 4 * hidden],
        "launch_s": launch_s,
        "lstm": _lstm_calibration(dev, dtype, hidden),
    }


def _lstm_calibration(dev: torch.device, dtype: torch.dtype, hidden: int) -> dict[str, float]:
    """Measured fwd+bwd of one nn.LSTM(H, H) layer, T=32, at batch 64 and 1."""
    h = hidden if dev.type == "cuda" else min(hidden, 256)
    lstm = torch.nn.LSTM(h, h).to(dev, dtype)
    out = {"hidden": float(h)}
    for b in (64, 1):
        x = torch.randn(32, b, h, device=dev, dtype=dtype, requires_grad=True)
        out[f"b{b}_ms"] = 1e3 * _median_s(lambda x=x: lstm(x)[0].sum().backward(), dev, 5)
    out["b64_flops_per_s"] = 3 * 16 * h * h * 32 * 64 / (out["b64_ms"] / 1e3)
    return out


LSTM_LAUNCHES = 3 * 2 * 32  # fwd+bwd of one LSTM layer over T=32 steps, ~2 launches a step


def rates(meas: dict[str, Any], which: str) -> tuple[float, float]:
    """(FLOP/s, launch seconds) from the matmul and tiny-op timings, or fitted to the
    measured LSTM layer: floor = batch-1 time / launches; FLOP/s from batch 64 when that is
    clearly compute-bound (> 2x the batch-1 time), else the matmul rate."""
    if which == "matmul":
        return meas["matmul_flops_per_s"], meas["launch_s"]
    lstm = meas["lstm"]
    compute_bound = lstm["b64_ms"] > 2 * lstm["b1_ms"]
    flops = lstm["b64_flops_per_s"] if compute_bound else meas["matmul_flops_per_s"]
    return flops, lstm["b1_ms"] / 1e3 / LSTM_LAUNCHES


def calibration(meas: dict[str, Any], which: str) -> str:
    """The analytic model's fwd+bwd time of one LSTM(H, H) layer, T=32, vs the measurement."""
    if "lstm" not in meas:
        return f"{meas['device']}: no LSTM timing ({meas.get('source', 'rates file')})"
    flops, launch = rates(meas, which)
    h, lstm = meas["lstm"]["hidden"], meas["lstm"]
    pred = [1e3 * max(LSTM_LAUNCHES * launch, 3 * 16 * h * h * 32 * b / flops) for b in (64, 1)]
    return (f"{meas['device']}: LSTM({h:.0f}) T=32 fwd+bwd, analytic ({which} rates) vs "
            f"measured: b=64 {pred[0]:.3f} vs {lstm['b64_ms']:.3f} ms, "
            f"b=1 {pred[1]:.3f} vs {lstm['b1_ms']:.3f} ms")  # fmt: skip
