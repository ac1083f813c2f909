"""Pipelined runs you can trust, through nmt-train: dp batches, bf16, non-finite steps,
placements that cannot apply, weights-only resume.

References: every dp replica trains on its own batch, so dp=2 (x pp=1 or pp=2) must equal one
device that accumulates the same two batches per step (``train.accumulate=2``), replica r
training the r-th batch's tokens (recorded inside the ranks: ``tests/rank_hooks.py``);
pipelined bf16 must equal single-device bf16 within a tolerance that pipelined fp32 exceeds
(skipped where torch has no bf16 LSTM); a NaN gradient on one rank makes every rank skip the
step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from nmt.checkpoint import files as ckpt_io
from nmt.errors import user_error_types
from nmt.machine.capability import bf16_lstm_runs
from nmt.train.run import train
from nmt.train.setup import INJECT_ENV
from nmt.train.trainer import Trainer
from tests.rank_hooks import run_hooked

# constant lr, so every difference comes from the batches and the arithmetic
FLAT = ("train.warmup_steps=0", "train.decay_steps=0", "parallel.timeout_s=60")
STEPS = 6
# pipelined vs single-device bf16 losses: micro-batches round differently (7e-6 measured);
# bf16 vs fp32 differ by 3e-4 (AMX Xeon, torch 2.13)
BF16_REL = 4e-5


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


class Runs:
    """The module's tiny nmt-train runs by name, each trained once (``runs(name, *overrides)``
    -> its out dir); ``args`` are the overrides such a run is composed from."""

    def __init__(self, corpus: dict[str, Path], tmp: Path) -> None:
        self.corpus, self.tmp = corpus, tmp
        self.done: dict[str, Path] = {}

    def args(self, name: str, *extra: str) -> list[str]:
        from tests.conftest import tiny_overrides

        base = tiny_overrides(self.corpus, self.tmp / "cache", self.tmp / name)
        keys = {x.split("=")[0] for x in extra}
        defaults = [x for x in (f"train.max_steps={STEPS}", *FLAT) if x.split("=")[0] not in keys]
        return base + defaults + list(extra)

    def __call__(self, name: str, *extra: str) -> Path:
        from nmt.config import compose_config

        if name not in self.done:
            train(compose_config(self.args(name, *extra)))
            self.done[name] = self.tmp / name
        return self.done[name]


@pytest.fixture(scope="module")
def run(tiny_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(tiny_corpus, tmp_path_factory.mktemp("dp"))


def test_dp2_trains_each_replica_on_its_own_batch(
    run: Runs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dp=2 x pp=1 == one device accumulating both batches: replica r trained, step by step,
    on as many target tokens as the r-th batch of the one device's step."""
    batches: list[list[int]] = []  # per step of the one device: each batch's target tokens
    one_device = Trainer.train_step

    def train_step(self: Trainer, batch: Any) -> tuple[float, float]:
        batches.append([b.ntokens for b in batch])
        return one_device(self, batch)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    accum = run("accum2", "train.accumulate=2")
    monkeypatch.undo()
    record = run.tmp / "dp2_tokens"
    done = run_hooked("tokens", str(record), 2, run.args("dp2", "parallel.dp=2"))
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads(Path(f"{record}.rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["dp_rank"] for r in ranks] == [0, 1] and len(batches) == STEPS
    assert [r["tokens"] for r in ranks] == [[b[i] for b in batches] for i in (0, 1)]
    assert ranks[0]["tokens"] != ranks[1]["tokens"]  # so a shared batch would show
    dp = run.tmp / "dp2"
    assert_same_run(accum, dp)
    shards = sorted(p.name for p in (dp / "checkpoints" / "shards").glob("step_*"))
    assert shards == [f"step_{STEPS:08d}.pp0.dp{d}.pt" for d in (0, 1)]


def test_dp2_pp2_equals_one_device_with_both_batches(run: Runs) -> None:
    accum = run("accum2_m2", "train.accumulate=2", "parallel.microbatches=2")
    both = run("dp2pp2", "parallel=pipe2", "parallel.dp=2", "parallel.microbatches=2")
    assert_same_run(accum, both)


def max_rel(a: Path, b: Path) -> float:
    """The largest relative difference between two runs' loss curves."""
    return max(abs(x - y) / abs(y) for x, y in zip(curve(a, "loss"), curve(b, "loss"), strict=True))


def test_bf16_pipelined_equals_bf16_single_device(run: Runs) -> None:
    if not bf16_lstm_runs():
        pytest.skip("this CPU's torch has no bf16 LSTM kernel (needs AVX512-BF16 or AMX)")
    m2 = "parallel.microbatches=2"
    fp32_pipe = run("fp32_pipe", "parallel=pipe2", m2)
    single = run("bf16", "train.precision=bf16", m2)
    pipe = run("bf16_pipe", "train.precision=bf16", "parallel=pipe2", m2)
    # the pipelined run computes single-device bf16 arithmetic, micro-batch by micro-batch ...
    assert max_rel(pipe, single) <= BF16_REL
    # ... which the tolerance tells apart from fp32: a pipeline that ignored bf16 fails
    assert max_rel(pipe, fp32_pipe) > 2 * BF16_REL
    assert all(torch.isfinite(w).all() for w in weights(pipe).values())


def test_fp16_or_accumulate_in_pipelined_runs_is_refused(tiny_cfg: Any) -> None:
    for bad, key in (("train.precision=fp16", "fp16"), ("train.accumulate=2", "accumulate")):
        cfg = tiny_cfg("parallel=pipe2", bad, "train.max_steps=1")
        with pytest.raises(user_error_types(), match=key):
            train(cfg)


def test_nan_on_one_rank_skips_the_step_on_every_rank(
    run: Runs, monkeypatch: pytest.MonkeyPatch
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


def test_weights_only_resume_goes_on_with_the_schedule(run: Runs, tiny_cfg: Any) -> None:
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
