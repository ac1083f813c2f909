"""Two torchrun "nodes" on this machine (loopback): node 2 is SIGKILLed mid-run, the surviving
agent restarts its worker, a fresh node-2 agent joins, and the re-formed job ends bitwise equal
to an uninterrupted two-node run (a short version of ``python -m scripts.bench two_node``: 6
steps, one kill; about 25 s on 2 cores, in the default suite)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.bench import two_node


@pytest.mark.timeout(720)  # two jobs of at most JOB_BUDGET_S (300 s) each, then the comparison
def test_two_node_job_survives_a_killed_node(tmp_path: Path) -> None:
    steps, kill_at = 6, 3
    s = two_node.run(steps=steps, kill_at=kill_at, workdir=tmp_path, verbose=False)
    ref, k = s["reference"], s["killed"]
    assert ref["exit_codes"] == [0, 0] and ref["final_step"] == steps
    assert sorted(ref["group_ranks"]) == [0, 1]  # both agents joined one rendezvous
    # node 2 died mid-run: node 1's agent restarted its worker (a retry, not a clean exit) ...
    assert k["killed_after_step"] < steps
    assert "attempts left" in k["restart"] or "new nodes" in k["restart"], k["restart"]
    assert k["restart_count"] >= 1 and sorted(k["group_ranks_after"]) == [0, 1]
    # ... and the re-formed job went on from a checkpoint written before the kill, not step 0
    assert kill_at - 1 <= k["resumed_at_step"] <= k["killed_after_step"], k
    assert k["exit_codes"] == [0, 0] and k["final_step"] == steps
    assert "last.pt" in s["equal"] and any(n.startswith("shards/") for n in s["equal"])
    assert all(s["equal"].values()), s["equal"]  # torch.equal, every tensor
    assert s["ok"]
