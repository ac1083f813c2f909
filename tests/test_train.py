"""Training: the loss falls, resume is exact, bad checkpoints are refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import nmt.train.loop as train_mod
from nmt.checkpoint import files as ckpt_io
from nmt.errors import UserError
from nmt.train.run import train


def losses(out_dir: Path) -> list[tuple[int, float]]:
    recs = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in recs if "loss" in r]


def test_loss_falls_and_run_folder_complete(tiny_cfg: Any) -> None:
    # From NVIDIA's uniform init (ln V at step 0) the loss must fall; with the default prior
    # bias the tiny model starts at the unigram loss already (tests/test_prior.py).
    cfg = tiny_cfg(
        "train.max_steps=40",
        "train.eval_every=20",
        "data.max_dev_sentences=10",
        "model.output_bias=uniform",
    )
    result = train(cfg)
    out = Path(cfg.train.out_dir)
    ls = [loss for _, loss in losses(out)]
    assert result["step"] == 40 and len(ls) == 40
    assert sum(ls[-5:]) / 5 < 0.9 * sum(ls[:5]) / 5
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in recs if "val_loss" in r]
    assert [r["step"] for r in vals] == [20, 40] and all("val_bleu" in r for r in vals)
    assert {"step", "loss", "tokens", "tok_per_s", "lr", "wall_s"} <= set(recs[0])
    assert (out / "loss.png").stat().st_size > 0
    for name in ("last.pt", "best.pt", "step_00000040.pt"):
        assert (out / "checkpoints" / name).is_file()
    ck = ckpt_io.load(out / "checkpoints" / "last.pt")
    assert ck["step"] == 40 and ck["config"]["model"]["hidden"] == 16


def test_resume_is_bitwise_exact(tiny_cfg: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    extra = ("train.max_steps=8", "model.dropout=0.3", "train.save_every=100")
    straight = tiny_cfg(*extra, out="straight")
    train(straight)

    halted = tiny_cfg(*extra, "train.resume=auto", out="halted")
    real_should_stop = train_mod.should_stop
    monkeypatch.setattr(
        train_mod, "should_stop", lambda t, s: "halt" if t.step == 4 else real_should_stop(t, s)
    )
    assert train(halted)["step"] == 4  # interrupted at step 4 (checkpoint written)
    monkeypatch.setattr(train_mod, "should_stop", real_should_stop)
    assert train(halted)["step"] == 8  # resumed from last.pt

    a, b = Path(straight.train.out_dir), Path(halted.train.out_dir)
    assert losses(a) == losses(b)  # bitwise-equal floats, steps 1..8
    wa = ckpt_io.load(a / "checkpoints" / "last.pt")["model"]
    wb = ckpt_io.load(b / "checkpoints" / "last.pt")["model"]
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_bad_checkpoints_are_refused(tiny_cfg: Any, tmp_path: Path) -> None:
    cfg = tiny_cfg("train.max_steps=2")
    train(cfg)
    last = Path(cfg.train.out_dir) / "checkpoints" / "last.pt"
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(UserError, match="truncated or corrupted"):
        ckpt_io.load(truncated)
    with pytest.raises(UserError, match="does not exist"):
        ckpt_io.load(tmp_path / "missing.pt")

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": 1, "model": Evil()}, evil)
    with pytest.raises(UserError, match="refused"):
        ckpt_io.load(evil)
    wider = tiny_cfg("train.max_steps=4", f"train.resume={last}", "model.hidden=24", out="other")
    with pytest.raises(UserError, match="model.hidden: 16 vs 24"):
        train(wider)


@pytest.mark.parametrize(
    ("override", "needle"),
    [("model.enc_layers=1", "model.enc_layers=1 must be >= 2"),
     ("model.hidden=0", "model.hidden=0 must be >= 1"),
     ("model.dropout=1.5", "model.dropout=1.5 must be in [0, 1)"),
     ("train.precision=fp8", "train.precision='fp8'")],
)  # fmt: skip
def test_impossible_model_or_precision_is_a_user_error(
    tiny_cfg: Any, override: str, needle: str
) -> None:
    with pytest.raises(UserError, match=__import__("re").escape(needle)):
        train(tiny_cfg("train.max_steps=1", override))
