"""The engine on one GPU (NCCL, world size 1): skipped without CUDA."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from parallel.placement import Placement, contiguous
from parallel.runtime.distenv import DistContext, init_distributed
from parallel.runtime.pipeline import PipelineRunner
from tests.pipeline_helpers import assert_close, make_batch, make_stages, smoothed_loss_sum

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.timeout(300),
]


@pytest.fixture(scope="module")
def ctx() -> Iterator[DistContext]:
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    c = init_distributed(1, 1, backend="nccl", device="cuda", timeout_s=60)
    yield c
    c.close()


def _reference(
    stages: list[nn.Module], batch: object, dev: torch.device
) -> tuple[float, dict[str, torch.Tensor]]:
    x: object = tuple(t.to(dev) for t in batch.inputs)  # type: ignore[attr-defined]
    for s in stages:
        s.zero_grad(set_to_none=True)
        x = s(*x) if isinstance(x, tuple) else s(x)
    loss = smoothed_loss_sum(x, batch.tgt_out.to(dev)) / batch.ntokens  # type: ignore[arg-type,attr-defined]
    loss.backward()
    grads = {
        f"{i}.{n}": p.grad.detach().clone()
        for i, s in enumerate(stages)
        for n, p in s.named_parameters(remove_duplicate=False)
        if p.grad is not None
    }
    return loss.item(), grads


@pytest.mark.parametrize(
    ("placement", "schedule", "m"),
    [
        (contiguous(len(make_stages()), 1), "gpipe", 1),
        (contiguous(len(make_stages()), 1), "1f1b", 4),
        (Placement.from_groups([[0, 1], [2], [3, 4]], 1), "interleaved_1f1b", 2),
    ],
)
def test_gpu_matches_single_device(
    ctx: DistContext, placement: Placement, schedule: str, m: int, tmp_path: Path
) -> None:
    dev = ctx.device
    runner = PipelineRunner(
        make_stages(seed=1),
        smoothed_loss_sum,
        ctx=ctx,
        placement=placement,
        schedule=schedule,
        microbatches=m,
    )
    ref_stages = [s.to(dev) for s in make_stages(seed=1)]
    runner.timeline.enable()
    for shape in ((6, 5, 8), (9, 7, 8)):
        batch = make_batch(*shape)
        for mod in runner.local_modules():
            mod.zero_grad(set_to_none=True)
        loss = runner.step(batch.inputs, batch.tgt_out, batch.ntokens)
        ref_loss, ref = _reference(ref_stages, batch, dev)
        assert loss == pytest.approx(ref_loss, rel=1e-4)
        for s, mod in zip(runner.local_stages, runner.local_modules(), strict=True):
            for name, p in mod.named_parameters(remove_duplicate=False):
                assert p.grad is not None and p.grad.device.type == "cuda"
                assert_close(p.grad, ref[f"{s}.{name}"], f"{s}.{name}", rel=1e-4, atol=1e-6)
    runner.clip_grad_norm_(1.0)
    summary = runner.write_timeline(tmp_path)
    assert summary is not None and summary.steps == 2
    doc = json.loads((tmp_path / "timeline.json").read_text())
    assert any(e.get("name") == "B0" for e in doc["traceEvents"])
    full = runner.full_state_dict()
    assert full is not None and all(v.device.type == "cpu" for v in full.values())
