"""GNMT against the Transformer under pipelining, in simulation, on the same H200 device model.

Both cost tables are analytic (``parallel.planning.costs.analytic_gnmt_costs``,
``parallel.planning.costs_transformer.analytic_transformer_costs``) scaled by the same two H200
rates that the ``plan_report`` benchmark uses for its committed H200 rows: the matmul rate and
the launch latency in ``docs/results/planning/h200/h200_rates.json`` (fitted to earlier H200
single-device step times).  For pp in {1,2,4,8} (contiguous placement,
min-max balanced on the stage times at that micro-batch size: ``parallel.partition``), M in
{1,...,32} micro-batches and the gpipe / 1f1b schedules, one step is simulated
(``parallel.planning.simulate``, NVLink link model) and its speedup over the same architecture's
pp=1, M=1 step reported.  Batch 128 x 32 tokens is the plan report's setting; larger batches
(``--batches``) show where each architecture leaves the launch-bound regime; the same sweep
with the launch latency set to 0 (``sensitivity_no_launch_floor`` in the JSON, best rows only)
shows what the latency floor costs.

    python -m scripts.bench compare_archs_sim  # writes docs/results/architectures/sim/sim_h200.*
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from data.atomic import write_json_result
from parallel.errors import PlacementError
from parallel.partition import balanced_runs
from parallel.planning.costs import CostTable, analytic_gnmt_costs
from parallel.planning.costs_transformer import analytic_transformer_costs
from parallel.planning.links import LINK_PRESETS
from parallel.planning.simulate import simulate
from parallel.schedules import contiguous_placement
from scripts.bench.common import RESULTS, command, parser

RATES = "docs/results/planning/h200/h200_rates.json"
H200_BYTES = 143_771 * 2**20  # BENCHMARKS.md: one NVIDIA H200 (143,771 MiB)


def tables(args: argparse.Namespace, rates: dict[str, Any], batch: int) -> dict[str, CostTable]:
    f, launch, dtype = rates["matmul_flops_per_s"], rates["launch_s"], rates["dtype"]
    dev = rates["device"]
    gnmt = analytic_gnmt_costs(args.gnmt_layers, args.hidden, args.vocab, args.src_len,
                               args.tgt_len, batch, batch, f, launch, dtype=dtype,
                               device=dev)  # fmt: skip
    tr = analytic_transformer_costs(args.enc_layers, args.dec_layers, args.hidden, args.heads,
                                    args.ffn, args.vocab, args.src_len, args.tgt_len, batch,
                                    batch, f, launch, dtype=dtype, device=dev)  # fmt: skip
    return {"gnmt": gnmt, "transformer": tr}


def balanced_placement(t: CostTable, pp: int, m: int) -> tuple[int, ...]:
    """Contiguous runs minimising the heaviest rank's fwd+bwd time at micro-batch B/m."""
    tm = t.for_microbatches(m)
    return contiguous_placement(balanced_runs([s.fwd_ms + s.bwd_ms for s in tm.stages], pp))


def simulate_all(args: argparse.Namespace, rates: dict[str, Any]) -> list[dict[str, Any]]:
    link = LINK_PRESETS[args.link]
    rows: list[dict[str, Any]] = []
    for batch in args.batches:
        for arch, t in tables(args, rates, batch).items():
            base = simulate(t, [0] * t.num_stages, "gpipe", 1, link, keep_events=False).step_ms
            for pp in args.pp:
                for m in args.microbatches:
                    if batch % m:
                        continue
                    tm = t.for_microbatches(m)
                    at_floor = sum(s.fwd_ms <= s.fwd_floor_ms for s in tm.stages)
                    for sched in args.schedules:
                        row: dict[str, Any] = {"arch": arch, "model": t.model, "batch": batch,
                                               "pp": pp, "M": m, "schedule": sched,
                                               "micro_batch": batch // m,
                                               "stages_at_launch_floor": at_floor,
                                               "stages": t.num_stages}  # fmt: skip
                        try:
                            place = balanced_placement(t, pp, m)
                            r = simulate(t, place, sched, m, link, num_ranks=pp,
                                         keep_events=False)  # fmt: skip
                        except PlacementError as e:  # e.g. 1f1b with M < pp
                            rows.append({**row, "skipped": str(e)})
                            continue
                        peak = max(r.peak_bytes)
                        rows.append({**row, "placement": "".join(map(str, place)),
                                     "step_ms": round(r.step_ms, 4),
                                     "speedup": round(base / r.step_ms, 4),
                                     "base_ms": round(base, 4),
                                     "bubble": round(r.bubble_frac, 4),
                                     "peak_gib": round(peak / 2**30, 3),
                                     "fits_h200": peak <= H200_BYTES})  # fmt: skip
    return rows


def best_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (batch, arch, pp): the fastest schedule and M."""
    best: dict[tuple[int, str, int], dict[str, Any]] = {}
    for r in rows:
        if "step_ms" not in r:
            continue
        key = (r["batch"], r["arch"], r["pp"])
        if key not in best or r["step_ms"] < best[key]["step_ms"]:
            best[key] = r
    return [best[k] for k in sorted(best)]


def m1_speedup(rows: list[dict[str, Any]], batch: int, arch: str, pp: int) -> float:
    return max(r["speedup"] for r in rows if "step_ms" in r and r["M"] == 1
               and (r["batch"], r["arch"], r["pp"]) == (batch, arch, pp))  # fmt: skip


def table_text(rows: list[dict[str, Any]], best: list[dict[str, Any]]) -> str:
    lines = ["| batch | arch | pp | 1-dev ms | best ms | best speedup | schedule, M | "
             "speedup at M=1 | stages at floor (best M) | peak GiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in best:
        m1 = m1_speedup(rows, r["batch"], r["arch"], r["pp"])
        lines.append(
            f"| {r['batch']} | {r['model']} | {r['pp']} | {r['base_ms']:.2f} | "
            f"{r['step_ms']:.2f} | {r['speedup']:.2f}x | {r['schedule']} M={r['M']} | "
            f"{m1:.2f}x | {r['stages_at_launch_floor']}/{r['stages']} | {r['peak_gib']:.1f}"
            + ("" if r["fits_h200"] else " (> H200)")
            + " |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], best: list[dict[str, Any]], path: Path, pp_m: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    batches = sorted({r["batch"] for r in best})
    styles = {"transformer": "-o", "gnmt": "--s"}
    for i, batch in enumerate(batches):
        for arch, style in styles.items():
            rs = [r for r in best if (r["batch"], r["arch"]) == (batch, arch)]
            if not rs:
                continue
            label = f"{rs[0]['model']} B={batch}"
            left.plot([r["pp"] for r in rs], [r["speedup"] for r in rs], style, color=f"C{i}",
                      label=label)  # fmt: skip
            ms = sorted({r["M"] for r in rows if "step_ms" in r and r["pp"] == pp_m})
            sp = [max((r["speedup"] for r in rows if "step_ms" in r and r["M"] == m
                       and (r["batch"], r["arch"], r["pp"]) == (batch, arch, pp_m)),
                      default=float("nan")) for m in ms]  # fmt: skip
            right.plot(ms, sp, style, color=f"C{i}", label=label)
    left.plot([1, 8], [1, 8], ":", color="grey")
    left.set_title("best schedule and M per pp", fontsize=9)
    left.set_xlabel("pipeline ranks (pp)")
    right.set_title(f"pp={pp_m}: speedup vs micro-batches (best schedule)", fontsize=9)
    right.set_xlabel("micro-batches M")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_ylabel("speedup over pp=1, M=1")
        ax.grid(alpha=0.3)
    for ax in (left, right):
        ticks = [0.125, 0.25, 0.5, 1, 2, 4, 8]
        ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
        ax.set_ylim(0.1, 9)
    left.set_xticks([1, 2, 4, 8], ["1", "2", "4", "8"])
    right.set_xticks([1, 2, 4, 8, 16, 32], ["1", "2", "4", "8", "16", "32"])
    left.legend(fontsize=7)
    fig.suptitle("simulated H200 (fitted rates, NVLink), Ts=Tt=32", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = parser(__name__, __doc__)
    # fmt: off
    ap.add_argument("--rates", default=RATES, help="plan_report --measured format (H200)")
    ap.add_argument("--out-dir", default=str(RESULTS / "architectures" / "sim"))
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=8000,
                    help="plan_report's committed H200 run and the rate fit use 8,000")
    ap.add_argument("--gnmt-layers", type=int, default=8)
    ap.add_argument("--enc-layers", type=int, default=6)
    ap.add_argument("--dec-layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--ffn", type=int, default=4096)
    ap.add_argument("--src-len", type=int, default=32)
    ap.add_argument("--tgt-len", type=int, default=32)
    ap.add_argument("--batches", type=int, nargs="+", default=[128, 1024, 8192],
                    help="sentences per step; 128 is plan_report's, the others show the "
                         "FLOP-bound regime (8,192 is plan_report's largest sweep batch)")
    ap.add_argument("--pp", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--microbatches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--schedules", nargs="+", default=["gpipe", "1f1b"])
    ap.add_argument("--link", default="nvlink", choices=list(LINK_PRESETS))
    # fmt: on
    args = ap.parse_args(argv)
    rates = json.loads(Path(args.rates).read_text())
    rows = simulate_all(args, rates)
    best = best_rows(rows)
    no_floor = best_rows(simulate_all(args, {**rates, "launch_s": 0.0}))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = {
        arch: sum(s.param_bytes for s in t.stages) // 4 - t.tied_param_bytes // 4
        for arch, t in tables(args, rates, args.batches[0]).items()
    }
    doc = {
        "what": "simulated pipelined training step, GNMT vs Transformer, same device model",
        "command": command(__name__, argv),
        "machine": {
            "device": rates["device"],
            "dtype": rates["dtype"],
            "matmul_flops_per_s": rates["matmul_flops_per_s"],
            "launch_s": rates["launch_s"],
            "rates_file": args.rates,
            "rates_source": rates.get("source", ""),
            "link": {"preset": args.link, **vars(LINK_PRESETS[args.link])},
            "memory_bytes": H200_BYTES,
        },
        "inputs": {
            "gnmt": {
                "cost_model": "parallel.planning.costs.analytic_gnmt_costs",
                "layers": args.gnmt_layers,
                "hidden": args.hidden,
                "vocab": args.vocab,
                "params": params["gnmt"],
            },
            "transformer": {
                "cost_model": "parallel.planning.costs_transformer.analytic_transformer_costs",
                "enc_layers": args.enc_layers,
                "dec_layers": args.dec_layers,
                "hidden": args.hidden,
                "heads": args.heads,
                "ffn": args.ffn,
                "vocab": args.vocab,
                "params": params["transformer"],
            },
            "src_len": args.src_len,
            "tgt_len": args.tgt_len,
            "batches": args.batches,
            "pp": args.pp,
            "microbatches": args.microbatches,
            "schedules": args.schedules,
            "placement": "contiguous, parallel.partition.balanced_runs on per-stage fwd+bwd ms "
            "at micro-batch batch/M",
            "baseline": "same arch and batch, pp=1, M=1, gpipe",
        },  # fmt: skip
        "best": best,
        "sensitivity_no_launch_floor": [
            {k: r[k] for k in ("batch", "model", "pp", "schedule", "M", "step_ms", "speedup")}
            for r in no_floor
        ],
        "rows": rows,
    }
    write_json_result(out / "sim_h200.json", doc)
    plot(rows, best, out / "sim_h200.png", max(args.pp))
    print(table_text(rows, best))
    print("without the launch floor (launch_s=0), best speedup at pp=" + str(max(args.pp)) + ": "
          + ", ".join(f"{r['model']} B={r['batch']} {r['speedup']:.2f}x (M={r['M']})"
                      for r in no_floor if r["pp"] == max(args.pp)))  # fmt: skip
    print(f"params: {params}; wrote {out / 'sim_h200.json'} and {out / 'sim_h200.png'}")
    return 0
