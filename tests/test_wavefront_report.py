"""parallel.planning.wavefront_report: overhead sources and plan_report's wavefront rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parallel.errors import PlacementError
from parallel.planning.costs import analytic_gnmt_costs
from parallel.planning.wavefront_report import (
    launch_estimate,
    load_chunk_overhead,
    markdown,
    wavefront_rows,
)


def write(path: Path, fwd: float, both: float, device: str = "cpu") -> str:
    doc = {"hidden": 64, "batch": 8, "fit": {"fwd_ms": fwd, "bwd_ms": both - fwd,
           "fwd_bwd_ms": both}, "machine": {"device": device, "threads": 1}}  # fmt: skip
    path.write_text(json.dumps(doc))
    return str(path)


def test_overhead_sources(tmp_path: Path) -> None:
    dev, ov = load_chunk_overhead(write(tmp_path / "a.json", 0.5, 2.0))
    assert (dev, ov.fwd_ms, ov.bwd_ms) == ("cpu", 0.5, 1.5) and ov.source.startswith("measured")
    _, neg = load_chunk_overhead(write(tmp_path / "b.json", -0.2, 1.0))
    assert (neg.fwd_ms, neg.bwd_ms) == (0.0, 1.0) and "as >= 0" in neg.source
    est = launch_estimate(10e-6, "GPU X")
    assert (est.fwd_ms, est.bwd_ms) == pytest.approx((0.02, 0.04))
    assert "estimate, not measured on GPU X" in est.source
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(PlacementError, match="cannot read chunk overhead"):
        load_chunk_overhead(tmp_path / "c.json")


def test_rows_pick_the_device_overhead(tmp_path: Path) -> None:
    cpu = analytic_gnmt_costs(2, 64, 500, 8, 8, 8, 8, 1e9, 1e-5, device="cpu-1t")
    gpu = analytic_gnmt_costs(2, 64, 500, 8, 8, 8, 8, 1e12, 1e-5, device="GPU X")
    path = write(tmp_path / "o.json", 0.01, 0.03)
    micro = {("a@cpu-1t", "gnmt2", 2, "nvlink"): 1e9}
    rows = wavefront_rows([("a@cpu-1t", "gnmt2", cpu), ("a@GPU X", "gnmt2", gpu)],
                          {"a@cpu-1t": 1e-5, "a@GPU X": 1e-5}, micro, ["2:2", "4:4"],
                          "nvlink", [path])  # fmt: skip
    assert [(r.source, r.devices) for r in rows] == [("a@cpu-1t", 2), ("a@GPU X", 2)]
    assert rows[0].overhead.source.startswith("measured") and rows[0].micro_ms == 1e9
    assert rows[1].overhead.source.startswith("estimate") and rows[1].micro_ms is None
    for r in rows:
        assert r.speedup > 1 and r.step_ms <= r.single_ms and r.goal is None
        assert r.to_dict()["speedup"] == round(r.single_ms / r.step_ms, 3)
    text = "\n".join(markdown(rows))
    assert text.startswith("## Wavefront") and f"**{rows[0].speedup:.2f}x**" in text
    assert markdown([]) == []
