"""Multi-process checks (gloo on 127.0.0.1): one process group per scenario, many checks in
each (see ``tests/pipeline_helpers.py``), all bounded by timeouts."""

from __future__ import annotations

import re

import pytest

from tests.pipeline_helpers import WorkerResult, check_ok, run_ranks

pytestmark = pytest.mark.timeout(300)


def _checks(r: WorkerResult) -> list[str]:
    return [line for line in r.stdout.splitlines() if "CHECK" in line]


def test_two_ranks_match_single_device() -> None:
    """gpipe/1f1b x M in {1,2,4,8}, gnmt placement (interleaved, looped), recompute, toy model
    (int inputs, unused input), alternating buckets, Adam steps, eval, state dicts,
    timeline, shape guard."""
    results = run_ranks("equiv2", 2, timeout=240)
    check_ok(results)
    for r in results:
        assert "SCENARIO equiv2 OK" in r.stdout
        assert len(_checks(r)) == 19, _checks(r)


def test_dp2_pp2_then_a_killed_rank() -> None:
    """dp=2 x pp=2 matches the single device on the whole batch; then rank 1 is SIGKILLed
    and the three others exit non-zero within the timeout, naming rank 1."""
    timeout_s = 20
    results = run_ranks(
        "dp2pp2",
        4,
        timeout=240,
        env={"PIPE_TEST_KILL": "1", "PIPE_TEST_TIMEOUT": str(timeout_s)},
    )
    killed = results[1]
    assert killed.returncode == -9, killed.stderr[-2000:]
    match = re.search(r"KILL at ([0-9.]+)", killed.stdout)
    assert match, killed.stdout
    t_kill = float(match.group(1))
    for r in results:
        assert len(_checks(r)) == 2, (r.rank, r.stdout, r.stderr[-3000:])
    for r in (results[0], results[2], results[3]):
        lines = [line for line in r.stderr.splitlines() if line.startswith("pipenmt: rank")]
        assert r.returncode == 1, (r.rank, r.returncode, r.stderr[-3000:])
        assert lines and "rank 1 died" in lines[-1], (r.rank, r.stderr[-3000:])
        assert r.ended - t_kill < timeout_s, (r.rank, r.ended - t_kill)


@pytest.mark.slow
def test_hung_rank_times_out() -> None:
    """Rank 1 stays alive but stops taking part: rank 0 exits after the collective timeout."""
    timeout_s = 5
    results = run_ranks("hang2", 2, timeout=40, env={"PIPE_TEST_TIMEOUT": str(timeout_s)})
    r0 = results[0]
    assert r0.returncode == 1, r0.stderr[-3000:]
    line = [x for x in r0.stderr.splitlines() if x.startswith("pipenmt: rank")][-1]
    assert "alive" in line and "timed out" in line.lower(), line
    assert r0.seconds < 35
