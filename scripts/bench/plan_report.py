"""Placement report: the expert ``gnmt`` placement against the planned one, in simulation.

For gnmt4 and gnmt8 on 2/4/8 devices and each link preset: the single-device step time,
the best expert (``gnmt`` placement, best schedule and M) and the planned placement
(exact search, ``parallel.planning.plan``), plus the REINFORCE placer on NVLink at 4 and 8
devices. Cost tables are analytic (``parallel.planning.costs.analytic_gnmt_costs``) scaled by
this machine's measured matmul throughput and launch latency, and/or files given with
``--costs`` (the profiler's).  Writes ``plan_report.md``, ``placement_speedup.png`` and the
cost tables to ``--out-dir``; prints the table and, last, one JSON line with the goals (also
``goals.json`` in ``--out-dir``).

    python -m scripts.bench plan_report --out-dir docs/results/planning/sim/nvlink
    python -m scripts.bench plan_report --measure-only --device cuda --out-dir DIR  # GPU tables
    python -m scripts.bench plan_report --costs DIR/costs_cuda_gnmt4.json --costs ...

Measured tables: ``nmt-profile`` (``nmt/machine/stage_costs.py``) times every stage of the
real model on three shape buckets and writes a cost-table file that ``--costs`` takes as it
is (one source per file; the label's ``V=`` comes from the table's notes). To regenerate the report
from measured tables (on the machine whose times you want; ``train.device=cuda`` on a GPU):

    nmt-profile model=gnmt4 data.vocab_size=8000 train.device=cuda profile_out=DIR/gnmt4_v8000.json
    nmt-profile model=gnmt8 data.vocab_size=8000 train.device=cuda profile_out=DIR/gnmt8_v8000.json
    nmt-profile model=gnmt4 data.vocab_size=32000 train.device=cuda \
        profile_out=DIR/gnmt4_v32000.json
    nmt-profile model=gnmt8 data.vocab_size=32000 train.device=cuda \
        profile_out=DIR/gnmt8_v32000.json
    python -m scripts.bench plan_report --no-analytic --out-dir DIR \
        --costs DIR/gnmt4_v8000.json --costs DIR/gnmt8_v8000.json \
        --costs DIR/gnmt4_v32000.json --costs DIR/gnmt8_v32000.json

(drop ``--no-analytic`` to put the analytic rows next to the measured ones; on CPU use
``train.device=cpu train.threads=N`` and expect minutes per table for the 1024-wide models).
The batch, lengths and micro-batch of measured tables are the profiler's (``data.batch_tokens``,
``parallel.microbatches``), not this script's ``--batch``/``--src-len`` (analytic tables only);
the ``validate_simulator`` benchmark checks the simulator against measured step times.

Wavefront rows (``--wavefront 4:4 8:8``, ``parallel.planning.wavefront_report``):
gnmt4 on 4 and gnmt8 on 8 devices cut along time into C chunks, placement and C planned
together, next to the micro-batch planner's speedup; written to the report and to
``wavefront.json``.  The per-chunk overhead comes from ``--chunk-overhead`` files
(the ``chunk_overhead`` benchmark) for the device they name, else it is estimated from the launch
latency and labelled so.  The committed run (H200 rates fitted to earlier H200 rows,
``docs/results/planning/h200/h200_rates.json``)::

    python -m scripts.bench plan_report --measure-only --device cpu \
        --out-dir docs/results/planning/sim/nvlink
    python -m scripts.bench plan_report --out-dir docs/results/planning/sim/nvlink --vocab 8000 \
        --devices 4 8 --links nvlink --rl-iterations 0 --sweep-batch \
        --measured docs/results/planning/epyc/measured_cpu.json \
        --measured docs/results/planning/h200/h200_rates.json \
        --chunk-overhead docs/results/planning/epyc/chunk_overhead_cpu_h1024.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from data.atomic import atomic_write_text, write_json_result
from parallel.planning.costs import (
    CostTable,
    analytic_gnmt_costs,
    load_cost_tables,
    save_cost_tables,
)
from parallel.planning.links import LINK_PRESETS
from parallel.planning.plan import SearchSpace, best_of, search, single_device_ms
from parallel.planning.reinforce import reinforce
from parallel.planning.simulate import simulate
from parallel.planning.wavefront_report import markdown as wave_markdown
from parallel.planning.wavefront_report import wavefront_rows
from parallel.schedules import gnmt_placement
from scripts.bench._device_rates import calibration, measure, rates
from scripts.bench.common import finish, parser

GAIN_GOAL, SPEEDUP_GOAL = 0.19, 6.0


def analytic_tables(meas: dict[str, Any], args: argparse.Namespace, vocab: int) -> list[CostTable]:
    flops, launch = rates(meas, args.rates)
    return [
        analytic_gnmt_costs(layers, args.hidden, vocab, args.src_len, args.tgt_len,
                            args.batch, args.batch, flops, launch,
                            dtype=meas["dtype"], device=meas["device"])
        for layers in (4, 8)
    ]  # fmt: skip


@dataclass
class Row:
    source: str
    model: str
    devices: int
    link: str
    single_ms: float
    expert_ms: float
    expert_desc: str
    planned_ms: float
    planned_desc: str
    bubble: float
    peak_gb: float
    rl_ms: float | None = None
    rl_desc: str = ""

    @property
    def gain(self) -> float:  # how much faster planned runs than expert (speed ratio - 1)
        return self.expert_ms / self.planned_ms - 1

    def cells(self) -> list[str]:
        rl = "" if self.rl_ms is None else f"{self.rl_ms:.2f} ({self.rl_desc})"
        return [self.source, self.model, str(self.devices), self.link, f"{self.single_ms:.2f}",
                f"{self.expert_ms:.2f} ({self.expert_desc})", f"{self.planned_ms:.2f} "
                f"({self.planned_desc})", f"{100 * self.gain:+.1f}%",
                f"{self.single_ms / self.expert_ms:.2f}x",
                f"{self.single_ms / self.planned_ms:.2f}x",
                f"{self.bubble:.2f}", f"{self.peak_gb:.2f}", rl]  # fmt: skip


HEADER = ["costs", "model", "dev", "link", "1-dev ms", "expert ms", "planned ms",
          "planned vs expert", "expert speedup", "planned speedup", "bubble", "peak GB",
          "REINFORCE ms"]  # fmt: skip


def rows_for(
    source: str, label: str, tables: list[CostTable], args: argparse.Namespace
) -> list[Row]:
    t = tables[0]
    layers = (t.num_stages - 1) // 2
    space = SearchSpace(max_stages_per_rank=args.max_stages_per_rank)
    rows = []
    for k in args.devices:
        for name in args.links:
            link = LINK_PRESETS[name]
            single = single_device_ms(tables, link)
            ke = min(k, layers)  # the gnmt rule needs layers >= devices: use `layers` of them
            ex = best_of(tables, gnmt_placement(layers, ke), link, ke, space)
            res = search(tables, k, link, space)
            if ex is None or res.best is None:
                raise SystemExit(f"no feasible placement for {t.model} on {k} devices")
            b = res.best
            sim = simulate(t, b.placement, b.schedule, b.microbatches, link, num_ranks=k)
            rl, rl_desc = None, ""
            if name == "nvlink" and k in (4, 8) and args.rl_iterations > 0:
                r = reinforce(tables, k, link, b.microbatches, iterations=args.rl_iterations,
                              seed=args.seed)  # fmt: skip
                rl = None if r.best is None else r.best.step_ms
                rl_desc = "" if r.best is None else r.best.schedule
            used = "" if ke == k else f" on {ke} dev"
            rows.append(Row(source, label, k, name, single, ex.step_ms,
                            f"{ex.schedule} M={ex.microbatches}{used}", b.step_ms,
                            f"{b.schedule} M={b.microbatches} {''.join(map(str, b.placement))}",
                            sim.bubble_frac, b.peak_bytes / 2**30, rl, rl_desc))  # fmt: skip
            print(f"  {label} {k} dev {name}: planned {b.step_ms:.2f} ms, expert "
                  f"{ex.step_ms:.2f} ms ({res.simulated}/{res.considered} simulated)",
                  file=sys.stderr, flush=True)  # fmt: skip
    return rows


def batch_sweep(meas: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """gnmt8 on 8 devices over NVLink for several global batch sizes (sentences/step)."""
    flops, launch = rates(meas, args.rates)
    link, out = LINK_PRESETS["nvlink"], []
    space = SearchSpace(max_stages_per_rank=args.max_stages_per_rank)
    for batch in args.sweep_batch:
        t = analytic_gnmt_costs(8, args.hidden, args.vocab[0], args.src_len, args.tgt_len,
                                batch, batch, flops, launch, dtype=meas["dtype"])  # fmt: skip
        one = single_device_ms([t], link)
        ex = best_of([t], gnmt_placement(8, 8), link, 8, space)
        best = search([t], 8, link, space).best
        if ex is None or best is None:
            continue
        out.append({"device": meas["device"], "batch": batch, "single_ms": round(one, 3),
                    "expert_ms": round(ex.step_ms, 3), "planned_ms": round(best.step_ms, 3),
                    "planned_M": best.microbatches, "speedup": round(one / best.step_ms, 3),
                    "gain": round(ex.step_ms / best.step_ms - 1, 4)})  # fmt: skip
    return out


def sweep_lines(sweep: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """The batch-sweep section (analytic tables only; none with ``--no-analytic``)."""
    if not sweep:
        return []
    return [f"## gnmt8 V={args.vocab[0]}, 8 devices, NVLink: global batch sweep", "",
            "| device | batch | 1-dev ms | expert ms | planned ms (M) | speedup | vs expert |",
            "|---|---|---|---|---|---|---|",
            *[f"| {x['device']} | {x['batch']} | {x['single_ms']} | {x['expert_ms']} | "
              f"{x['planned_ms']} ({x['planned_M']}) | {x['speedup']}x | "
              f"{100 * x['gain']:+.1f}% |" for x in sweep], ""]  # fmt: skip


def markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: Path) -> None:
    """Per cost source two rows (step time, speedup); one column per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = sorted({r.source for r in rows})
    models = sorted({r.model for r in rows})
    links = sorted({r.link for r in rows})
    fig, axes = plt.subplots(2 * len(sources), len(models), squeeze=False,
                             figsize=(4 * len(models), 3.4 * 2 * len(sources)))  # fmt: skip
    for si, source in enumerate(sources):
        for j, model in enumerate(models):
            top, bottom = axes[2 * si][j], axes[2 * si + 1][j]
            for i, link in enumerate(links):
                key = (source, model, link)
                rs = sorted((r for r in rows if (r.source, r.model, r.link) == key),
                            key=lambda r: r.devices)  # fmt: skip
                if not rs:
                    continue
                xs, one = [1] + [r.devices for r in rs], rs[0].single_ms
                for kind, style in (("planned", "-o"), ("expert", "--x")):
                    ms = [one] + [r.planned_ms if kind == "planned" else r.expert_ms for r in rs]
                    top.plot(xs, ms, style, color=f"C{i}", label=f"{kind} {link}")
                    bottom.plot(xs, [one / m for m in ms], style, color=f"C{i}")
            bottom.plot([1, 8], [1, 8], ":", color="grey")
            top.set_title(f"{model}\n{source}", fontsize=8)
            top.set_ylabel("simulated step ms")
            bottom.set_ylabel("speedup over 1 device")
            bottom.set_xlabel("devices")
            for ax in (top, bottom):
                ax.set_xscale("log", base=2)
                ax.set_xticks([1, 2, 4, 8], ["1", "2", "4", "8"])
                ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def goals(rows: list[Row]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for source in sorted({r.source for r in rows}):
        rs = [r for r in rows if r.source == source and r.devices in (4, 8)]
        gains = [r.gain for r in rs]
        sp = [r.single_ms / r.planned_ms for r in rows if r.source == source and r.devices == 8
              and r.model.startswith("gnmt8") and r.link == "nvlink"]  # fmt: skip
        out[source] = {
            "gain_goal_met_rows": sum(g >= GAIN_GOAL for g in gains),
            "gain_rows": len(gains),
            "gain_min": round(min(gains), 4) if gains else None,
            "gain_max": round(max(gains), 4) if gains else None,
            "gain_goal_met_all": bool(gains) and min(gains) >= GAIN_GOAL,
            "gain_by_row": {f"{r.model} {r.devices}dev {r.link}": round(r.gain, 4) for r in rs},
            "gnmt8_8dev_nvlink_speedup": [round(x, 3) for x in sp],
            "speedup_goal_met_rows": sum(x >= SPEEDUP_GOAL for x in sp),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = parser(__name__, __doc__)
    # fmt: off
    ap.add_argument("--costs", action="append", default=[], help="cost-table JSON (repeatable)")
    ap.add_argument("--device", default="cpu",
                    help="device whose throughput scales the analytic tables")
    ap.add_argument("--no-analytic", action="store_true", help="only the --costs tables")
    ap.add_argument("--measured", action="append", default=[],
                    help="measured_*.json from an earlier --measure-only run (repeatable)")
    ap.add_argument("--rates", choices=("matmul", "lstm"), default="matmul",
                    help="scale the analytic tables by the matmul/tiny-op or LSTM timings")
    ap.add_argument("--measure-only", action="store_true", help="write cost tables and stop")
    ap.add_argument("--out-dir", default="docs/results/planning/sim/nvlink")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--vocab", type=int, nargs="+", default=[8000, 32000])
    ap.add_argument("--batch", type=int, default=128, help="sentences per step")
    ap.add_argument("--src-len", type=int, default=32)
    ap.add_argument("--tgt-len", type=int, default=32)
    ap.add_argument("--devices", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--links", nargs="+", default=list(LINK_PRESETS), choices=list(LINK_PRESETS))
    ap.add_argument("--max-stages-per-rank", type=int, default=4)
    ap.add_argument("--rl-iterations", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sweep-batch", type=int, nargs="*", default=[128, 512, 2048, 8192])
    ap.add_argument("--wavefront", nargs="*", default=["4:4", "8:8"],
                    help="LAYERS:DEVICES pairs for wavefront rows (none: skip)")
    ap.add_argument("--wavefront-link", default="nvlink", choices=list(LINK_PRESETS))
    ap.add_argument("--chunk-overhead", action="append", default=[],
                    help="a chunk_overhead JSON for the device it names (repeatable)")
    # fmt: on
    args = ap.parse_args(argv)
    start = time.perf_counter()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sources: list[tuple[str, str, list[CostTable]]] = []
    measured = [json.loads(Path(p).read_text()) for p in args.measured]
    if not args.no_analytic and not measured:
        dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
        rows_mm = args.src_len * args.batch if args.device.startswith("cuda") else 1024
        meas = measure(args.device, dtype, args.hidden, rows_mm)
        tag = "cuda" if args.device.startswith("cuda") else "cpu"
        write_json_result(out / f"measured_{tag}.json", meas)
        measured.append(meas)
        if args.measure_only:
            print(json.dumps(meas))
            return 0
    by_source: dict[str, dict[str, Any]] = {}
    for meas in measured:
        print(f"measured: {json.dumps(meas)}", file=sys.stderr)
        tag = meas["device"].replace(" ", "_")
        for vocab in args.vocab:
            for t in analytic_tables(meas, args, vocab):
                save_cost_tables(out / f"costs_{tag}_{t.model}_v{vocab}.json", [t])
                sources.append((f"analytic@{meas['device']}", f"{t.model} V={vocab}", [t]))
                by_source[f"analytic@{meas['device']}"] = meas
    for p in args.costs:
        tables = load_cost_tables(p)
        vocab = tables[0].notes.partition("vocab=")[2].split(" ")[0]
        label = f"{tables[0].model} V={vocab}" if vocab else tables[0].model
        sources.append((f"{tables[0].source}@{tables[0].device}", label, tables))
    rows: list[Row] = []
    for source, label, tables in sources:
        print(f"{source} {label}: {tables[0].notes}", file=sys.stderr, flush=True)
        rows += rows_for(source, label, tables, args)
    sweep = [x for meas in measured for x in batch_sweep(meas, args)]
    calib = [calibration(meas, args.rates) for meas in measured]
    table = markdown(rows)
    g = goals(rows)
    micro = {(r.source, r.model, r.devices, r.link): r.planned_ms for r in rows}
    launch = {src: rates(m, args.rates)[1] for src, m in by_source.items()}
    waves = wavefront_rows([(s, m, t[0]) for s, m, t in sources if s in launch], launch, micro,
                           args.wavefront, args.wavefront_link, args.chunk_overhead)  # fmt: skip
    wave_md = wave_markdown(waves)
    text = "\n".join([
        f"# Placement report: hidden={args.hidden} vocab={args.vocab} batch={args.batch} "
        f"Ts={args.src_len} Tt={args.tgt_len}; analytic tables use {args.rates} rates", "",
        *[f"- calibration {c}" for c in calib], "", table, "",
        *sweep_lines(sweep, args), *wave_md])  # fmt: skip
    wave_doc = {"rows": [r.to_dict() for r in waves], "link": args.wavefront_link}
    write_json_result(out / "wavefront.json", wave_doc)
    atomic_write_text(out / "plan_report.md", text)
    plot(rows, out / "placement_speedup.png")
    print(text)
    verdict = {"goals": g, "gain_goal": GAIN_GOAL, "speedup_goal": SPEEDUP_GOAL,
               "batch_sweep": sweep,
               "wavefront": {f"{r.source} {r.model} {r.devices}dev": round(r.speedup, 3)
                             for r in waves},
               "rates": args.rates, "measured": measured,
               "model": {"hidden": args.hidden, "vocab": args.vocab, "batch": args.batch,
                         "src_len": args.src_len, "tgt_len": args.tgt_len},
               "files": [str(out / "plan_report.md"), str(out / "wavefront.json"),
                         str(out / "placement_speedup.png")],
               "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    return finish(verdict, out / "goals.json")
