"""The learning-rate schedule knows the run's budget (steps, epochs or minutes; the first to
end), resumes exactly when bounded by steps or epochs, and reaches nmt-train runs."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import nmt.train.loop as train_mod
from nmt.checkpoint import files as ckpt_io
from nmt.errors import UserError
from nmt.train.run import train
from nmt.train.schedule import Schedule, schedule_from_config
from tests.conftest import tiny_overrides
from tests.test_cli import cli

FINAL = 0.5**4  # default decay_factor ** decay_steps


def records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x]


def lrs(out: Path) -> list[float]:
    return [r["lr"] for r in records(out) if "lr" in r]


def tc(**kw: Any) -> SimpleNamespace:
    base = {"warmup_steps": 0, "decay": "step", "decay_start": 0.5, "decay_steps": 4,
            "decay_factor": 0.5, "max_steps": 0, "max_epochs": 0, "max_minutes": 0.0}  # fmt: skip
    return SimpleNamespace(**(base | kw))


# ---------------------------------------------------------------------- the factor itself
def test_warmup_is_linear_and_capped_at_a_tenth_of_the_run() -> None:
    s = Schedule(warmup_steps=100, decay_steps=0)
    assert [s.factor(i) for i in (0, 49, 99, 100, 5000)] == [0.01, 0.5, 1.0, 1.0, 1.0]
    short = Schedule(warmup_steps=100, max_steps=200, decay_steps=0)  # cap: 20 steps
    assert short.warmup == 20 and short.factor(9) == 0.5 and short.factor(19) == 1.0
    assert Schedule(warmup_steps=100, max_steps=9).warmup == 0  # too short to warm up
    # minute-bounded: warm-up is complete by 10% of the budget, whatever warmup_steps says
    timed = Schedule(warmup_steps=1000, decay_steps=0, budget_s=100.0)
    assert timed.factor(0, seconds=0.0) == 0.001
    assert timed.factor(4, seconds=5.0) == pytest.approx(0.5)
    assert timed.factor(4, seconds=10.0) == 1.0


@pytest.mark.parametrize(
    ("bound", "at"),
    [
        ({"max_steps": 400}, lambda p: {"step": round(400 * p)}),
        ({"epoch_steps": 400}, lambda p: {"step": round(400 * p)}),
        ({"budget_s": 400.0}, lambda p: {"step": 7, "seconds": 400.0 * p}),
    ],
    ids=["steps", "epochs", "minutes"],
)
def test_step_decay_points_for_each_bound(bound: dict[str, Any], at: Any) -> None:
    s = Schedule(decay_start=0.5, **bound)  # halvings at 50%, 62.5%, 75%, 87.5% of the run
    expected = {0.0: 1, 0.4975: 1, 0.5: 0.5, 0.6225: 0.5, 0.625: 0.25, 0.75: 0.125,
                0.875: FINAL, 0.9975: FINAL, 1.0: FINAL, 1.5: FINAL}  # fmt: skip
    assert {p: s.factor(**at(p)) for p in expected} == expected


def test_progress_is_the_largest_fraction() -> None:
    s = Schedule(decay_start=0.5, max_steps=1000, epoch_steps=800, budget_s=100.0)
    assert s.total_steps == 800 and s.progress(100, 10.0) == 0.125
    assert s.progress(100, 50.0) == 0.5  # the clock ends the run first
    assert s.progress(600, 10.0) == 0.75  # the epochs end it first
    assert s.factor(100, 49.9) == 1.0 and s.factor(100, 50.0) == 0.5
    assert s.progress(5, 1e9) == 1.0 and Schedule().progress(10**6, 1e9) is None


def test_epoch_bound_counts_steps_from_the_batcher_and_replicas() -> None:
    assert schedule_from_config(tc(max_epochs=3), 101).epoch_steps == 303
    assert schedule_from_config(tc(max_epochs=3), 101, batches_per_step=2).epoch_steps == 152
    s = schedule_from_config(tc(max_epochs=2, max_steps=150, max_minutes=0.5), 100)
    assert (s.max_steps, s.epoch_steps, s.budget_s, s.total_steps) == (150, 200, 30.0, 150)


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_smooth_decays_share_start_and_end_with_step(decay: str) -> None:
    s = Schedule(decay=decay, decay_start=0.5, max_steps=1000)
    f = [s.factor(i) for i in range(1001)]
    assert f[:501] == [1.0] * 501 and f[1000] == pytest.approx(FINAL)
    assert all(b <= a for a, b in zip(f, f[1:], strict=False))  # never rises
    assert f[750] == pytest.approx((1 + FINAL) / 2)  # the two meet half way through the decay
    quarter = 0.5 * (1 + math.cos(math.pi / 4)) if decay == "cosine" else 0.75
    assert f[625] == pytest.approx(FINAL + (1 - FINAL) * quarter)


def test_inverse_sqrt_none_and_disabled_decay() -> None:
    inv = Schedule(decay="inverse_sqrt", warmup_steps=100)  # needs no bound
    assert inv.factor(49) == 0.5 and inv.factor(99) == 1.0 and inv.factor(399) == 0.5
    assert Schedule(decay="none", max_steps=100).factor(99) == 1.0
    assert Schedule(decay_steps=0, max_steps=100).factor(99) == 1.0
    assert Schedule(max_steps=0).factor(10**6) == 1.0  # unbounded: nothing to decay over


def test_bad_schedule_settings_are_one_line_user_errors(tiny_cfg: Any) -> None:
    with pytest.raises(UserError, match=r"^train.decay='cosin': expected step, cosine, linear"):
        Schedule(decay="cosin")
    with pytest.raises(UserError, match=r"train.decay_start=1.5 must be in \[0, 1\]"):
        Schedule(decay_start=1.5)
    with pytest.raises(UserError, match="train.decay='nope'"):  # before any data preparation
        train(tiny_cfg("train.decay=nope", "data.train=/does/not/exist"))


# ---------------------------------------------------------------------- through training
def test_epoch_bounded_run_decays_and_resumes_bitwise(
    tiny_cfg: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = ("train.max_epochs=1", "train.warmup_steps=5",
             "train.save_every=100", "model.dropout=0.3")  # fmt: skip
    straight = tiny_cfg(*extra, out="straight")
    result = train(straight)
    steps = result["step"]
    a = Path(straight.train.out_dir)
    lr = lrs(a)
    assert result["stop"] == "max_epochs=1" and len(lr) == steps >= 10
    assert lr[-1] == pytest.approx(0.01 * FINAL)  # the schedule saw the whole epoch coming
    assert lr[0] < 0.01 and 0.01 in lr  # warmed up (cap: steps // 10), then decayed

    halted = tiny_cfg(*extra, "train.resume=auto", out="halted")
    real = train_mod.should_stop
    monkeypatch.setattr(
        train_mod, "should_stop", lambda t, s: "halt" if t.step == 7 else real(t, s)
    )
    assert train(halted)["step"] == 7
    monkeypatch.setattr(train_mod, "should_stop", real)
    assert train(halted)["step"] == steps
    b = Path(halted.train.out_dir)
    assert lrs(b) == lr
    assert [r["loss"] for r in records(a) if "loss" in r] == [
        r["loss"] for r in records(b) if "loss" in r
    ]
    wa = ckpt_io.load(a / "checkpoints" / "last.pt")["model"]
    wb = ckpt_io.load(b / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


class FakeClock:
    """A clock that moves one second each time it is read (a deterministic time budget)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_minute_bounded_run_decays_and_resume_keeps_its_progress(
    tiny_cfg: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(train_mod, "clock", FakeClock())
    extra = ("train.max_minutes=1", "train.warmup_steps=0", "train.save_every=5")
    cfg = tiny_cfg(*extra)
    result = train(cfg)
    out = Path(cfg.train.out_dir)
    lr = lrs(out)
    assert result["stop"] == "max_minutes=1.0" and result["minutes"] == pytest.approx(1, abs=0.1)
    assert lr[0] == 0.01 and lr[-1] == pytest.approx(0.01 * FINAL)
    assert all(b <= a for a, b in zip(lr, lr[1:], strict=False)) and len(set(lr)) == 5
    walls = [r["wall_s"] for r in records(out) if "lr" in r]
    first_cut = walls[next(i for i, x in enumerate(lr) if x < 0.01)]
    assert 0.6 * 60 <= first_cut <= 0.75 * 60  # decay starts at 2/3 of the budget

    # A resumed run goes on from the training seconds saved in its checkpoint.
    resumed = tiny_cfg("train.max_minutes=2", "train.warmup_steps=0", "train.resume=auto")
    again = train(resumed)
    lr2 = lrs(out)[len(lr) :]  # the checkpoint of the stop, then the resumed steps
    assert again["minutes"] == pytest.approx(2, abs=0.1)
    assert lr2[0] == 0.01  # 1 of 2 minutes done: back before the decay of the longer budget
    assert lr2[-1] == pytest.approx(0.01 * FINAL)


def test_minute_bounded_nmt_train_decays_before_the_end(
    tiny_corpus: dict[str, Path], tmp_path: Path
) -> None:
    """The real clock, the real command: a 3-second budget ends with a decayed lr."""
    args = tiny_overrides(tiny_corpus, tmp_path / "cache", tmp_path / "run")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = cli("train_main", *args, "train.max_minutes=0.05", "train.warmup_steps=0", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "stopped: max_minutes=0.05" in r.stderr
    lr = lrs(tmp_path / "run")
    assert lr[0] == 0.01 and min(lr) <= 0.005 and lr == sorted(lr, reverse=True)


def test_resume_with_a_new_lr_uses_it(tiny_cfg: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """A continuation with another ``train.lr`` trains at that rate (the scheduler state in
    the checkpoint carries the old base rate) and says so."""
    flat = ("train.warmup_steps=0", "train.decay_steps=0", "train.save_every=4")
    train(tiny_cfg("train.max_steps=4", *flat, out="run"))
    assert lrs(Path(tiny_cfg(out="run").train.out_dir)) == [0.01] * 4
    cont = tiny_cfg("train.max_steps=6", "train.lr=0.004", "train.resume=auto", *flat, out="run")
    capsys.readouterr()
    train(cont)
    assert "train.lr=0.004 replaces the resumed run's 0.01" in capsys.readouterr().err
    assert lrs(Path(cont.train.out_dir)) == [0.01] * 4 + [pytest.approx(0.004)] * 2
