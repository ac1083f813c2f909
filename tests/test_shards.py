"""Shard sets as one unit (nmt/shards.py): only a set named by a complete manifest resumes."""

from __future__ import annotations

from pathlib import Path

from nmt import shards


def write_set(folder: Path, step: int, pp: int = 2, dp: int = 1, only: int | None = None) -> None:
    for d in range(dp):
        for p in range(pp):
            if only is None or (p, d) == (only, 0):
                shards.shard_path(folder, step, p, d).write_bytes(b"x")


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
