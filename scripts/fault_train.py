"""Fault injection for training: SIGKILL a CPU run at random moments, resume, compare.

    python scripts/fault_train.py                # 20 kills (about 3 minutes on 2 cores)
    python scripts/fault_train.py --kills 3      # the short version the test suite runs

An uninterrupted reference run (``nmt-train``, gnmt_tiny on a generated toy corpus, a checkpoint
after every step) is compared with a run that is killed with SIGKILL ``--kills`` times and
restarted with ``train.resume=auto`` after each kill. The kills rotate over three moments:

* ``startup``: a random time after the process starts (imports, data loading, resuming);
* ``step``:    a random time after the run's first logged step (inside steps and saves);
* ``write``:   the moment a checkpoint temp file appears (inside a checkpoint write).

After every kill every ``*.pt`` in the checkpoint folder must load (``weights_only=True``) and
``last.pt`` must never go back. At the end the killed run's weights, optimizer state and loss
curve must equal the reference run's, bit for bit. Exit status 0 when all of that holds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data.synthetic import write_corpus  # noqa: E402

KINDS = ("startup", "step", "write")
STEP_LINE = re.compile(rb"^step (\d+) \| loss", re.M)


def overrides(corpus: dict[str, Path], cache: Path, steps: int) -> list[str]:
    return [
        "data=files", f"data.train={corpus['train']}", f"data.dev={corpus['dev']}",
        f"data.test={corpus['test']}", "data.vocab_size=60", f"data.cache_dir={cache}",
        "data.batch_tokens=256", "model=gnmt_tiny", "model.hidden=16", "model.enc_layers=2",
        "model.dec_layers=2", "model.dropout=0.3", "train.device=cpu", "train.threads=1",
        "train.log_every=1", "train.eval_every=0", "train.lr=0.01", f"train.max_steps={steps}",
        "train.save_every=1", "train.keep_last=2", "train.resume=auto",
    ]  # fmt: skip


class Run:
    """One ``nmt-train`` process writing into ``folder``; its stderr goes to ``log``."""

    CODE = "import sys; from nmt.cli import train_main; sys.argv[0] = 'nmt-train'; train_main()"

    def __init__(self, args: list[str], folder: Path, log: Path) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}  # fmt: skip
        env.pop("HYDRA_FULL_ERROR", None)
        self.log = log
        self.started = time.monotonic()
        with log.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", self.CODE, *args, f"hydra.run.dir={folder}"],
                stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT, env=env,
            )  # fmt: skip

    def steps(self) -> list[int]:
        """The steps this process has logged so far."""
        try:
            return [int(m) for m in STEP_LINE.findall(self.log.read_bytes())]
        except OSError:
            return []

    def wait_first_step(self, timeout: float = 120.0) -> float | None:
        """Seconds from start to the first logged step (None if the process ended first)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.proc.poll() is None:
            if self.steps():
                return time.monotonic() - self.started
            time.sleep(0.002)
        return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def temp_files(ckpt_dir: Path) -> list[str]:
    return sorted(p.name for p in ckpt_dir.glob(".*.tmp")) if ckpt_dir.is_dir() else []


def audit(ckpt_dir: Path) -> tuple[int | None, int, int]:
    """(step of last.pt or None, checkpoint files checked, files that do not load)."""
    from nmt.checkpoint import files as ckpt_io
    from nmt.errors import UserError

    last_step, checked, bad = None, 0, 0
    for p in sorted(ckpt_dir.glob("*.pt")) if ckpt_dir.is_dir() else []:
        checked += 1
        try:
            ck = ckpt_io.load(p)
        except (UserError, FileNotFoundError):
            if p.exists():  # (pruned between glob and load: not corrupted)
                bad += 1
                print(f"  UNREADABLE: {p}", file=sys.stderr)
            continue
        if p.name == "last.pt":
            last_step = int(ck["step"])
    return last_step, checked, bad


def losses(folder: Path) -> list[tuple[int, float]]:
    recs = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines() if x]
    return [(r["step"], r["loss"]) for r in recs if "loss" in r]


def same_state(a: Any, b: Any) -> bool:
    """Bitwise equality of nested dicts/lists of tensors and plain values."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def run(kills: int = 20, steps: int | None = None, seed: int = 0, workdir: Path | None = None,
        verbose: bool = True) -> dict[str, Any]:  # fmt: skip
    """Reference run, ``kills`` killed runs, one final run; returns the summary."""
    from nmt.checkpoint import files as ckpt_io

    def say(msg: str) -> None:
        if verbose:
            print(msg, flush=True)

    rng = random.Random(seed)
    steps = steps or 4 * kills + 20
    own_dir = workdir is None
    work = Path(tempfile.mkdtemp(prefix="fault_train.")) if workdir is None else workdir
    work.mkdir(parents=True, exist_ok=True)
    try:
        corpus = write_corpus(work, {"train": 600, "dev": 40, "test": 40})
        args = overrides(corpus, work / "cache", steps)
        ref_dir, run_dir = work / "reference", work / "killed"
        ckpt_dir = run_dir / "checkpoints"

        t0 = time.monotonic()
        ref = Run(args, ref_dir, work / "reference.log")
        startup = ref.wait_first_step() or 5.0
        if ref.proc.wait() != 0:
            raise SystemExit(f"reference run failed:\n{ref.text()[-2000:]}")
        ref_seconds = time.monotonic() - ref.started
        step_time = max((ref_seconds - startup) / steps, 0.005)
        say(f"reference run: {steps} steps in {ref_seconds:.1f} s (start-up {startup:.1f} s, "
            f"{1000 * step_time:.0f} ms per step incl. checkpoint)")  # fmt: skip

        kinds = [KINDS[i % len(KINDS)] for i in range(kills)]
        rng.shuffle(kinds)
        records: list[dict[str, Any]] = []
        last_seen: int | None = None
        corrupted = checked_total = went_back = 0
        stale: set[str] = set()  # temp files that kills left behind
        resumes = 0
        finished_early = False
        for k, kind in enumerate(kinds, start=1):
            r = Run(args, run_dir, work / f"kill{k:02d}.log")
            hit_write = False
            if kind == "startup":
                time.sleep(rng.uniform(0.0, startup))
            else:
                if r.wait_first_step() is None:
                    finished_early = True
                # let the run go on for a random number of steps, so kills spread over it
                target = min(r.steps(), default=0) + rng.randint(0, 3)
                while r.proc.poll() is None and max(r.steps(), default=0) < target:
                    time.sleep(0.002)
                if kind == "step":
                    time.sleep(rng.uniform(0.0, step_time))
                else:  # the moment a new checkpoint temp file exists
                    end = time.monotonic() + 30
                    while time.monotonic() < end and r.proc.poll() is None:
                        if set(temp_files(ckpt_dir)) - stale:
                            hit_write = True
                            break
            if r.proc.poll() is not None:
                finished_early = True
            r.kill()
            progress = max(r.steps(), default=None)
            left = temp_files(ckpt_dir)
            step, checked, bad = audit(ckpt_dir)
            corrupted += bad
            checked_total += checked
            if last_seen is not None and (step is None or step < last_seen):
                went_back += 1
            resumed = "resumed from" in r.text()
            resumes += resumed
            new_temp = set(left) - stale  # this kill interrupted a checkpoint write
            stale |= set(left)
            lost = max(0, progress - (step or 0)) if progress is not None else 0
            records.append({"kill": k, "kind": kind, "after_s": round(time.monotonic()
                            - r.started, 2), "resumed": resumed, "logged_step": progress,
                            "checkpoint_step": step, "steps_lost": lost,
                            "temp_files_left": len(left), "hit_write": hit_write or bool(new_temp),
                            "unreadable": bad})  # fmt: skip
            say(f"kill {k:2d} ({kind:7s} at {records[-1]['after_s']:5.2f} s): "
                f"logged step {progress if progress is not None else '-':>3}, last.pt step "
                f"{step if step is not None else '-':>3}, lost {lost}, "
                f"{'killed inside a checkpoint write' if new_temp else 'no write cut'}, "
                f"unreadable {bad}")  # fmt: skip
            last_seen = step if step is not None else last_seen
            if finished_early:
                say("the run finished before the kill: use more --steps")
                break

        final = Run(args, run_dir, work / "final.log")
        code = final.proc.wait()
        final_resumed = "resumed from" in final.text()
        resumes += final_resumed
        stale_kept = stale & set(temp_files(ckpt_dir))
        step, checked, bad = audit(ckpt_dir)
        corrupted += bad
        checked_total += checked

        a = ckpt_io.load(ref_dir / "checkpoints" / "last.pt")
        b = ckpt_io.load(ckpt_dir / "last.pt") if (ckpt_dir / "last.pt").is_file() else {}
        weights_equal = "model" in b and same_state(a["model"], b["model"])
        optimizer_equal = "optimizer" in b and same_state(a["optimizer"], b["optimizer"])
        losses_equal = losses(ref_dir) == losses(run_dir)
        n_kills = len(records)
        lost = [r["steps_lost"] for r in records]
        summary: dict[str, Any] = {
            "kills": n_kills,
            "kills_by_kind": {kd: sum(r["kind"] == kd for r in records) for kd in KINDS},
            "kills_inside_checkpoint_write": sum(r["hit_write"] for r in records),
            "resumes": resumes,
            "steps_lost_per_kill": lost,
            "steps_lost_mean": round(sum(lost) / max(len(lost), 1), 2),
            "steps_lost_max": max(lost, default=0),
            "checkpoint_files_checked": checked_total,
            "corrupted_checkpoints": corrupted,
            "last_pt_went_back": went_back,
            "stale_temp_files_left_by_kills": len(stale),
            "stale_temp_files_remaining": len(stale_kept),
            "final_exit_code": code,
            "final_resumed": final_resumed,
            "final_step": b.get("step"),
            "max_steps": steps,
            "weights_equal": weights_equal,
            "optimizer_equal": optimizer_equal,
            "losses_equal": losses_equal,
            "finished_early": finished_early,
            "seconds": round(time.monotonic() - t0, 1),
            "records": records,
        }
        summary["ok"] = bool(
            n_kills == kills and corrupted == 0 and went_back == 0 and code == 0
            and weights_equal and optimizer_equal and losses_equal
            and b.get("step") == steps and not stale_kept
        )  # fmt: skip
        return summary
    finally:
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--steps", type=int, default=0, help="max_steps (default 4 * kills + 20)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="keep everything here")
    ap.add_argument("--json", type=Path, default=None, help="write the summary here")
    a = ap.parse_args(argv)
    s = run(a.kills, a.steps or None, a.seed, a.workdir)
    lost = s["steps_lost_per_kill"]
    print(
        f"kills: {s['kills']} ({', '.join(f'{k} {v}' for k, v in s['kills_by_kind'].items())}; "
        f"inside a checkpoint write: {s['kills_inside_checkpoint_write']})"
    )
    print(
        f"resumes: {s['resumes']} of {s['kills']} restarts reached 'resumed from last.pt' "
        f"(train.resume=auto; the others were killed during start-up, or no checkpoint "
        f"existed yet)"
    )
    print(f"steps lost per kill: {lost} (mean {s['steps_lost_mean']}, max {s['steps_lost_max']})")
    print(
        f"corrupted checkpoints: {s['corrupted_checkpoints']} "
        f"({s['checkpoint_files_checked']} checkpoint files loaded after the kills); "
        f"last.pt went back: {s['last_pt_went_back']}; temp files left by kills: "
        f"{s['stale_temp_files_left_by_kills']}, still there after the final run: "
        f"{s['stale_temp_files_remaining']}"
    )
    print(
        f"final: exit {s['final_exit_code']}, step {s['final_step']}/{s['max_steps']}; "
        f"weights equal the uninterrupted run: {s['weights_equal']}; optimizer state equal: "
        f"{s['optimizer_equal']}; losses equal: {s['losses_equal']} ({s['seconds']} s)"
    )
    print("OK" if s["ok"] else "FAILED")
    if a.json:
        a.json.write_text(json.dumps(s, indent=2) + "\n")
    return 0 if s["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
