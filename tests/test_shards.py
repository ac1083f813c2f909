"""Shard sets as one unit (nmt/checkpoint/shards.py): only a set named by a complete manifest
resumes,
also after a pipelined run is killed in the middle of writing its set."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from nmt.checkpoint import files as ckpt_io
from nmt.checkpoint import shards
from tests.conftest import tiny_overrides
from tests.rank_hooks import run_hooked


def write_set(folder: Path, step: int, pp: int = 2, dp: int = 1, only: int | None = None) -> None:
    for d in range(dp):
        for p in range(pp):
            if only is None or (p, d) == (only, 0):
                shards.shard_path(folder, step, p, d).write_bytes(b"x")


def test_prune_removes_the_temp_files_of_killed_writes(tmp_path: Path) -> None:
    """A shard write killed mid-way leaves its temp file; the next manifest's prune removes it
    (never one of a step after the manifest's, which a rank may still be writing)."""
    write_set(tmp_path, 2)
    killed = tmp_path / ".step_00000002.pp1.dp0.pt.a1b2.tmp"
    later = tmp_path / ".step_00000006.pp1.dp0.pt.c3d4.tmp"
    killed.write_bytes(b"half")
    later.write_bytes(b"half")
    write_set(tmp_path, 4)
    shards.write_manifest(tmp_path, 4, 2, 1, [0, 1])
    shards.prune(tmp_path, keep_last=2)
    assert not killed.exists() and later.exists()
    assert shards.usable_step(tmp_path, 2, 1, [0, 1]) == 4


def test_only_a_manifested_complete_set_is_usable(tmp_path: Path) -> None:
    assert shards.usable_step(tmp_path, 2, 1, [0, 1]) == -1  # nothing yet
    write_set(tmp_path, 4)
    assert shards.usable_step(tmp_path, 2, 1, [0, 1]) == -1  # shards without a manifest
    shards.write_manifest(tmp_path, 4, 2, 1, [0, 1])
    assert shards.usable_step(tmp_path, 2, 1, [0, 1]) == 4
    assert shards.usable_step(tmp_path, 2, 1, [0, 0]) == -1  # another placement
    assert shards.usable_step(tmp_path, 1, 2, [0, 0]) == -1  # another mesh
    shards.shard_path(tmp_path, 4, 1, 0).unlink()
    assert shards.usable_step(tmp_path, 2, 1, [0, 1]) == -1  # a file of the set is gone


def test_a_set_newer_than_the_manifest_is_named_and_pruned(tmp_path: Path) -> None:
    for step in (2, 4, 6):
        write_set(tmp_path, step)
    shards.write_manifest(tmp_path, 6, 2, 1, [0, 1])
    write_set(tmp_path, 8, only=0)  # killed while saving step 8: one shard of two
    assert shards.incomplete_sets(tmp_path, 2) == [
        f"ignored incomplete shard set of step 8 in {tmp_path} (1 of 2 shards written, "
        "no manifest): a run stopped while saving"
    ]
    shards.prune(tmp_path, keep_last=2)
    assert sorted(shards.shard_sets(tmp_path)) == [4, 6]
    assert shards.usable_step(tmp_path, 2, 1, [0, 1]) == 6
    assert shards.incomplete_sets(tmp_path, 2) == []


# ------------------------------------------------------------ a run killed mid-set (pp=2, CPU)
KILL_STEPS = ("train.max_steps=6", "train.save_every=2", "train.keep_last=2")
PIPE = ("parallel=pipe2", "parallel.microbatches=2", "parallel.timeout_s=60")


@pytest.mark.timeout(240)
def test_run_killed_while_writing_its_shard_set_resumes_exactly(
    tiny_corpus: dict[str, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL of the whole pp=2 run while rank 1 writes its shard of step 4 (rank 0's is on
    disk, no manifest): train.resume=auto goes on from step 2's set and ends with the weights,
    optimizer state and losses of the uninterrupted run."""
    from nmt.config import compose_config
    from nmt.train.run import train

    def args(name: str, *extra: str) -> list[str]:
        return [*tiny_overrides(tiny_corpus, tmp_path / "cache", tmp_path / name), *extra]

    train(compose_config(args("straight", *KILL_STEPS, *PIPE)))
    killed = run_hooked("kill", "4", 2, args("killed", *KILL_STEPS, *PIPE))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
    folder = tmp_path / "killed" / "checkpoints" / "shards"
    assert shards.read_manifest(folder) == {
        "step": 2, "pp": 2, "dp": 1, "placement": [0, 0, 1, 1, 1],
        "files": ["step_00000002.pp0.dp0.pt", "step_00000002.pp1.dp0.pt"],
    }  # fmt: skip
    assert [p.name for p in shards.shard_sets(folder)[4]] == ["step_00000004.pp0.dp0.pt"]
    assert len(list(folder.glob(".step_00000004.pp1.dp0.pt.*.tmp"))) == 1  # the write cut short
    capfd.readouterr()
    train(compose_config(args("killed", *KILL_STEPS, *PIPE, "train.resume=auto")))
    err = capfd.readouterr().err
    assert "ignored incomplete shard set of step 4" in err and "at step 2" in err
    assert sorted(shards.shard_sets(folder)) == [4, 6]
    for name in ("step_00000006.pp0.dp0.pt", "step_00000006.pp1.dp0.pt"):
        a = ckpt_io.load(tmp_path / "straight" / "checkpoints" / "shards" / name)
        b = ckpt_io.load(folder / name)
        assert a["step"] == b["step"] == 6
        assert_equal_tensors(a["model"], b["model"], f"{name} weights")
        assert_equal_tensors(a["optimizer"]["state"], b["optimizer"]["state"], f"{name} Adam")
    assert losses(tmp_path / "killed")[2:] == losses(tmp_path / "straight")[2:]


def losses(out: Path) -> list[tuple[int, float]]:
    """(step, loss) of each logged step; a resumed run appends to the same file."""
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x]
    by_step = {r["step"]: r["loss"] for r in rows if "loss" in r}
    return sorted(by_step.items())


def assert_equal_tensors(a: Any, b: Any, where: str) -> None:
    """Nested dicts of tensors (weights, optimizer state) equal bit for bit."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where} differ from the uninterrupted run's"
        return
    assert isinstance(a, dict) and a.keys() == b.keys(), where
    for k in a:
        assert_equal_tensors(a[k], b[k], f"{where} {k}")
