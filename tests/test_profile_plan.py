"""Profiler -> planner -> ``parallel=auto`` training, and the engine's op order vs the
simulator's."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from parallel.errors import PlacementError
from parallel.planning.costs import load_cost_tables
from parallel.planning.links import LINK_PRESETS
from parallel.planning.plan import SearchSpace, make_plan, save_plan, search
from parallel.planning.profile import profile_stages
from parallel.planning.simulate import simulate
from parallel.schedules import schedule_orders

pytestmark = pytest.mark.timeout(180)


# ----------------------------------------------------------------------------- generic profiler


class _Lin(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: Tensor, n: Tensor) -> tuple[Tensor, Tensor]:
        return torch.relu(self.lin(x)), n


class _Head(nn.Module):
    def __init__(self, shared: nn.Linear) -> None:
        super().__init__()
        self.weight = shared.weight  # tied with stage 0
        self.bias = nn.Parameter(torch.zeros(4))

    def forward(self, x: Tensor, n: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


def _toy() -> list[nn.Module]:
    torch.manual_seed(0)
    first = _Lin()
    return [first, _Lin(), _Head(first.lin)]


def _mse(out: Tensor, target: Tensor) -> Tensor:
    return ((out - target) ** 2).sum()


def test_profile_stages_bytes_and_times() -> None:
    stages = _toy()
    stages[1].eval()
    x, n, y = torch.randn(8, 4), torch.arange(8), torch.randn(8, 4)
    rng = torch.get_rng_state()
    t = profile_stages(stages, (x, n), y, _mse, micro_batch=4, repeats=2, warmup=1,
                       batch_dims=(0, 0), target_batch_dim=0, model="toy")  # fmt: skip
    assert (t.batch, t.micro_batch, t.num_stages, t.source) == (8, 4, 3, "measured")
    assert t.tied_param_bytes == 64  # the 4x4 weight shared by stage 0 and the head
    assert [s.param_bytes for s in t.stages] == [80, 80, 80]  # tie counted in both
    assert [s.optimizer_bytes for s in t.stages] == [160, 160, 160]
    in_bytes = 4 * 4 * 4 + 4 * 8  # x [4,4] float + n [4] int64
    assert [s.act_bytes_per_mb_recompute for s in t.stages] == [in_bytes] * 3
    # + relu's saved result (the linear saves its input, which is counted once)
    assert t.stages[0].act_bytes_per_mb == in_bytes + 64
    assert t.stages[2].act_bytes_per_mb >= in_bytes
    assert [s.out_bytes_per_mb for s in t.stages] == [in_bytes, in_bytes, 0]
    for s in t.stages:
        assert s.fwd_ms > 0 and s.bwd_ms > 0
        assert s.fwd_floor_ms <= s.fwd_ms and s.bwd_floor_ms <= s.bwd_ms
    # the caller's state is left alone
    assert all(p.grad is None for s in stages for p in s.parameters())
    assert [s.training for s in stages] == [True, False, True]
    assert torch.equal(torch.get_rng_state(), rng)
    with pytest.raises(PlacementError, match="micro_batch=9"):
        profile_stages(stages, (x, n), y, _mse, micro_batch=9, batch_dims=(0, 0))


# ----------------------------------------------------------------------------- nmt-profile


def test_nmt_profile_tiny(tiny_cfg: Any, tmp_path: Path) -> None:
    from nmt.machine.stage_costs import profile_cli

    out = tmp_path / "costs.json"
    cfg = tiny_cfg(f"profile_out={out}", "parallel.microbatches=2")
    profile_cli(cfg)
    tables = load_cost_tables(out)
    assert [(t.src_len, t.tgt_len, t.batch, t.micro_batch) for t in tables] == [
        (16, 16, 16, 8), (32, 32, 8, 4), (48, 48, 8, 4)]  # fmt: skip
    h, v = 16, 60
    t = tables[0]
    assert [s.name for s in t.stages] == ["Embed+Enc1", "Enc2", "Dec1+Attention", "Dec2",
                                          "Generator"]  # fmt: skip
    assert t.tied_param_bytes == 4 * v * h
    b, ts, tt = t.micro_batch, t.src_len, t.tgt_len
    assert t.stages[0].out_bytes_per_mb == 4 * (ts * b * 2 * h + tt * b * h) + 8 * b
    assert t.stages[2].out_bytes_per_mb == 4 * 2 * tt * b * h
    assert "vocab=60" in t.notes and t.model == "gnmt_tiny"
    for s in t.stages:
        assert s.act_bytes_per_mb > s.act_bytes_per_mb_recompute > 0
        assert s.optimizer_bytes == 2 * s.param_bytes


def test_nmt_profile_cli(tmp_path: Path) -> None:
    out = tmp_path / "c.json"
    code = "import sys; from nmt.cli import profile_main as m; sys.argv[0] = 'nmt-profile'; m()"
    args = ["model=gnmt_tiny", "data.vocab_size=100", "data.batch_tokens=512",
            "train.threads=1", f"profile_out={out}"]  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Generator" in r.stdout and len(load_cost_tables(out)) == 3
    bad = subprocess.run([sys.executable, "-c", code, f"profile_out={tmp_path}/no/c.json"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "does not exist" in bad.stderr


# ----------------------------------------------------------------------------- plan -> train


def _engine_orders(timeline: Path, ranks: int) -> list[list[str]]:
    """Per rank, the F/B actions of the first recorded step in start order."""
    events = [e for e in json.loads(timeline.read_text())["traceEvents"] if e.get("ph") == "X"
              and e["name"][0] in "FB" and e["args"]["step"] == 0]  # fmt: skip
    return [[f"{e['tid']}{e['name']}" for e in sorted(events, key=lambda e: e["ts"])
             if e["pid"] == r] for r in range(ranks)]  # fmt: skip


def test_profiled_plan_trains_with_auto_placement(tiny_cfg: Any, tmp_path: Path) -> None:
    """The documented command, `parallel=auto parallel.plan=FILE` without pp: the plan's 2
    ranks train (a timeline with 2 rows in the simulated op order)."""
    from nmt.machine.stage_costs import profile_model
    from nmt.train.run import train

    tables = profile_model(tiny_cfg(), repeats=2, warmup=1)
    link = LINK_PRESETS["pcie"]
    best = search(tables, 2, link, SearchSpace(microbatches=(2, 4), max_stages_per_rank=2)).best
    assert best is not None
    plan_path = tmp_path / "plan.json"
    save_plan(plan_path, make_plan(best, tables, 2, link, method="exact"))
    cfg = tiny_cfg("parallel=auto", f"parallel.plan={plan_path}",
                   "parallel.timeout_s=60", "train.max_steps=4")  # fmt: skip
    train(cfg)
    run = tmp_path / "run"
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if "loss" in r]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    sim = simulate(tables[0], best.placement, best.schedule, best.microbatches, link)
    want = [[str(a) for a in ops] for ops in sim.orders]
    assert _engine_orders(run / "timeline.json", 2) == want, (best, want)


# ----------------------------------------------------------------------------- engine order


@pytest.mark.parametrize(("schedule", "m"), [("looped_bfs", 2), ("interleaved_1f1b", 4)])
def test_one_rank_engine_order_is_the_schedule(schedule: str, m: int) -> None:
    from nmt.models.gnmt import build_stages
    from parallel.placement import Placement
    from parallel.runtime.distenv import init_distributed
    from parallel.runtime.pipeline import PipelineRunner
    from tests.pipeline_helpers import make_batch, smoothed_loss_sum

    torch.manual_seed(0)
    stages = build_stages(40, 8, 2, 2, 0.0, True, 0.1, 0)
    groups = [[0], [1, 2], [3], [4]]
    ctx = init_distributed(1, 1, backend="gloo", device="cpu", timeout_s=60)
    try:
        placement = Placement.from_groups(groups, 1)
        runner = PipelineRunner(stages, smoothed_loss_sum, ctx=ctx, placement=placement,
                                schedule=schedule, microbatches=m)  # fmt: skip
        batch = make_batch(6, 5, 8)
        runner.timeline.enable()
        runner.step(batch.inputs, batch.tgt_out, batch.ntokens)
        got = [f"{e.stage}{e.kind}{e.mb}" for e in runner.timeline.events if e.kind in "FB"]
    finally:
        ctx.close()
    assert got == [str(a) for a in schedule_orders(schedule, 1, m, len(groups))[0]]
