"""Two torchrun "nodes" on one machine, loopback only: the job survives a node's SIGKILL.

    python -m scripts.bench two_node [--steps 24] [--kill-at 6] [--workdir DIR] [--json FILE|'']

Two ``torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --max-restarts 3 --no-python
nmt-train ... parallel.dp=2`` agents (gnmt_tiny, generated corpus, dropout 0, a checkpoint every
step, ``train.resume=auto``, one run folder). Run 1 goes to the end. Run 2 SIGKILLs node 2 after
rank 0 logged step ``--kill-at``, starts a fresh node-2 agent once node 1's agent restarted its
worker, and finishes: ``last.pt`` and every shard must equal run 1's (``torch.equal``). Agents get
``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` (unless set): with torch's default shared store the
re-formed job hangs 60 s and fails (no ``MASTER_ADDR`` published for the new round). Heartbeats
every second (``keep_alive_interval=1``): the killed node expires after ``KEEP_ALIVE_MAX`` s.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from data.synthetic import write_corpus
from parallel.runtime.launch import free_port
from scripts.bench.common import (
    ROOT,
    child_env,
    finish,
    last_step,
    machine,
    parser,
    results_for,
    same_state,
    tiny_run,
    work_folder,
)

RDZV = re.compile(r"Rendezvous complete.*?restart_count=(\d+).*?group_rank=(\d+)", re.S)
RESTART = re.compile(r"Worker group (FAILED|UNHEALTHY)\. \d+/\d+ attempts left|Detected \d+ new")
STEP = re.compile(r"^step (\d+) \| loss", re.M)
SHARE = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"
JOB_BUDGET_S = 300.0  # the most one job may take (each wait below is also bounded)
# a node that missed this many 1 s heartbeats is dead (torch's default, 3 of 5 s, kept the
# re-formed job waiting 15 s for the killed node to expire)
KEEP_ALIVE_MAX = 5
ENV = {SHARE: os.environ.get(SHARE, "1"), "GLOO_SOCKET_IFNAME": "lo", "LOGLEVEL": "INFO"}


def overrides(corpus: dict[str, Path], cache: Path, steps: int, run_dir: Path) -> list[str]:
    return tiny_run(corpus, cache, steps, "model.dropout=0", "parallel.dp=2", "parallel.pp=1",
                    "parallel.timeout_s=30", f"hydra.run.dir={run_dir}")  # fmt: skip


class Agent:
    """One ``torchrun`` agent ("node") in a session of its own; its output goes to ``log``."""

    def __init__(self, node: int, endpoint: str, run_id: str, args: list[str], log: Path) -> None:
        env = child_env(1, **ENV, PYTHONUNBUFFERED="1")
        train = shutil.which("nmt-train") or str(Path(sys.executable).parent / "nmt-train")
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node",
            "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", run_id,
            "--rdzv-conf", f"is_host={int(node == 1)},join_timeout=90,last_call_timeout=1,"
            f"keep_alive_interval=1,keep_alive_max_attempt={KEEP_ALIVE_MAX}",
            "--max-restarts", "3", "--monitor-interval", "0.2", "--local-addr", "127.0.0.1",
            "--master-addr", "127.0.0.1", "--no-python", train, *args,
        ]  # fmt: skip
        self.node, self.log = node, log
        self.start = log.stat().st_size if log.exists() else 0  # node 2's log is appended to
        with log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                         env=env, start_new_session=True)  # fmt: skip

    def text(self) -> str:
        return self.log.read_bytes()[self.start :].decode(errors="replace")

    def tree(self) -> list[int]:
        """The agent's pid and its workers' (torch starts each worker in a session of its own)."""
        ps = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, timeout=10)
        return [self.proc.pid, *map(int, ps.stdout.split())]

    def kill(self) -> list[int]:
        """SIGKILL the process groups of the agent and of its workers (the machine dies)."""
        groups: list[int] = []
        for pid in self.tree():
            with contextlib.suppress(ProcessLookupError):
                groups += [g for g in [os.getpgid(pid)] if g not in groups]
        for g in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(g, signal.SIGKILL)
        self.proc.wait(timeout=30)
        return groups


def listening(pids: set[int]) -> list[str]:
    """The TCP addresses the processes ``pids`` listen on (``ss``), e.g. ``127.0.0.1:4242``."""
    try:
        out = subprocess.run(["ss", "-Htlnp"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ["(ss not available)"]
    mine = [x for x in out.splitlines() if {int(p) for p in re.findall(r"pid=(\d+)", x)} & pids]
    return sorted({x.split()[3] for x in mine})


def on_disk(run_dir: Path) -> dict[str, int]:
    """The step of ``last.pt``, of each shard and of the shard manifest (if any)."""
    from nmt.checkpoint import files as ckpt_io

    ck = run_dir / "checkpoints"
    files = [ck / "last.pt", *sorted((ck / "shards").glob("*.pt"))]
    steps = {p.name: int(ckpt_io.load(p)["step"]) for p in files if p.is_file()}
    with contextlib.suppress(OSError, ValueError, KeyError):
        steps["manifest.json"] = int(json.loads((ck / "shards/manifest.json").read_text())["step"])
    return steps


def compare(ref: Path, run: Path) -> dict[str, bool]:
    """Run 2 vs run 1: ``last.pt`` (model) and every shard (model and optimizer state)."""
    from nmt.checkpoint import files as ckpt_io

    names = {p.name for d in (ref, run) for p in (d / "checkpoints/shards").glob("*.pt")}
    out = {}
    for rel in ["last.pt", *(f"shards/{n}" for n in sorted(names))]:
        a, b = ref / "checkpoints" / rel, run / "checkpoints" / rel
        out[rel] = a.is_file() and b.is_file()  # False: in one run only
        if out[rel]:
            x, y = ckpt_io.load(a), ckpt_io.load(b)
            out[rel] = same_state(x["model"], y["model"]) and same_state(
                x.get("optimizer"), y.get("optimizer")
            )
    return out


class Job:
    """One two-node job in ``work/name``: its agents and what they logged (``info``)."""

    def __init__(self, work: Path, name: str, corpus: dict[str, Path], steps: int,
                 say: Callable[[str], None]) -> None:  # fmt: skip
        self.name, self.say, self.work, self.steps = name, say, work, steps
        self.run_dir = work / name
        self.args = overrides(corpus, work / "cache", steps, self.run_dir)
        self.endpoint, self.run_id = f"127.0.0.1:{free_port()}", f"{name}-{os.getpid()}"
        self.info: dict[str, Any] = {"rdzv_endpoint": self.endpoint}
        self.agents: list[Agent] = []
        self.deadline = time.monotonic() + JOB_BUDGET_S

    def start(self, node: int) -> Agent:
        log = self.work / f"{self.name}.node{node}.log"
        self.agents.append(Agent(node, self.endpoint, self.run_id, self.args, log))
        return self.agents[-1]

    def wait(self, what: str, cond: Callable[[], Any], timeout: float) -> None:
        end = min(time.monotonic() + timeout, self.deadline)
        while not cond():
            if time.monotonic() > end or all(a.proc.poll() is not None for a in self.agents):
                tails = "\n".join(f"--- node {a.node}:\n{a.text()[-3000:]}" for a in self.agents)
                raise RuntimeError(f"{self.name}: gave up waiting for {what}\n{tails}")
            time.sleep(0.05)

    def joined(self, *agents: Agent, rounds: int = 1) -> list[int] | None:
        """The agents' group ranks once each has completed ``rounds`` rendezvous."""
        found = [RDZV.findall(a.text()) for a in agents]
        return [int(f[-1][1]) for f in found] if all(len(f) >= rounds for f in found) else None

    def run(self, kill_at: int | None) -> dict[str, Any]:
        """Both nodes to the end; with ``kill_at``, node 2 dies after that step and comes back."""
        t0, a1, a2, info = time.monotonic(), self.start(1), self.start(2), self.info
        try:
            self.wait("the rendezvous", lambda: self.joined(a1, a2), 120)
            info["group_ranks"] = self.joined(a1, a2)
            self.say(f"[{self.name}] join: node1 and node2 agents rendezvoused at {self.endpoint}"
                     f" as group ranks {info['group_ranks']}")  # fmt: skip
            at = kill_at or 1
            self.wait(f"step {at}", lambda: last_step(self.run_dir) >= at, 180)
            if kill_at is None:  # the job's listening sockets, once it trains
                info["listening"] = listening({p for a in self.agents for p in a.tree()})
                self.say(f"[{self.name}] listening (agents, workers): {info['listening']}")
            else:
                self.kill_and_return(a1, a2)
            final = [a1, self.agents[-1]]  # node 1 and node 2's last agent
            for a in final:
                a.proc.wait(timeout=max(1.0, self.deadline - time.monotonic()))
            info["exit_codes"] = [a.proc.returncode for a in final]
            info["final_step"] = last_step(self.run_dir)
            info["seconds"] = round(time.monotonic() - t0, 1)
            self.say(f"[{self.name}] finished: exit codes {info['exit_codes']}, step "
                     f"{info['final_step']}/{self.steps}, {info['seconds']} s")  # fmt: skip
            return info
        finally:
            for a in self.agents:
                if a.proc.poll() is None:
                    a.kill()

    def kill_and_return(self, a1: Agent, a2: Agent) -> None:
        """SIGKILL node 2; once node 1's agent restarts its worker, start a fresh node 2."""
        info, say = self.info, self.say
        groups = a2.kill()
        info["killed_after_step"] = last_step(self.run_dir)
        say(f"[{self.name}] kill: SIGKILL to node 2's process groups {groups} (agent, worker) "
            f"after rank 0 logged step {info['killed_after_step']}")  # fmt: skip
        self.wait("node 1's restart", lambda: RESTART.search(a1.text()), 120)
        info["restart"] = RESTART.search(a1.text())[0]  # type: ignore[index]
        info["on_disk_at_restart"] = disk = on_disk(self.run_dir)
        say(f"[{self.name}] restart: node 1's agent: {info['restart']}, will restart worker "
            "group; on disk: " + ", ".join(f"{k} step {v}" for k, v in disk.items()))  # fmt: skip
        mark, a3 = len(a1.text()), self.start(2)
        self.wait("the job to re-form", lambda: self.joined(a1, rounds=2) and self.joined(a3), 180)
        info["restart_count"] = int(RDZV.findall(a1.text())[-1][0])
        info["group_ranks_after"] = self.joined(a1, a3)
        say(f"[{self.name}] rejoin: a fresh node-2 agent joined; node 1's restart_count="
            f"{info['restart_count']}, group ranks {info['group_ranks_after']}")  # fmt: skip

        def after() -> str:  # what both nodes logged since the restart
            return a1.text()[mark:] + a3.text()

        self.wait("a step after the restart", lambda: STEP.search(after()), 180)
        first = min(int(s) for s in STEP.findall(after()))
        info["resumed_at_step"] = first - 1
        say(f"[{self.name}] resumed: the re-formed job's first step is {first}: it resumed at "
            f"step {first - 1}")  # fmt: skip


def run(steps: int = 24, kill_at: int = 6, workdir: Path | None = None,
        verbose: bool = True) -> dict[str, Any]:  # fmt: skip
    """Run 1 (reference) and run 2 (node 2 killed and back); returns the summary."""

    def say(msg: str) -> None:
        if verbose:
            print(msg, flush=True)

    with work_folder(workdir, "two_node.") as work:
        corpus, t0 = write_corpus(work, {"train": 600, "dev": 40, "test": 40}), time.monotonic()
        ref = Job(work, "reference", corpus, steps, say).run(None)
        killed = Job(work, "killed", corpus, steps, say).run(kill_at)
        equal = compare(work / "reference", work / "killed")
        say("equal to run 1 (torch.equal): " + ", ".join(f"{k} {v}" for k, v in equal.items()))
        s: dict[str, Any] = {
            "machine": machine(env=ENV),
            "steps": steps, "kill_at": kill_at, "reference": ref, "killed": killed,
            "equal": equal, "seconds": round(time.monotonic() - t0, 1),
        }  # fmt: skip
        s["ok"] = bool(
            all(equal.values()) and any(k.startswith("shards/") for k in equal)
            and ref["exit_codes"] == killed["exit_codes"] == [0, 0]
            and killed["final_step"] == steps and killed["restart_count"] >= 1
            and 0 <= killed["resumed_at_step"] < steps
        )  # fmt: skip
        return s


OUT = results_for("reliability", "two_node.json")


def main(argv: list[str] | None = None) -> int:
    ap = parser(__name__, __doc__)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--kill-at", type=int, default=6)
    ap.add_argument("--workdir", type=Path, default=None, help="keep everything here")
    ap.add_argument("--json", default=str(OUT), help="'-' or '': none")
    a = ap.parse_args(argv)
    s = run(a.steps, a.kill_at, a.workdir)
    print(f"{'OK' if s['ok'] else 'FAILED'}: node 2 killed and back ({s['seconds']} s)")
    finish(s, a.json or None)
    return 0 if s["ok"] else 1
