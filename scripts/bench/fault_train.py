"""Fault injection for training: SIGKILL a CPU run at random moments, resume, compare.

    python -m scripts.bench fault_train              # 20 kills (about 3 minutes on 2 cores)
    python -m scripts.bench fault_train --kills 3    # the short version the test suite runs

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

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from data.synthetic import write_corpus
from nmt.release.plot import read_metrics
from scripts.bench.common import (
    ROOT,
    child_env,
    finish,
    nmt_command,
    parser,
    same_state,
    tiny_run,
    work_folder,
)

KINDS = ("startup", "step", "write")
STEP_LINE = re.compile(rb"^step (\d+) \| loss", re.M)


def overrides(corpus: dict[str, Path], cache: Path, steps: int) -> list[str]:
    return tiny_run(corpus, cache, steps, "model.dropout=0.3", "train.keep_last=2")


class Run:
    """One ``nmt-train`` process writing into ``folder``; its stderr goes to ``log``."""

    def __init__(self, args: list[str], folder: Path, log: Path) -> None:
        self.log = log
        self.started = time.monotonic()
        with log.open("wb") as err:
            self.proc = subprocess.Popen(
                [*nmt_command("train"), *args, f"hydra.run.dir={folder}"],
                stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT, env=child_env(1),
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
    recs = read_metrics(folder / "metrics.jsonl")
    return [(r["step"], r["loss"]) for r in recs if "loss" in r]


def run(kills: int = 20, steps: int | None = None, seed: int = 0, workdir: Path | None = None,
        verbose: bool = True) -> dict[str, Any]:  # fmt: skip
    """Reference run, ``kills`` killed runs, one final run; returns the summary."""
    from nmt.checkpoint import files as ckpt_io

    def say(msg: str) -> None:
        if verbose:
            print(msg, flush=True)

    rng = random.Random(seed)
    steps = steps or 4 * kills + 20
    with work_folder(workdir, "fault_train.") as work:
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


def main(argv: list[str] | None = None) -> int:
    ap = parser(__name__, __doc__)
    ap.add_argument("--json", type=Path, default=None, help="write the summary here")
    ap.add_argument("--workdir", type=Path, default=None, help="keep everything here")
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--steps", type=int, default=0, help="max_steps (default 4 * kills + 20)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    s = run(a.kills, a.steps or None, a.seed, a.workdir)
    kinds = ", ".join(f"{k} {v}" for k, v in s["kills_by_kind"].items())
    print(f"kills: {s['kills']} ({kinds}; inside a checkpoint write: "
          f"{s['kills_inside_checkpoint_write']}); resumed from last.pt: {s['resumes']}\n"
          f"steps lost per kill: {s['steps_lost_per_kill']} (mean {s['steps_lost_mean']})\n"
          f"corrupted checkpoints: {s['corrupted_checkpoints']} of "
          f"{s['checkpoint_files_checked']} loaded; last.pt went back: {s['last_pt_went_back']};"
          f" temp files left: {s['stale_temp_files_remaining']}\n"
          f"final: exit {s['final_exit_code']}, step {s['final_step']}/{s['max_steps']}; equal "
          f"to the uninterrupted run: weights {s['weights_equal']}, optimizer "
          f"{s['optimizer_equal']}, losses {s['losses_equal']} ({s['seconds']} s)\n"
          f"{'OK' if s['ok'] else 'FAILED'}")  # fmt: skip
    finish(s, a.json)
    return 0 if s["ok"] else 1
