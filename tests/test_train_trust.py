"""Pipelined runs you can trust, through nmt-train: dp batches, bf16, non-finite steps,
placements that cannot apply, weights-only resume.

References: every dp replica trains on its own batch, so dp=2 (x pp=1 or pp=2) must equal one
device that accumulates the same two batches per step (``train.accumulate=2``); pipelined bf16
must equal single-device bf16 (and differ from fp32); a NaN gradient on one rank makes every
rank skip the step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from nmt import checkpoint as ckpt_io
from nmt.errors import user_error_types
from nmt.train import train
from nmt.trainer import INJECT_ENV

# constant lr, so every difference comes from the batches and the arithmetic
FLAT = ("train.warmup_steps=0", "train.decay_steps=0", "parallel.timeout_s=60")
STEPS = 6


def records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def curve(out: Path, key: str) -> list[float]:
    return [r[key] for r in records(out) if "loss" in r]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return ckpt_io.load(out / "checkpoints" / "last.pt")["model"]


def assert_same_run(a: Path, b: Path, rel: float = 1e-5) -> None:
    assert curve(b, "loss") == pytest.approx(curve(a, "loss"), rel=rel)
    assert curve(b, "ppl") == pytest.approx(curve(a, "ppl"), rel=rel)  # nll-based on both
    assert [r["tokens"] for r in records(b) if "loss" in r] == [
        r["tokens"] for r in records(a) if "loss" in r
    ]
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=rel, atol=2e-6, msg=k)


@pytest.fixture(scope="module")
def run(tiny_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    from nmt.config import compose_config
    from tests.conftest import tiny_overrides

    tmp = tmp_path_factory.mktemp("dp")
    done: dict[str, Path] = {}

    def go(name: str, *extra: str) -> Path:
        if name not in done:
            base = tiny_overrides(tiny_corpus, tmp / "cache", tmp / name)
            keys = {x.split("=")[0] for x in extra}
            defaults = [
                x for x in (f"train.max_steps={STEPS}", *FLAT) if x.split("=")[0] not in keys
            ]
            train(compose_config(base + defaults + list(extra)))
            done[name] = tmp / name
        return done[name]

    return go


def test_dp2_trains_each_replica_on_its_own_batch(run: Any) -> None:
    """dp=2 x pp=1 == one device accumulating both batches; not the one-batch run."""
    one = run("accum1")
    accum = run("accum2", "train.accumulate=2")
    dp = run("dp2", "parallel.dp=2")
    assert_same_run(accum, dp)
    # twice the tokens per step of the one-batch run: the replicas did not share a batch
    tok1 = [r["tokens"] for r in records(one) if "loss" in r]
    tok2 = [r["tokens"] for r in records(dp) if "loss" in r]
    assert tok2[0] > 1.5 * tok1[0]
    shards = sorted(p.name for p in (dp / "checkpoints" / "shards").glob("step_*"))
    assert shards == [f"step_{STEPS:08d}.pp0.dp{d}.pt" for d in (0, 1)]


def test_dp2_pp2_equals_one_device_with_both_batches(run: Any) -> None:
    accum = run("accum2_m2", "train.accumulate=2", "parallel.microbatches=2")
    both = run("dp2pp2", "parallel=pipe2", "parallel.dp=2", "parallel.microbatches=2")
    assert_same_run(accum, both)


def test_bf16_pipelined_equals_bf16_single_device(run: Any) -> None:
    fp32 = run("fp32_m2", "parallel.microbatches=2")
    single = run("bf16", "train.precision=bf16", "parallel.microbatches=2")
    pipe = run("bf16_pipe", "train.precision=bf16", "parallel=pipe2", "parallel.microbatches=2")
    # bf16 really is on: its losses differ from fp32 beyond fp32 rounding ...
    assert curve(single, "loss") != pytest.approx(curve(fp32, "loss"), rel=1e-4)
    # ... and the pipelined run computes the same bf16 arithmetic, micro-batch by micro-batch
    assert curve(pipe, "loss") == pytest.approx(curve(single, "loss"), rel=2e-3)
    assert all(torch.isfinite(w).all() for w in weights(pipe).values())


def test_fp16_or_accumulate_in_pipelined_runs_is_refused(tiny_cfg: Any) -> None:
    for bad, key in (("train.precision=fp16", "fp16"), ("train.accumulate=2", "accumulate")):
        cfg = tiny_cfg("parallel=pipe2", bad, "train.max_steps=1")
        with pytest.raises(user_error_types(), match=key):
            train(cfg)


def test_nan_on_one_rank_skips_the_step_on_every_rank(
    run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rank 1 (replica 1) gets NaN gradients at steps 2 and 4: both replicas skip those
    attempts, count them, and end with equal, finite weights."""
    monkeypatch.setenv(INJECT_ENV, "2,4@1")
    out = run("nan", "parallel.dp=2")
    recs = records(out)
    assert [r for r in recs if "skipped_nonfinite" in r] == [
        {"step": 2, "skipped_nonfinite": 1},
        {"step": 4, "skipped_nonfinite": 2},
    ]
    assert [r["step"] for r in recs if "loss" in r] == list(range(1, STEPS + 1))
    shards = [ckpt_io.load(p)["model"] for p in sorted((out / "checkpoints/shards").glob("step_*"))]
    assert all(torch.equal(shards[0][k], shards[1][k]) for k in shards[0])
    assert all(torch.isfinite(w).all() for w in shards[0].values())


def test_nan_every_step_on_one_rank_stops_the_run(
    tiny_cfg: Any, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(INJECT_ENV, "2-@1")
    cfg = tiny_cfg("parallel=pipe2", "train.max_steps=8", "train.max_bad_steps=2", *FLAT)
    with pytest.raises(Exception):  # noqa: B017 - the workers' failure, whatever its type
        train(cfg)
    err = capfd.readouterr().err
    assert "2 non-finite steps in a row at step 2 (train.max_bad_steps=2)" in err


def test_placement_that_cannot_apply_is_refused(tiny_cfg: Any, tmp_path: Path) -> None:
    """parallel=auto takes its ranks from the plan; nothing falls back to one device."""
    from parallel.planning.plan import Plan, save_plan

    plan = tmp_path / "plan.json"  # gnmt_tiny 2+2: 5 stages on 2 ranks
    save_plan(plan, Plan(placement=(0, 0, 1, 1, 1), num_ranks=2, schedule="gpipe", microbatches=2))
    cases = [
        (("parallel.placement=gnmt",), "placement=gnmt needs parallel.pp > 1"),
        (("parallel.balance=[2,3]",), "balance needs parallel.pp > 1"),
        (("parallel=auto",), "needs a plan file"),
        (("parallel=auto", f"parallel.plan={plan}", "parallel.pp=4"), "is for 2 ranks"),
        (
            ("parallel.placement=gnmt", f"parallel.plan={plan}"),
            "applies to parallel.placement=auto",
        ),
        (("parallel=auto", f"parallel.plan={tmp_path / 'none.json'}"), "cannot read plan"),
    ]
    for extra, message in cases:
        with pytest.raises(user_error_types(), match=message):
            train(tiny_cfg(*extra, "train.max_steps=1"))


def test_weights_only_resume_goes_on_with_the_schedule(run: Any, tiny_cfg: Any) -> None:
    """A single-device run resumed from a pipelined run's exported (weights-only) last.pt
    at step 3 of 6 takes the schedule's lr of steps 4-6, not a new warm-up."""
    sched = ("train.warmup_steps=2", "train.decay_steps=2", "train.decay_start=0.5")
    straight = run("sched", *sched)
    pipe = run("sched_pipe3", *sched, "parallel=pipe2", "train.max_steps=3")
    export = pipe / "checkpoints" / "last.pt"
    assert "optimizer" not in ckpt_io.load(export)
    cfg = tiny_cfg(*sched, f"train.max_steps={STEPS}", f"train.resume={export}")
    train(cfg)
    lrs = [r["lr"] for r in records(Path(cfg.train.out_dir)) if "lr" in r]
    assert lrs == [r["lr"] for r in records(straight) if "lr" in r][3:]
