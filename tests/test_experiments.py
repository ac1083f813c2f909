"""Recipes for bigger machines (conf/experiment/): they compose, their placements resolve, and
they start (a few steps on the tiny stand-in corpus, scaled down to CPU size)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nmt.config import compose_config
from nmt.train.placement import resolve_placement
from nmt.train.run import train

RECIPES = {"gnmt4_wmt16": ("wmt16_de_en", "gnmt4", 4), "gnmt8_wmt14": ("wmt14_de_en", "gnmt8", 8)}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_composes_and_its_placement_resolves(name: str) -> None:
    cfg = compose_config([f"experiment={name}"])
    data, model, pp = RECIPES[name]
    assert (cfg.data.name, cfg.model.name, cfg.parallel.pp) == (data, model, pp)
    assert cfg.data.source == "hub" and cfg.train.precision == "bf16"
    placement, schedule, m = resolve_placement(cfg)
    assert placement.pp == pp and m >= pp and schedule in ("1f1b", "interleaved_1f1b")


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_starts_on_a_stand_in_corpus(name: str, tiny_cfg: Any) -> None:
    cfg = tiny_cfg(f"experiment={name}", "parallel=none", "model.hidden=16", "train.max_steps=3",
                   "train.max_epochs=0", "train.eval_every=0", "train.precision=fp32",
                   "data.batch_tokens=256", out=name)  # fmt: skip
    result = train(cfg)
    assert result["step"] == 3
    assert (Path(cfg.train.out_dir) / "checkpoints" / "last.pt").is_file()
