"""nmt-train ranks with a test hook, started by torchrun (``run_hooked``).

``python -m torch.distributed.run --nproc_per_node N -m tests.rank_hooks HOOK ARG OVERRIDE...``
runs ``nmt.train.run.train`` as each rank (``parallel.runtime.launch`` sees ``RANK``) after
installing ``HOOK`` in that rank's process:

* ``tokens RECORD``: after every update a rank takes, ``RECORD.rank<R>.json`` gets the target
  tokens of the batch its replica trained on (``{"dp_rank", "pp_rank", "tokens": [per step]}``).
* ``kill STEP``: pipeline rank 1 (replica 0), saving its shard of step ``STEP``, waits until
  rank 0's shard of that step is on disk, writes half of its own into the temp file, then
  SIGKILLs the whole run (torchrun and every rank): the run dies in the
  middle of writing its shard set, before the manifest. (torchrun starts each rank in a
  session of its own: the hook kills torchrun, its other children, then itself; Linux /proc.)
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def record_trained_tokens(record: str) -> None:
    """Wrap ``Trainer.train_step`` of a pipeline rank: after every update taken, write the
    tokens of this replica's batch."""
    from data.batching import Batch
    from nmt.train.pipelined import PipelineRank
    from nmt.train.trainer import Trainer

    original = Trainer.train_step
    tokens: list[int] = []

    def train_step(self: Trainer, batch: Batch | list[Batch]) -> tuple[float, float]:
        drawn = [batch] if isinstance(batch, Batch) else batch
        assert isinstance(self.engine, PipelineRank)
        ctx = self.engine.ctx
        one = drawn[ctx.dp_rank]
        before = self.step
        result = original(self, batch)
        if self.step > before:
            tokens.append(one.ntokens)
            mine = {"dp_rank": ctx.dp_rank, "pp_rank": ctx.pp_rank, "tokens": tokens}
            Path(f"{record}.rank{ctx.rank}.json").write_text(json.dumps(mine))
        return result

    Trainer.train_step = train_step  # type: ignore[method-assign]


def kill_inside_shard_write(step: str) -> None:
    """Wrap ``nmt.checkpoint.files.save``: rank 1's shard of ``step`` is cut short by a SIGKILL."""
    import torch

    from data.atomic import atomic_open
    from nmt.checkpoint import files as checkpoint
    from nmt.checkpoint import shards

    original = checkpoint.save

    def save(path: Path, payload: dict[str, Any]) -> None:
        if path.name != shards.shard_path(path.parent, int(step), 1, 0).name:
            return original(path, payload)
        first = shards.shard_path(path.parent, int(step), 0, 0)
        deadline = time.monotonic() + 60
        while not first.is_file() and time.monotonic() < deadline:
            time.sleep(0.01)
        blob = io.BytesIO()
        torch.save({"format": checkpoint.FORMAT, **payload}, blob)
        with atomic_open(path, "wb") as fh:
            fh.write(blob.getvalue()[: blob.tell() // 2])
            fh.flush()
            kill_the_run()

    checkpoint.save = save


def kill_the_run() -> None:
    """SIGKILL torchrun (this rank's parent), the other ranks, then this rank."""
    agent = os.getppid()
    others = [pid for pid in children(agent) if pid != os.getpid()]
    for pid in (agent, *others, os.getpid()):
        os.kill(pid, signal.SIGKILL)


def children(parent: int) -> list[int]:
    """The processes whose parent is ``parent`` (from /proc/PID/stat)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found


HOOKS = {"tokens": record_trained_tokens, "kill": kill_inside_shard_write}


def run_hooked(
    hook: str, arg: str, nproc: int, overrides: Sequence[str]
) -> subprocess.CompletedProcess[str]:
    """Run ``nproc`` ranks with ``hook`` under torchrun; returns the finished torchrun."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc_per_node={nproc}", "-m", "tests.rank_hooks", hook, arg, *overrides]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def main(argv: Sequence[str]) -> None:
    from nmt.config import compose_config
    from nmt.train.run import train

    HOOKS[argv[0]](argv[1])
    train(compose_config(list(argv[2:])))


if __name__ == "__main__":
    main(sys.argv[1:])
