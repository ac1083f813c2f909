"""Sweeps the way users run them: ``nmt-train -m`` (one folder per job, one-line errors, the
best dev BLEU as the objective), then ``python -m scripts.bench sweep`` collects the jobs."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from scripts.bench import sweep as collect
from tests.conftest import tiny_overrides
from tests.test_cli import cli

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def sweep_args(corpus: dict[str, Path], tmp: Path) -> list[str]:
    """The tiny run's overrides, without train.out_dir (each job gets its own folder)."""
    base = tiny_overrides(corpus, tmp / "cache", tmp / "unused")
    return [a for a in base if not a.startswith("train.out_dir=")]


@pytest.fixture(scope="module")
def sweep(tiny_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("sweep")
    r = cli("train_main", "-m", *sweep_args(tiny_corpus, tmp), "model.hidden=16,24",
            "train.max_steps=4", "train.eval_every=2", "data.max_dev_sentences=5",
            f"hydra.sweep.dir={tmp / 'multirun'}", env=ENV)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp / "multirun"


def test_multirun_gives_each_job_its_own_folder(sweep: Path) -> None:
    for job, hidden in (("0", 16), ("1", 24)):
        recs = [json.loads(x) for x in (sweep / job / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in recs if "val_bleu" in r] == [2, 4]
        assert (sweep / job / "checkpoints" / "last.pt").is_file()
        overrides = (sweep / job / ".hydra" / "overrides.yaml").read_text()
        assert f"model.hidden={hidden}" in overrides
    assert (sweep / "multirun.yaml").is_file() and not (sweep / "2").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["model.hidden=16,abc"], "model.hidden=abc"),
        (["model.hiden=16,24"], "did you mean model.hidden?"),
        (["train.out_dir=/tmp/x", "model.hidden=16,24"], "would be shared by every job"),
        (["train.lr=interval(0.001,0.01)"], "needs a search sweeper"),
        (["hydra/sweeper=nope"], "hydra/sweeper/nope"),
    ],
)
def test_multirun_mistakes_fail_with_one_line(args: list[str], needle: str) -> None:
    r = cli("train_main", "-m", *args, env=ENV)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("nmt-train: error:")


def test_optuna_sweeper_composes_when_installed() -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")  # extra: pipenmt[optuna]
    from nmt.config import compose_config

    assert compose_config(["hydra/sweeper=optuna"]).train.max_steps == 0  # the group exists
    r = cli("train_main", "-m", "hydra/sweeper=optuna", "train.lr=interval(1e-4,1e-2)",
            "train.max_stepz=1", env=ENV)  # fmt: skip
    assert r.returncode == 2 and "train.max_stepz" in r.stderr  # still checked before Hydra


def test_train_main_returns_best_dev_bleu_as_the_objective(tiny_cfg: Any) -> None:
    from nmt.cli import _train_main

    value = _train_main(tiny_cfg("train.max_steps=2", "train.eval_every=1",
                                 "data.max_dev_sentences=3"))  # fmt: skip
    assert isinstance(value, float) and 0.0 <= value <= 100.0
    assert math.isnan(_train_main(tiny_cfg("train.max_steps=1", out="no_eval")))


def test_sweep_script_on_a_real_multirun(sweep: Path, tmp_path: Path) -> None:
    report = {"bleu": 12.5, "chrf": 40.0, "lines": 40}
    (sweep / "1" / "checkpoints" / "best.test.beam5.hyp.eval.json").write_text(json.dumps(report))
    out_json, out_png = tmp_path / "sweep.json", tmp_path / "sweep.png"
    assert collect.main([str(sweep), "--json", str(out_json), "--png", str(out_png)]) == 0
    doc = json.loads(out_json.read_text())
    assert {"cpu", "cores", "torch"} <= set(doc["machine"])
    runs = doc["runs"]
    assert [r["recipe"] for r in runs] == ["model.hidden=16", "model.hidden=24"]
    for r in runs:
        assert r["steps"] == 4 and 0 < r["minutes"] < 5
        assert [c["step"] for c in r["dev_curve"]] == [2, 4]
        assert all(0 < c["minutes"] <= r["minutes"] for c in r["dev_curve"])
        assert r["best_dev_bleu"] >= r["final_dev_bleu"] >= 0
    assert runs[0]["test"] is None and runs[1]["test"]["bleu"] == 12.5
    assert 0 < out_png.stat().st_size < 150_000 and out_png.read_bytes()[:4] == b"\x89PNG"


def test_sweep_script_on_hand_made_run_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run folders without Hydra metadata, old validation records without ``wall_s`` (their
    minutes interpolated from the training records), a torn last line, no dev BLEU."""
    a, b = tmp_path / "lr1e-3", tmp_path / "lr2e-3"
    for run, bleus in ((a, [5.0, 9.0, 8.0]), (b, [])):
        run.mkdir()
        lines = []
        for i, step in enumerate((100, 200, 300)):
            lines.append({"step": step, "loss": 3.0, "lr": 1e-3, "tok_per_s": 100,
                          "wall_s": 60.0 * (i + 1)})  # fmt: skip
            lines.append({"step": step + 50, "loss": 2.0, "lr": 1e-3, "wall_s": 60.0 * (i + 1.5)})
            if bleus:
                lines.append({"step": step + 25, "val_loss": 2.5, "val_bleu": bleus[i]})
        text = "".join(json.dumps(x) + "\n" for x in lines)
        (run / "metrics.jsonl").write_text(text + '{"step": 400, "lo')
    out_json, out_png = tmp_path / "o.json", tmp_path / "o.png"
    assert collect.main([str(a), str(b), "--json", str(out_json), "--png", str(out_png)]) == 0
    ra, rb = json.loads(out_json.read_text())["runs"]
    assert (ra["recipe"], ra["steps"], ra["minutes"]) == ("lr1e-3", 350, 3.5)
    assert [c["minutes"] for c in ra["dev_curve"]] == [1.25, 2.25, 3.25]
    assert (ra["final_dev_bleu"], ra["best_dev_bleu"]) == (8.0, 9.0)
    assert rb["dev_curve"] == [] and rb["best_dev_bleu"] is None
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| recipe | steps | minutes |") and len(table) == 4
    assert table[2] == "| `lr1e-3` | 350 | 3.5 | 2.500 | 8.00 | 9.00 | - |"
    assert collect.main([str(tmp_path / "missing")]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert collect.main([str(empty)]) == 2
