"""``nmt-average``: the element-wise mean of a run's checkpoints, loadable like any checkpoint;
checkpoints of another model are refused with one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from nmt.checkpoint import files as ckpt_io
from nmt.decode.inference import load_for_inference
from nmt.release import average
from nmt.train.run import train


def test_average_is_the_mean_and_translates(
    tiny_cfg: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tiny_cfg("train.max_steps=3", "train.save_every=1", "train.keep_last=3")
    train(cfg)
    folder = Path(cfg.train.out_dir) / "checkpoints"
    paths = [ckpt_io.step_file(folder, s) for s in (1, 2, 3)]
    out = tmp_path / "avg.pt"
    assert average.main([*map(str, paths), "--out", str(out)]) == 0
    avg = ckpt_io.load(out)
    weights = [ckpt_io.load(p)["model"] for p in paths]
    for k, v in avg["model"].items():
        torch.testing.assert_close(v, (weights[0][k] + weights[1][k] + weights[2][k]) / 3)
    assert avg["step"] == 3 and avg["averaged"] == [str(p) for p in paths]
    assert not torch.equal(
        avg["model"]["stages.0.embedding.weight"], weights[2]["stages.0.embedding.weight"]
    )
    model, _ = load_for_inference(str(out), "none")  # loads like any checkpoint
    assert sum(p.numel() for p in model.parameters()) > 0

    other = tiny_cfg("train.max_steps=1", "model.hidden=8", out="other")
    train(other)
    capsys.readouterr()
    bad = Path(other.train.out_dir) / "checkpoints" / "last.pt"
    assert average.main([str(paths[0]), str(bad), "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nmt-average: error: ")
    assert "does not fit this config (model.hidden: 8 vs 16)" in err[0]
    assert not (tmp_path / "x.pt").exists()
