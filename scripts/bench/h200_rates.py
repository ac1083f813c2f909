"""H200 rates for the analytic cost tables, recovered from the committed H200 placement rows.

The ``plan_report`` benchmark scales its analytic GNMT tables by two numbers measured on the
device (``--measure-only --device cuda`` writes them to ``measured_cuda.json``): the matmul
rate (FLOP/s) and the latency of one small kernel launch (s).  The H200 file itself was not
committed; the single-device step times the report computed from it were kept (hidden 1024,
V 8,000, bf16, Ts = Tt = 32):

    gnmt8 batch 128: 48.10 ms    gnmt4 batch 128: 26.84 ms    gnmt8 batch 8,192: 390.5 ms

The batch-128 times are launch-bound (every stage sits at its latency floor) and the
batch-8,192 time is FLOP-bound, so the two rates follow: launch from the two batch-128 rows
(their sum), FLOP/s from the batch-8,192 row, alternated until both settle.  Writes
``--out`` (the ``--measured`` format of plan_report, with the fit and its
residuals) and prints it.  The train benchmark measured the peak matmul rate in another H200
run, 758.9 TFLOP/s, for comparison.

    python -m scripts.bench h200_rates
"""

from __future__ import annotations

import math
from collections.abc import Callable

from parallel.planning.costs import analytic_gnmt_costs
from parallel.planning.links import LINK_PRESETS
from parallel.planning.plan import single_device_ms
from scripts.bench.common import RESULTS, finish, parser

ROWS = ((8, 128, 48.10), (4, 128, 26.84), (8, 8192, 390.5))  # (layers, batch, 1-device ms)


def one_device_ms(layers: int, batch: int, flops: float, launch: float) -> float:
    t = analytic_gnmt_costs(layers, 1024, 8000, 32, 32, batch, batch, flops, launch,
                            dtype="bfloat16")  # fmt: skip
    return single_device_ms([t], LINK_PRESETS["nvlink"])


def solve(f: Callable[[float], float], target: float, lo: float, hi: float) -> float:
    """Bisection (geometric) for a monotonic ``f`` with f(x) = target."""
    up = f(hi) > f(lo)
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        if (f(mid) < target) == up:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def main(argv: list[str] | None = None) -> int:
    ap = parser(__name__, __doc__)
    ap.add_argument("--out", default=str(RESULTS / "planning" / "h200" / "h200_rates.json"))
    args = ap.parse_args(argv)
    flops, launch = 758.9e12, 10e-6
    small = [r for r in ROWS if r[1] == 128]
    want = sum(r[2] for r in small)
    big_layers, big_batch, big_ms = ROWS[2]
    for _ in range(8):

        def small_ms(x: float, flops: float = flops) -> float:
            return sum(one_device_ms(n, b, flops, x) for n, b, _ in small)

        def big(x: float, launch: float = launch) -> float:
            return one_device_ms(big_layers, big_batch, x, launch)

        launch = solve(small_ms, want, 1e-7, 1e-3)
        flops = solve(big, big_ms, 1e12, 1e16)
    fit = [{"model": f"gnmt{n}", "batch": b, "benchmarks_ms": ms,
            "refit_ms": round(one_device_ms(n, b, flops, launch), 3)}
           for n, b, ms in ROWS]  # fmt: skip
    doc = {
        "device": "NVIDIA H200",
        "dtype": "bfloat16",
        "matmul_flops_per_s": flops,
        "launch_s": launch,
        "source": "fitted by python -m scripts.bench h200_rates to the H200 single-device step "
        "times in BENCHMARKS.md (placement report rows; the measured_cuda.json behind them is not "
        "committed); not a new measurement",
        "fit": fit,
        "bench_train_peak_matmul_flops_per_s": 758.9e12,
    }
    return finish(doc, args.out)
