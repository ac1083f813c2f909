"""Wavefront rows of the placement report (``python -m scripts.bench plan_report``).

For one cost table and device count: the best wavefront (``plan_gnmt_wavefront``: placement
and time chunks C) with the given per-chunk overhead, the same at zero overhead, and how large
the overhead may grow before the issue's speedup goal is missed (``overhead_budget`` on the
chosen placement).  The per-chunk overhead of a device comes from the ``chunk_overhead``
benchmark (``load_chunk_overhead``) where it was measured; otherwise ``launch_estimate``
derives one from the device's measured kernel-launch latency and says so in its ``source``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parallel.errors import PlacementError
from parallel.planning.costs import CostTable
from parallel.planning.links import LINK_PRESETS, Link
from parallel.planning.plan import single_device_ms
from parallel.planning.wavefront_plan import overhead_budget, plan_gnmt_wavefront
from parallel.planning.wavefront_sim import ChunkOverhead, gnmt_wave_layers

# (GNMT layers, devices) -> simulated speedup over one device that the wavefront aims at
GOALS: dict[tuple[int, int], float] = {(4, 4): 1.8, (8, 8): 3.0}
FWD_LAUNCHES, BWD_LAUNCHES = 2, 4  # one LSTM time step in the analytic model (fwd, bwd)


def launch_estimate(launch_s: float, device: str) -> ChunkOverhead:
    """An estimate, not a measurement: one extra call costs what one LSTM time step costs
    at a tiny batch in the analytic model (2 launches forward, 4 backward: the input GEMM and
    state copies of the call, its dW / dx GEMMs), each ``launch_s`` seconds."""
    ms = launch_s * 1e3
    return ChunkOverhead(
        FWD_LAUNCHES * ms,
        BWD_LAUNCHES * ms,
        f"estimate, not measured on {device}: (2 fwd + 4 bwd) x launch latency "
        f"{launch_s * 1e6:.2f} us = one LSTM time step at tiny batch in the analytic model",
    )


def load_chunk_overhead(path: str | Path) -> tuple[str, ChunkOverhead]:
    """(device, overhead) from a ``chunk_overhead`` benchmark JSON: forward = the forward
    fit, backward = the fwd+bwd fit minus that; a negative fit (noise on a busy machine)
    counts as zero and the source says so."""
    try:
        doc = json.loads(Path(path).read_text())
        fit, machine = doc["fit"], doc["machine"]
        fwd, both = float(fit["fwd_ms"]), float(fit["fwd_bwd_ms"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PlacementError(f"cannot read chunk overhead {path}: {e}") from e
    fwd_used = max(fwd, 0.0)
    bwd = max(both - fwd_used, 0.0)
    note = "" if fwd >= 0 and both >= fwd else f"; fitted fwd {fwd} ms, fwd+bwd {both} ms, as >= 0"
    source = (f"measured: {Path(path).as_posix()} (LSTM({doc.get('hidden')}), batch "
              f"{doc.get('batch')}, {machine.get('threads')} thread(s)){note}")  # fmt: skip
    return str(machine.get("device", "")), ChunkOverhead(fwd_used, bwd, source)


@dataclass(frozen=True)
class WaveRow:
    source: str
    model: str
    devices: int
    link: str
    single_ms: float
    micro_ms: float | None  # the micro-batch planner's best on the same row, if known
    step_ms: float
    chunks: int
    placement: tuple[int, ...]
    busy_frac: tuple[float, ...]
    overhead: ChunkOverhead
    zero_overhead_ms: float
    zero_overhead_chunks: int
    goal: float | None
    budget_factor: float | None  # overhead x this still meets the goal (on this placement)

    @property
    def speedup(self) -> float:
        return self.single_ms / self.step_ms

    def cells(self) -> list[str]:
        micro = "" if self.micro_ms is None else f"{self.single_ms / self.micro_ms:.2f}x"
        budget = ""
        if self.goal is not None and self.budget_factor is not None:
            ms = self.budget_factor * self.overhead.total_ms
            budget = (f">= {self.goal:.1f}x while fwd+bwd overhead <= {ms:.4g} ms"
                      if self.budget_factor > 0 else f"< {self.goal:.1f}x even at 0")  # fmt: skip
        return [self.source, self.model, str(self.devices), self.link, f"{self.single_ms:.2f}",
                micro, f"{self.step_ms:.2f}", f"**{self.speedup:.2f}x**", str(self.chunks),
                "".join(map(str, self.placement)),
                f"{min(self.busy_frac):.2f}-{max(self.busy_frac):.2f}",
                f"{self.overhead.fwd_ms:.4g} + {self.overhead.bwd_ms:.4g}",
                f"{self.single_ms / self.zero_overhead_ms:.2f}x (C={self.zero_overhead_chunks})",
                budget]  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "model": self.model, "devices": self.devices,
            "link": self.link, "single_ms": round(self.single_ms, 4),
            "micro_batch_planned_ms": None if self.micro_ms is None else round(self.micro_ms, 4),
            "micro_batch_speedup": None if self.micro_ms is None
            else round(self.single_ms / self.micro_ms, 3),
            "wavefront_ms": round(self.step_ms, 4), "speedup": round(self.speedup, 3),
            "chunks": self.chunks, "placement": list(self.placement),
            "busy_frac": [round(x, 3) for x in self.busy_frac],
            "overhead_fwd_ms": self.overhead.fwd_ms, "overhead_bwd_ms": self.overhead.bwd_ms,
            "overhead_source": self.overhead.source,
            "zero_overhead_speedup": round(self.single_ms / self.zero_overhead_ms, 3),
            "zero_overhead_chunks": self.zero_overhead_chunks,
            "goal": self.goal, "goal_met": None if self.goal is None
            else self.speedup >= self.goal,
            "overhead_budget_fwd_bwd_ms": None if self.budget_factor is None
            else round(self.budget_factor * self.overhead.total_ms, 5),
        }  # fmt: skip


HEADER = ["costs", "model", "dev", "link", "1-dev ms", "micro-batch speedup",
          "wavefront ms", "wavefront speedup", "C", "placement", "busy",
          "overhead fwd + bwd ms/chunk", "zero overhead", "goal holds"]  # fmt: skip


def wave_row(
    source: str,
    model: str,
    table: CostTable,
    devices: int,
    link_name: str,
    link: Link,
    overhead: ChunkOverhead,
    micro_ms: float | None = None,
) -> WaveRow:
    """Plan the wavefront of ``table`` on ``devices`` and measure it against one device."""
    single = single_device_ms([table], link)
    plan = plan_gnmt_wavefront(table, devices, link, overhead)
    zero = plan_gnmt_wavefront(table, devices, link, ChunkOverhead())
    layers = (table.num_stages - 1) // 2
    goal = GOALS.get((layers, devices))
    factor = None
    if goal is not None and overhead.total_ms > 0:
        t = table.for_microbatches(1)
        factor = overhead_budget(gnmt_wave_layers(t), plan.placement, link, overhead,
                                 single / goal, num_devices=devices,
                                 tied_param_bytes=t.tied_param_bytes)  # fmt: skip
    return WaveRow(source, model, devices, link_name, single, micro_ms, plan.step_ms,
                   plan.chunks, plan.placement, plan.result.busy_frac, overhead, zero.step_ms,
                   zero.chunks, goal, factor)  # fmt: skip


def wavefront_rows(
    sources: list[tuple[str, str, CostTable]],
    launch_s: dict[str, float],
    micro_ms: dict[tuple[str, str, int, str], float],
    pairs: list[str],
    link_name: str,
    overhead_files: list[str],
) -> list[WaveRow]:
    """Rows for every (source, model label, table) and ``LAYERS:DEVICES`` pair that fits.

    The overhead of a source's device: a ``overhead_files`` entry naming that device (``cpu``
    matches ``cpu-1t``), else ``launch_estimate`` of ``launch_s[source]``; ``micro_ms`` maps
    (source, model, devices, link) to the micro-batch planner's step time."""
    files = [load_chunk_overhead(p) for p in overhead_files]
    link = LINK_PRESETS[link_name]
    out = []
    for source, model, table in sources:
        dev = table.device
        ov = next((o for d, o in files if dev == d or dev.startswith(d + "-")), None)
        ov = ov or launch_estimate(launch_s[source], dev)
        for pair in pairs:
            layers, k = map(int, pair.split(":"))
            if layers != (table.num_stages - 1) // 2:
                continue
            micro = micro_ms.get((source, model, k, link_name))
            out.append(wave_row(source, model, table, k, link_name, link, ov, micro))
    return out


def markdown(rows: list[WaveRow]) -> list[str]:
    """The report's wavefront section (empty without rows), with each overhead's source."""
    if not rows:
        return []
    notes = {f"- per-chunk overhead, {r.source}: {r.overhead.source}" for r in rows}
    return ["## Wavefront (time chunks C), simulated", "",
            "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER),
            *["| " + " | ".join(r.cells()) + " |" for r in rows], "",
            *sorted(notes), ""]  # fmt: skip
