"""Shard checkpoints of a pipelined run, written and resumed as one unit.

Every rank writes its shard for step N (``shards/step_00000N.pp{p}.dp{d}.pt``: its stages,
optimizer, RNG, data position). After a barrier, so every shard of the set is complete on
disk, rank 0 writes the manifest ``shards/manifest.json`` (atomically) naming step N and its
files. Resume loads only the set a manifest names; the ranks agree on that step through an
all-reduce. A set newer than the manifest (a run killed while saving) is ignored with one
line naming it, and deleted, with sets older than the newest ``keep_last``, by rank 0.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from data.atomic import atomic_open

MANIFEST = "manifest.json"
_SHARD = re.compile(r"step_(\d{8})\.pp(\d+)\.dp(\d+)\.pt$")


def shard_path(folder: Path, step: int, pp_rank: int, dp_rank: int) -> Path:
    return folder / f"step_{step:08d}.pp{pp_rank}.dp{dp_rank}.pt"


def write_manifest(folder: Path, step: int, pp: int, dp: int, placement: list[int]) -> None:
    """Name step ``step``'s complete set (call after every rank has written its shard)."""
    files = [shard_path(folder, step, p, d).name for d in range(dp) for p in range(pp)]
    doc = {"step": step, "pp": pp, "dp": dp, "placement": placement, "files": files}
    with atomic_open(folder / MANIFEST, "w") as fh:
        fh.write(json.dumps(doc, indent=1) + "\n")


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest, or ``None`` when there is none (or it is unreadable)."""
    try:
        doc = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("step"), int) else None


def usable_step(folder: Path, pp: int, dp: int, placement: list[int]) -> int:
    """The manifest's step if its set is complete and fits this run's ranks and placement,
    else -1 (the run then starts from the exported weights, or from scratch)."""
    doc = read_manifest(folder)
    if doc is None or (doc.get("pp"), doc.get("dp"), doc.get("placement")) != (pp, dp, placement):
        return -1
    if not all((folder / name).is_file() for name in doc["files"]):
        return -1
    return int(doc["step"])


def shard_sets(folder: Path) -> dict[int, list[Path]]:
    """Step -> the shard files on disk for that step."""
    sets: dict[int, list[Path]] = {}
    for path in folder.glob("step_*.pt"):
        m = _SHARD.search(path.name)
        if m:
            sets.setdefault(int(m.group(1)), []).append(path)
    return sets


def incomplete_sets(folder: Path, world: int) -> list[str]:
    """One line per shard set newer than the manifest (never named by it: a killed save)."""
    doc = read_manifest(folder)
    done = int(doc["step"]) if doc else -1
    return [
        f"ignored incomplete shard set of step {step} in {folder} ({len(files)} of {world} "
        "shards written, no manifest): a run stopped while saving"
        for step, files in sorted(shard_sets(folder).items())
        if step > done
    ]


def prune(folder: Path, keep_last: int) -> None:
    """Keep the manifest's set and the ``keep_last - 1`` complete sets before it; delete
    older sets, any set newer than the manifest and the temp files of shard writes that a kill
    interrupted, up to the manifest's step (rank 0, after the manifest is written)."""
    doc = read_manifest(folder)
    if doc is None:
        return
    done = int(doc["step"])
    older = sorted(s for s in shard_sets(folder) if s < done)
    keep = set(older[len(older) - max(keep_last - 1, 0) :]) | {done}
    for step, files in shard_sets(folder).items():
        if step not in keep:
            for path in files:
                path.unlink(missing_ok=True)
    for temp in folder.glob(".step_*.pt.*.tmp"):  # a write killed mid-way, at or before done
        found = re.match(r"\.step_(\d+)\.", temp.name)
        if found and int(found.group(1)) <= done:
            temp.unlink(missing_ok=True)
