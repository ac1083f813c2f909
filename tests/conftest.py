"""Shared fixtures: a tiny synthetic en-de corpus and composed tiny configs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from data.synthetic import write_corpus


@pytest.fixture(scope="session", autouse=True)
def calibration_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Calibrated choices (``nmt.machine.calibrate``) go to a file of this session, not the user's
    cache; subprocesses inherit the variable, so every command of the session agrees."""
    path = tmp_path_factory.mktemp("calibration") / "calibration.json"
    os.environ["PIPENMT_CALIBRATION"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("corpus")
    return write_corpus(folder, {"train": 600, "dev": 40, "test": 40})


def tiny_overrides(corpus: dict[str, Path], cache: Path, out_dir: Path) -> list[str]:
    return [
        "data=files",
        f"data.train={corpus['train']}",
        f"data.dev={corpus['dev']}",
        f"data.test={corpus['test']}",
        "data.vocab_size=60",
        f"data.cache_dir={cache}",
        "data.batch_tokens=256",
        "model=gnmt_tiny",
        "model.hidden=16",
        "model.enc_layers=2",
        "model.dec_layers=2",
        "train.threads=1",
        "train.precision=fp32",  # the reference arithmetic (auto is measured: test_calibrate)
        "train.log_every=1",
        "train.eval_every=0",
        "train.lr=0.01",
        f"train.out_dir={out_dir}",
    ]


@pytest.fixture
def tiny_cfg(tiny_corpus: dict[str, Path], tmp_path: Path) -> Any:
    """A composer: ``tiny_cfg(*overrides)`` -> DictConfig for a tiny run in ``tmp_path``."""
    from nmt.config import compose_config

    def make(*extra: str, out: str = "run") -> Any:
        base = tiny_overrides(tiny_corpus, tmp_path / "cache", tmp_path / out)
        return compose_config(base + list(extra))

    return make
