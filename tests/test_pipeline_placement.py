"""Placements and start-up checks (pure, no processes)."""

from __future__ import annotations

import json

import pytest

from parallel.errors import PlacementError
from parallel.placement import (
    Placement,
    balanced_runs,
    check_batch,
    check_pipeline,
    contiguous,
    gnmt,
    resolve,
)
from parallel.runtime.ties import find_ties
from tests.pipeline_helpers import toy_stages


def test_contiguous_balance() -> None:
    p = contiguous(10, 4, [3, 2, 2, 3])
    assert p.groups == ((0, 1, 2), (3, 4), (5, 6), (7, 8, 9))
    assert p.stage_ranks == (0, 0, 0, 1, 1, 2, 2, 3, 3, 3)
    assert p.stages_per_rank == 1
    assert p.stages_on_rank(3) == [7, 8, 9]


def test_contiguous_balanced_by_parameters() -> None:
    # one heavy stage at each end (embedding, generator): they get runs of their own
    p = contiguous(6, 3, None, [100, 10, 10, 10, 10, 100])
    assert p.groups == ((0,), (1, 2, 3, 4), (5,))
    assert balanced_runs([1, 1, 1, 1], 2) == [2, 2]
    assert contiguous(5, 2).groups in (((0, 1), (2, 3, 4)), ((0, 1, 2), (3, 4)))


def test_contiguous_looped_on_one_rank() -> None:
    p = contiguous(5, 1, [1, 1, 1, 2])
    assert p.n_virtual == 4 and p.stages_per_rank == 4
    assert p.virtual_on_rank(0) == [0, 1, 2, 3]


def test_gnmt_placement_gnmt4() -> None:
    p = gnmt(4, 4, 4, 9)  # stages [E1,E2,E3,E4,D1,D2,D3,D4,G]
    assert p.groups == ((0,), (1,), (2,), (3,), (4,), (5,), (6,), (7, 8))
    assert [p.rank_of_virtual(v) for v in range(8)] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert p.stage_ranks == (0, 1, 2, 3, 0, 1, 2, 3, 3)
    assert p.stages_per_rank == 2
    two = gnmt(4, 4, 2, 9)
    assert two.groups == ((0, 1), (2, 3), (4, 5), (6, 7, 8))


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"n_stages": 3, "pp": 4}, "more pipeline ranks than stages"),
        ({"n_stages": 10, "pp": 4, "balance": [3, 2, 2, 2]}, "sum to the stage count 10"),
        ({"n_stages": 10, "pp": 4, "balance": [5, 5]}, "need pp=4 runs"),
        ({"n_stages": 5, "pp": 2, "balance": [0, 5]}, "must be positive"),
    ],
)
def test_contiguous_errors(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(PlacementError, match=fragment) as e:
        contiguous(**kwargs)  # type: ignore[arg-type]
    assert e.value.values  # carries the offending values


def test_schedule_checks() -> None:
    gn = gnmt(2, 2, 2, 5)
    with pytest.raises(PlacementError, match="one stage per rank") as e:
        check_pipeline(gn, "gpipe", 4)
    assert e.value.values["stages_per_rank"] == 2
    check_pipeline(gn, "interleaved_1f1b", 2)
    check_pipeline(gn, "looped_bfs", 1)
    cont = contiguous(5, 2, [2, 3])
    with pytest.raises(PlacementError, match="microbatches >= stages") as e:
        check_pipeline(cont, "1f1b", 1)
    assert e.value.values == {"microbatches": 1, "stages": 2}
    with pytest.raises(PlacementError, match="unknown schedule"):
        check_pipeline(cont, "zigzag", 2)
    with pytest.raises(PlacementError, match="multiple of the number of rounds"):
        check_pipeline(gnmt(4, 4, 2, 9), "interleaved_1f1b", 5)
    with pytest.raises(PlacementError, match="not divisible") as e:
        check_batch(10, 4)
    assert e.value.values == {"batch_size": 10, "microbatches": 4}


def test_stage_ranks_not_round_robin() -> None:
    with pytest.raises(PlacementError, match="not runnable"):
        Placement.from_stage_ranks([0, 1, 1, 0, 0], 2)
    with pytest.raises(PlacementError, match="without a stage"):
        Placement.from_stage_ranks([0, 0, 2, 2], 3)


def test_resolve_kinds(tmp_path: object) -> None:
    pl, sched, m = resolve("gnmt", n_stages=9, pp=4, schedule="interleaved_1f1b", microbatches=4)
    assert pl.kind == "gnmt" and sched == "interleaved_1f1b" and m == 4
    with pytest.raises(PlacementError, match="one stage per rank"):
        resolve("gnmt", n_stages=9, pp=4, schedule="1f1b", microbatches=4)
    with pytest.raises(PlacementError, match="unknown placement"):
        resolve("diagonal", n_stages=9, pp=4, schedule="gpipe", microbatches=1)
    with pytest.raises(PlacementError, match="plan file"):
        resolve("auto", n_stages=9, pp=4, schedule="gpipe", microbatches=1)


def test_resolve_auto_plan(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    plan = {
        "kind": "pipenmt-plan",
        "version": 1,
        "placement": [0, 0, 1, 1, 1],
        "num_ranks": 2,
        "schedule": "1f1b",
        "microbatches": 4,
    }
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    pl, sched, m = resolve("auto", n_stages=5, pp=2, schedule="gpipe", microbatches=1, plan=path)
    assert pl.groups == ((0, 1), (2, 3, 4)) and sched == "1f1b" and m == 4
    plan["placement"] = [0, 1, 0, 1, 1]
    plan["schedule"] = "gpipe"
    path.write_text(json.dumps(plan))
    with pytest.raises(PlacementError, match="one stage per rank"):
        resolve("auto", n_stages=5, pp=2, schedule="gpipe", microbatches=1, plan=path)
    with pytest.raises(PlacementError, match="plan places 5 stages"):
        resolve("auto", n_stages=7, pp=2, schedule="gpipe", microbatches=1, plan=path)


def test_find_ties() -> None:
    ties = find_ties(toy_stages())
    assert len(ties) == 1
    assert ties[0].holders == ((0, "embed.weight"), (4, "proj.weight"))


def test_runtime_schedule_registry_is_the_planner_list_and_refuses_unknown_names() -> None:
    from types import SimpleNamespace

    from parallel.runtime.pipeline import PipelineRunner
    from parallel.runtime.torchsched import RUNTIME_SCHEDULES
    from parallel.schedules import SCHEDULES

    assert tuple(RUNTIME_SCHEDULES) == SCHEDULES
    runner = SimpleNamespace(schedule="bogus", _loss=None)
    with pytest.raises(PlacementError, match="unknown schedule 'bogus'; choose from gpipe"):
        PipelineRunner._make_schedule(runner, [], 2, True)  # type: ignore[arg-type]
