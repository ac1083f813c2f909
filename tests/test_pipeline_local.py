"""The pipelined path in one process (world size 1): several stages on one rank, looped
schedules, gradient accumulation, the output shape guard, the timeline files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from parallel.placement import Placement, contiguous, gnmt
from parallel.runtime.distenv import DistContext, init_distributed
from parallel.runtime.pipeline import PipelineRunner
from parallel.runtime.stagewrap import ShapeGuardError
from tests.pipeline_helpers import (
    assert_close,
    make_batch,
    make_stages,
    reference_step,
    smoothed_loss_sum,
    toy_stages,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def ctx() -> Iterator[DistContext]:
    c = init_distributed(1, 1, backend="gloo", device="cpu", timeout_s=60)
    yield c
    c.close()


def _runner(
    ctx: DistContext,
    stages: list[nn.Module],
    placement: Placement,
    schedule: str,
    m: int,
    recompute: bool = False,
) -> PipelineRunner:
    return PipelineRunner(
        stages,
        smoothed_loss_sum,
        ctx=ctx,
        placement=placement,
        schedule=schedule,
        microbatches=m,
        recompute=recompute,
    )


def _grads(runner: PipelineRunner) -> dict[str, Tensor]:
    out = {}
    for s, mod in zip(runner.local_stages, runner.local_modules(), strict=True):
        for name, p in mod.named_parameters(remove_duplicate=False):
            assert p.grad is not None, f"{s}.{name}"
            out[f"{s}.{name}"] = p.grad
    return out


N = len(make_stages())
CONFIGS = [
    ("one stage gpipe M=1", contiguous(N, 1), "gpipe", 1, False),
    ("one stage 1f1b M=4", contiguous(N, 1), "1f1b", 4, False),
    (
        "K stages interleaved M=4",
        Placement.from_groups([[s] for s in range(N)], 1),
        "interleaved_1f1b",
        4,
        False,
    ),  # noqa: E501
    (
        "K stages looped_bfs M=2 recompute",
        Placement.from_groups([[s] for s in range(N)], 1),
        "looped_bfs",
        2,
        True,
    ),  # noqa: E501
    ("gnmt on one rank M=2", gnmt(2, 2, 1, N), "interleaved_1f1b", 2, False),
]


@pytest.mark.parametrize(("name", "placement", "schedule", "m", "recompute"), CONFIGS)
def test_world_size_one_matches_single_device(
    ctx: DistContext, name: str, placement: Placement, schedule: str, m: int, recompute: bool
) -> None:
    runner = _runner(ctx, make_stages(seed=1), placement, schedule, m, recompute)
    ref_stages = make_stages(seed=1)
    for shape in ((6, 5, 8), (9, 7, 8), (6, 5, 8)):
        batch = make_batch(*shape, seed=shape[0])
        for mod in runner.local_modules():
            mod.zero_grad(set_to_none=True)
        loss = runner.step(batch.inputs, batch.tgt_out, batch.ntokens)
        ref_loss, ref = reference_step(ref_stages, batch, batch.ntokens)
        assert loss == pytest.approx(ref_loss, rel=1e-5)
        for k, g in _grads(runner).items():
            assert_close(g, ref[k], f"{name} {k}")


def test_gradient_accumulation_and_eval(ctx: DistContext) -> None:
    runner = _runner(ctx, make_stages(seed=2), contiguous(N, 1, [2, N - 2]), "interleaved_1f1b", 2)
    ref_stages = make_stages(seed=2)
    b1, b2 = make_batch(6, 5, 8, seed=1), make_batch(9, 7, 8, seed=2)
    runner.step(b1.inputs, b1.tgt_out, b1.ntokens)
    runner.step(b2.inputs, b2.tgt_out, b2.ntokens)  # no zero_grad: accumulates
    _, g1 = reference_step(ref_stages, b1, b1.ntokens)
    _, g2 = reference_step(ref_stages, b2, b2.ntokens)
    for k, g in _grads(runner).items():
        assert_close(g, g1[k] + g2[k], f"accumulated {k}")
    # forward_only: batch 6 with M=2 -> fine; batch 5 is not divisible -> uses M=1
    for b in (6, 5):
        batch = make_batch(7, 6, b, seed=3)
        val = runner.forward_only(batch.inputs, batch.tgt_out)
        with torch.no_grad():
            x: object = batch.inputs
            for s in ref_stages:
                x = s(*x) if isinstance(x, tuple) else s(x)
        assert isinstance(x, Tensor)
        assert val == pytest.approx(float(smoothed_loss_sum(x, batch.tgt_out)), rel=1e-5)


class _Trim(nn.Module):
    """Stage whose output length depends on the data (max src_len): not pipelinable."""

    def forward(self, h: Tensor, src_len: Tensor, emb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return h[: int(src_len.max())].contiguous(), src_len, emb


def test_output_shape_guard(ctx: DistContext) -> None:
    stages = toy_stages()
    stages.insert(1, _Trim())  # between Embed+Enc1 and Enc2 (Enc2 takes 2H, Trim keeps it)
    placement = Placement.from_groups([[s] for s in range(len(stages))], 1)
    runner = _runner(ctx, stages, placement, "looped_bfs", 1)
    batch = make_batch(6, 5, 4, seed=0)
    batch.src_len[0] = 6  # longest source fills Ts
    # The stage's output shape follows the data, not the bucket: the guard must catch it at
    # the latest on the step whose data shrinks it (where torch infers the stage's output
    # meta data from can make it catch the very first step already).
    with pytest.raises(ShapeGuardError, match="built for"):
        runner.step(batch.inputs, batch.tgt_out, batch.ntokens)
        batch.src_len[:] = 3
        runner.step(batch.inputs, batch.tgt_out, batch.ntokens)


def test_timeline_files(ctx: DistContext, tmp_path: Path) -> None:
    placement = Placement.from_groups([[0, 1], [2], [3, 4]], 1)
    runner = _runner(ctx, make_stages(), placement, "looped_bfs", 4)
    runner.timeline.enable()
    for i in range(2):
        b = make_batch(6, 5, 8, seed=i)
        runner.step(b.inputs, b.tgt_out, b.ntokens)
    summary = runner.write_timeline(tmp_path)
    assert summary is not None and summary.steps == 2
    assert summary.theory_bubble_fraction == 0.0  # one rank: no bubble in theory
    assert 0.0 < summary.busy_fraction[0] <= 1.0
    assert set(summary.stage_busy_ms) == {0, 1, 2}
    doc = json.loads((tmp_path / "timeline.json").read_text())
    names = {e["name"] for e in doc["traceEvents"] if e.get("ph") == "X"}
    assert {"F0", "F3", "B0", "B3"} <= names
    assert doc["otherData"]["microbatches"] == 4
    assert (tmp_path / "timeline.png").stat().st_size > 1000
