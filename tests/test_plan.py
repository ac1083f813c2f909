"""parallel.planning.plan: exact search (vs brute force), memory limits, REINFORCE, plan
files, CLI."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import pytest

from parallel.errors import PlacementError
from parallel.planning.costs import CostTable, StageCost, analytic_gnmt_costs, save_cost_tables
from parallel.planning.links import LINK_PRESETS, ZERO_LINK, Link
from parallel.planning.plan import (
    Candidate,
    SearchSpace,
    balanced_cuts,
    best_of,
    evaluate,
    load_plan,
    make_plan,
    save_plan,
    search,
    single_device_ms,
)
from parallel.planning.plan_cli import main
from parallel.planning.reinforce import reinforce
from parallel.schedules import gnmt_placement, looped_placement

PCIE = LINK_PRESETS["pcie"]


def toy(times: list[float], batch: int = 8, act: int = 100) -> CostTable:
    st = tuple(
        StageCost(f"s{i}", t, 2 * t, 1000, 1000, 2000, act, act // 10, 4_000_000)
        for i, t in enumerate(times)
    )
    return CostTable("toy", "cpu", "float32", 8, 8, batch, batch, st)


def test_balanced_cuts() -> None:
    assert balanced_cuts([1, 1, 1, 1], 2) == [2]
    assert balanced_cuts([5, 1, 1, 1, 1, 1], 2) == [1]
    assert balanced_cuts([1, 2, 3, 4, 5], 3) == [3, 4]
    with pytest.raises(PlacementError, match="cannot cut 2 stages into 3 runs"):
        balanced_cuts([1, 1], 3)


def brute_force(t: CostTable, k: int, space: SearchSpace, link: Link = PCIE) -> float:
    n, best = t.num_stages, float("inf")
    for v in range(1, space.max_stages_per_rank + 1):
        for cuts in itertools.combinations(range(1, n), v * k - 1):
            sizes = [b - a for a, b in zip((0, *cuts), (*cuts, n), strict=True)]
            p = looped_placement(sizes, k)
            for sched in space.schedules:
                for m, rc in itertools.product(space.microbatches, (False, True)):
                    try:
                        c = evaluate([t], p, sched, m, link, k, recompute=rc)
                    except PlacementError:
                        continue
                    if space.memory_limit_bytes is None or c.peak_bytes <= space.memory_limit_bytes:
                        best = min(best, c.step_ms)
    return best


@pytest.mark.parametrize("k", [2, 3])
def test_search_is_exact(k: int) -> None:
    t = toy([3.0, 1.0, 1.0, 2.0, 0.5, 4.0, 1.0])
    space = SearchSpace(microbatches=(1, 2, 4, 8), max_stages_per_rank=2)
    res = search([t], k, PCIE, space)
    assert res.best is not None
    assert res.best.step_ms == pytest.approx(brute_force(t, k, space))
    assert res.simulated < res.considered  # the bound prunes


def test_dp_fallback_when_enumeration_is_too_large() -> None:
    t = toy([3.0, 1.0, 1.0, 2.0, 0.5, 4.0, 1.0, 2.0])
    exact = search([t], 3, PCIE, SearchSpace(microbatches=(4,), max_stages_per_rank=1))
    approx = search(
        [t], 3, PCIE, SearchSpace(microbatches=(4,), max_stages_per_rank=1, enumeration_limit=1)
    )
    assert exact.best is not None and approx.best is not None
    assert approx.considered < exact.considered
    assert exact.best.step_ms <= approx.best.step_ms <= 1.1 * exact.best.step_ms


def test_memory_limit() -> None:
    t = toy([1.0] * 4, act=100_000_000)  # 12.5 MB per stage and micro-batch at M=8
    free = search([t], 2, ZERO_LINK, SearchSpace(microbatches=(8,), schedules=("gpipe",)))
    assert free.best is not None and free.best.peak_bytes > 200_000_000
    limit = 60_000_000
    space = SearchSpace(microbatches=(8,), memory_limit_bytes=limit)
    res = search([t], 2, ZERO_LINK, space)
    assert res.best is not None and res.best.peak_bytes <= limit
    assert res.best.step_ms == pytest.approx(brute_force(t, 2, space, ZERO_LINK))
    tiny = search([t], 2, ZERO_LINK, SearchSpace(memory_limit_bytes=1000))
    assert tiny.best is None


def test_planned_beats_expert_when_generator_is_heavy() -> None:
    t = analytic_gnmt_costs(4, 512, 32000, 16, 16, 64, 64, 1e12)
    space = SearchSpace(microbatches=(4, 8, 16))
    expert = best_of([t], gnmt_placement(4, 4), LINK_PRESETS["nvlink"], 4, space)
    res = search([t], 4, LINK_PRESETS["nvlink"], space)
    assert expert is not None and res.best is not None
    assert res.best.step_ms < 0.85 * expert.step_ms
    assert single_device_ms([t], ZERO_LINK) > res.best.step_ms


def test_reinforce_is_seeded_and_improves() -> None:
    t = toy([3.0, 1.0, 1.0, 2.0, 0.5, 4.0, 1.0])
    a = reinforce([t], 3, PCIE, 4, iterations=15, batch=8, seed=3)
    b = reinforce([t], 3, PCIE, 4, iterations=15, batch=8, seed=3)
    assert a == b and a.best is not None and a.best_runnable is not None
    assert a.best.step_ms <= a.best_runnable.step_ms
    assert a.best_runnable.schedule != "greedy"
    assert list(a.history) == sorted(a.history, reverse=True)
    exact = search([t], 3, PCIE, SearchSpace(microbatches=(4,)))
    assert exact.best is not None
    greedy_single = evaluate([t], [0] * 7, "greedy", 4, PCIE, 3).step_ms
    assert a.best.step_ms < greedy_single  # learned something better than one device


def test_plan_roundtrip_and_validation(tmp_path: Path) -> None:
    t = toy([1.0] * 5)
    c = Candidate((0, 0, 1, 1, 1), "1f1b", 4, False, 12.5, 1000)
    plan = make_plan(c, [t], 2, PCIE, method="exact", single_ms=20.0)
    p = tmp_path / "plan.json"
    save_plan(p, plan)
    assert load_plan(p, 5, 2) == plan
    assert plan.virtual_stages == ((0, 1), (2, 3, 4))
    with pytest.raises(PlacementError, match="plan places 5 stages, the model has 9"):
        load_plan(p, 9)
    with pytest.raises(PlacementError, match="plan is for 2 ranks, running with 4"):
        load_plan(p, 5, 4)
    save_plan(p, replace(plan, microbatches=1))
    with pytest.raises(PlacementError, match="microbatches=1 stages=2"):
        load_plan(p, 5)
    save_plan(p, replace(plan, placement=(1, 1, 0, 0, 0)))
    with pytest.raises(PlacementError, match="not runnable"):
        load_plan(p, 5)
    p.write_text("{}")
    with pytest.raises(PlacementError, match="not a plan file"):
        load_plan(p, 5)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    costs = tmp_path / "c.json"
    save_cost_tables(costs, [analytic_gnmt_costs(4, 128, 500, 8, 8, 16, 16, 1e10)])
    out = tmp_path / "plan.json"
    assert main(["--costs", str(costs), "--devices", "4", "--out", str(out)]) == 0
    plan = load_plan(out, 9, 4)
    assert plan.predicted_step_ms > 0 and plan.expert_step_ms is not None
    assert "speedup" in capsys.readouterr().out
    assert main(["--costs", str(costs), "--devices", "4", "--link", "x", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad link 'x'" in err
    assert main(["--costs", str(tmp_path / "no"), "--devices", "2", "--out", str(out)]) == 2
    assert main(["--costs", str(costs), "--devices", "10", "--out", str(out)]) == 2
