"""Config tree and command-line behaviour (composition, one-line user errors, exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nmt.config import compose_config

CONF = Path(__file__).resolve().parent.parent / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["data", "model", "parallel", "train", "decode"])
def test_every_option_composes(group: str) -> None:
    for name in options(group):
        cfg = compose_config([f"{group}={name}"])
        assert getattr(cfg, group) is not None
    assert options(group), f"conf/{group} has no options"


def test_defaults_and_stable_keys() -> None:
    cfg = compose_config()
    assert (cfg.data.name, cfg.model.name, cfg.parallel.name) == (
        "debian_de_en",
        "gnmt_small",
        "none",
    )
    for key in (
        "seed",
        "max_steps",
        "max_epochs",
        "max_minutes",
        "log_every",
        "eval_every",
        "resume",
    ):
        assert hasattr(cfg.train, key)
    assert hasattr(cfg.model, "dropout") and hasattr(cfg.data, "batch_tokens")
    assert compose_config(["model=gnmt8"]).model.enc_layers == 8


def cli(
    entry: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    code = f"import sys; from nmt.cli import {entry}; sys.argv[0] = '{entry}'; {entry}()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, env=env
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["train.max_stepz=5"], "train.max_stepz"),
        (["train.max_steps=abc"], "train.max_steps=abc"),
        (["model=gnmt9"], "model/gnmt9"),
        (["data=nope"], "data/nope"),
        (["parallel=pipe3"], "parallel/pipe3"),
    ],
)
def test_config_mistakes_fail_with_one_line(args: list[str], needle: str) -> None:
    r = cli("train_main", *args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("nmt-train: error:")


def test_prepare_files_offline(tiny_corpus: dict[str, Path], tmp_path: Path) -> None:
    args = [
        "data=files",
        f"data.train={tiny_corpus['train']}",
        f"data.dev={tiny_corpus['dev']}",
        f"data.test={tiny_corpus['test']}",
        "data.vocab_size=60",
        f"data.cache_dir={tmp_path}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    first = cli("prepare_main", *args, env=env)
    assert first.returncode == 0, first.stderr
    assert "trained" in first.stdout and '"pairs": {"train": ' in first.stdout
    second = cli("prepare_main", *args, env=env)
    assert "reused" in second.stdout
    assert len(list((tmp_path / "spm").glob("*.model"))) == 1


def test_prepare_debian_without_apt_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    r = cli("prepare_main", "data=debian_de_en", f"data.cache_dir={tmp_path}", env=env)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "nmt-prepare: error: 'apt-get' not found: building the Debian corpus needs a Debian/Ubuntu "
        "system with apt (or use the shipped corpus: data=debian_de_en)"
    ]
    assert not list(tmp_path.rglob("*.tsv.gz"))


def test_prepare_mismatched_files_and_missing_file(
    tiny_corpus: dict[str, Path], tmp_path: Path
) -> None:
    r = cli(
        "prepare_main",
        "data=files",
        f"data.train={tmp_path / 'missing.tsv'}",
        f"data.dev={tiny_corpus['dev']}",
        f"data.test={tiny_corpus['test']}",
        f"data.cache_dir={tmp_path}",
    )
    assert (
        r.returncode == 2 and "missing.tsv" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    )


def test_prepare_parallel_text_files_with_different_line_counts(
    tiny_corpus: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "train.en").write_text("one\ntwo\nthree\n")
    (tmp_path / "train.de").write_text("eins\nzwei\n")
    r = cli("prepare_main", "data=files", f"data.train={tmp_path / 'train'}",
            f"data.dev={tiny_corpus['dev']}", f"data.test={tiny_corpus['test']}",
            f"data.cache_dir={tmp_path / 'cache'}")  # fmt: skip
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert "train.en" in line and "train.de" in line and "3" in line and "2" in line
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("*.model"))
