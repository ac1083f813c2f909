"""nmt-train with parallel.pp=2: equals single-device training, resumes exactly, exports a
checkpoint that translates like the model it came from, writes its timeline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from nmt.checkpoint import files as ckpt_io
from nmt.config import DecodeConfig
from nmt.decode.inference import load_for_inference

# Constant learning rate (no warm-up/decay), so a run stopped at step 4 and resumed with
from nmt.decode.translate import translate_lines
from nmt.errors import user_error_types
from nmt.train.run import train

# Constant learning rate (no warm-up/decay), so a run stopped at step 4 and resumed with
# max_steps=8 follows exactly the straight 8-step run.
PIPE = (
    "parallel=pipe2",
    "parallel.microbatches=4",
    "parallel.timeout_s=60",
    "train.warmup_steps=0",
    "train.decay_steps=0",
    "train.save_every=4",
)


LAST = "checkpoints/last.pt"


def losses(out: Path) -> list[float]:
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if "loss" in r]


@pytest.fixture(scope="module")
def runs(tiny_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from nmt.config import compose_config
    from tests.conftest import tiny_overrides

    tmp = tmp_path_factory.mktemp("pipe")

    def run(name: str, *extra: str) -> Path:
        cfg = compose_config(tiny_overrides(tiny_corpus, tmp / "cache", tmp / name) + list(extra))
        train(cfg)
        return tmp / name

    return {
        "single": run("single", "train.max_steps=8", *PIPE[1:]),  # same batches (B % 4 == 0)
        "pipe": run("pipe", "train.max_steps=8", *PIPE),
        "halted": run("halted", "train.max_steps=4", *PIPE),
    } | {"resumed": resume_after_a_killed_save(tmp / "halted", run)}


def resume_after_a_killed_save(halted: Path, run: Any) -> Path:
    """Leave the half-written shard set of a run killed while saving step 6 (rank 0's shard
    only, no manifest), then resume: the set of step 4 (the manifest's) must be used."""
    folder = halted / "checkpoints" / "shards"
    (folder / "step_00000006.pp0.dp0.pt").write_bytes(
        (folder / "step_00000004.pp1.dp0.pt").read_bytes()
    )
    out = run("halted", "train.max_steps=8", "train.resume=auto", *PIPE)
    assert not (folder / "step_00000006.pp0.dp0.pt").exists()  # removed on resume
    return out


def test_pipelined_training_equals_single_device(runs: dict[str, Path]) -> None:
    single, pipe = runs["single"], runs["pipe"]
    assert losses(pipe) == pytest.approx(losses(single), rel=1e-5)
    wa = ckpt_io.load(single / "checkpoints" / "last.pt")["model"]
    wb = ckpt_io.load(pipe / "checkpoints" / "last.pt")["model"]
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=2e-5, msg=k)


def test_pipelined_resume_is_exact(runs: dict[str, Path]) -> None:
    assert losses(runs["resumed"]) == losses(runs["pipe"])
    wa = ckpt_io.load(runs["pipe"] / "checkpoints" / "last.pt")["model"]
    wb = ckpt_io.load(runs["resumed"] / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    folder = runs["pipe"] / "checkpoints" / "shards"
    assert sorted(p.name for p in folder.iterdir()) == [
        "manifest.json",
        "step_00000004.pp0.dp0.pt",
        "step_00000004.pp1.dp0.pt",
        "step_00000008.pp0.dp0.pt",
        "step_00000008.pp1.dp0.pt",
    ]  # train.keep_last=2 sets, the newest named by the manifest
    assert json.loads((folder / "manifest.json").read_text())["step"] == 8


def test_exported_checkpoint_translates_like_the_trained_model(runs: dict[str, Path]) -> None:
    D = DecodeConfig(beam_size=3, max_len_b=5, batch_tokens=64, prune_relative=0.0)

    lines = ["the cat runs", "a small red window opens", ""]
    a = translate_lines(*load_for_inference(str(runs["single"] / LAST), "none"), lines, D)
    b = translate_lines(*load_for_inference(str(runs["pipe"] / LAST), "none"), lines, D)
    assert [x[0][0] for x in a] == [x[0][0] for x in b]


def test_timeline_written(runs: dict[str, Path]) -> None:
    doc = json.loads((runs["pipe"] / "timeline.json").read_text())
    assert {e["name"] for e in doc["traceEvents"] if e.get("ph") == "X"} >= {"F0", "B3"}
    assert (runs["pipe"] / "timeline.png").stat().st_size > 1000


def test_bad_placement_fails_before_launch(tiny_cfg: Any) -> None:
    cfg = tiny_cfg("parallel=pipe2", "parallel.balance=[2,2]", "train.max_steps=1")
    with pytest.raises(user_error_types(), match=r"balance"):
        train(cfg)
    cfg = tiny_cfg("parallel=pipe4", "parallel.microbatches=2", "train.max_steps=1")
    with pytest.raises(user_error_types(), match=r"1f1b|microbatches"):
        train(cfg)
