"""parallel.schedules: exact orders (hand-written and torch's own), validation, placements."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from parallel.errors import PlacementError
from parallel.schedules import (
    Action,
    contiguous_placement,
    gnmt_placement,
    group_virtual_stages,
    looped_placement,
    orders_to_strings,
    parse_action,
    schedule_orders,
    validate_schedule,
)


def strs(schedule: str, k: int, m: int, v: int = 1) -> list[str]:
    return [" ".join(ops) for ops in orders_to_strings(schedule_orders(schedule, k, m, v))]


def test_gpipe_k2_m4() -> None:
    assert strs("gpipe", 2, 4) == [
        "0F0 0F1 0F2 0F3 0B0 0B1 0B2 0B3",
        "1F0 1F1 1F2 1F3 1B0 1B1 1B2 1B3",
    ]


def test_1f1b_k2_m4() -> None:
    assert strs("1f1b", 2, 4) == [
        "0F0 0F1 0B0 0F2 0B1 0F3 0B2 0B3",
        "1F0 1B0 1F1 1B1 1F2 1B2 1F3 1B3",
    ]


def test_1f1b_k4_m4() -> None:
    assert strs("1f1b", 4, 4) == [
        "0F0 0F1 0F2 0F3 0B0 0B1 0B2 0B3",
        "1F0 1F1 1F2 1B0 1F3 1B1 1B2 1B3",
        "2F0 2F1 2B0 2F2 2B1 2F3 2B2 2B3",
        "3F0 3B0 3F1 3B1 3F2 3B2 3F3 3B3",
    ]


def test_interleaved_k2_m4_v2() -> None:
    assert strs("interleaved_1f1b", 2, 4, 2) == [
        "0F0 0F1 2F0 2F1 0F2 2B0 0F3 2B1 2F2 0B0 2F3 0B1 2B2 2B3 0B2 0B3",
        "1F0 1F1 3F0 3B0 3F1 3B1 1F2 1B0 1F3 1B1 3F2 3B2 3F3 3B3 1B2 1B3",
    ]


def test_looped_bfs_k2_m2_v2() -> None:
    assert strs("looped_bfs", 2, 2, 2) == [
        "0F0 0F1 2F0 2F1 2B1 2B0 0B1 0B0",
        "1F0 1F1 3F0 3F1 3B1 3B0 1B1 1B0",
    ]


@pytest.mark.parametrize(
    ("schedule", "k", "m", "v", "match"),
    [
        ("1f1b", 4, 3, 1, "microbatches=3 stages=4"),
        ("gpipe", 2, 4, 2, "stages_per_rank=2"),
        ("interleaved_1f1b", 4, 9, 2, "microbatches=9 ranks=4 rounds=2"),
        ("bogus", 2, 2, 1, "unknown schedule 'bogus'"),
        ("gpipe", 0, 2, 1, "ranks=0"),
    ],
)
def test_validation(schedule: str, k: int, m: int, v: int, match: str) -> None:
    with pytest.raises(PlacementError, match=match):
        validate_schedule(schedule, k, m, v)


def test_action_roundtrip() -> None:
    assert parse_action("12B3") == Action(12, "B", 3)
    assert str(Action(2, "F", 0)) == "2F0"
    with pytest.raises(PlacementError, match="'x'"):
        parse_action("x")


def test_every_action_once_in_dependency_friendly_order() -> None:
    for sched, v in [("gpipe", 1), ("1f1b", 1), ("interleaved_1f1b", 3), ("looped_bfs", 2)]:
        orders = schedule_orders(sched, 3, 6, v)
        for r, ops in enumerate(orders):
            assert sorted(ops) == sorted(
                Action(s, kind, m) for s in range(r, 3 * v, 3) for kind in "FB" for m in range(6)
            )
            for a in ops:  # B after its own F on the same rank
                if a.kind == "B":
                    assert ops.index(Action(a.stage, "F", a.mb)) < ops.index(a)


def test_placements() -> None:
    assert contiguous_placement([3, 2, 2, 2]) == (0, 0, 0, 1, 1, 2, 2, 3, 3)
    assert gnmt_placement(4, 4) == (0, 1, 2, 3, 0, 1, 2, 3, 3)
    assert gnmt_placement(8, 4) == (0, 0, 1, 1, 2, 2, 3, 3) * 2 + (3,)
    assert looped_placement([1, 2, 1, 1], 2) == (0, 1, 1, 0, 1)
    with pytest.raises(PlacementError, match="layers=4 ranks=8"):
        gnmt_placement(4, 8)


def test_group_virtual_stages() -> None:
    groups = group_virtual_stages(gnmt_placement(4, 4), 4)
    assert groups == [[0], [1], [2], [3], [4], [5], [6], [7, 8]]
    assert group_virtual_stages([0, 0, 1, 1, 1], 2) == [[0, 1], [2, 3, 4]]
    with pytest.raises(PlacementError, match=r"runs sit on ranks \[1, 0\]"):
        group_virtual_stages([1, 0], 2)
    with pytest.raises(PlacementError, match=r"ranks \[5\] outside 0..1"):
        group_virtual_stages([0, 5], 2)


# ------------------------------------------------------------------ against torch itself


def _fake_stage(idx: int, n: int, k: int, log: list[str]) -> Any:
    st = SimpleNamespace(num_stages=n, group_size=k, group_rank=0, stage_index=idx)
    st.is_last = idx == n - 1
    for name in ("get_fwd_recv_ops", "get_fwd_send_ops", "get_bwd_recv_ops", "get_bwd_send_ops"):
        setattr(st, name, lambda i: [])
    st.forward_one_chunk = lambda i, *a, **kw: log.append(f"{idx}F{i}")
    st.backward_one_chunk = lambda i, **kw: log.append(f"{idx}B{i}")
    st.perform_reduce_grad = lambda *a: None
    st.clear_runtime_states = lambda: None
    return st


def _torch_single(cls: Any, k: int, m: int) -> list[str]:
    """Run torch's own ``_step_microbatches`` per rank with recording fake stages."""
    out = []
    for r in range(k):
        log: list[str] = []
        sched = cls(_fake_stage(r, k, k, log), m)
        sched._initialize_stage = lambda *a, **kw: None
        sched._step_microbatches()
        out.append(" ".join(log))
    return out


def _torch_multi(cls: Any, k: int, m: int, v: int) -> list[str]:
    """Compute actions of the lowered schedule torch's runtime executes."""
    sched = cls([_fake_stage(j * k, k * v, k, []) for j in range(v)], m)
    return [
        " ".join(str(a) for a in sched.pipeline_order_with_comms[r] if str(a)[-1].isdigit()
                 and a.computation_type.value in ("F", "B"))
        for r in range(k)
    ]  # fmt: skip


@pytest.mark.parametrize(("k", "m"), [(1, 1), (2, 4), (3, 5), (4, 4), (4, 7)])
def test_single_stage_orders_match_torch(k: int, m: int) -> None:
    s = pytest.importorskip("torch.distributed.pipelining.schedules")
    assert strs("gpipe", k, m) == _torch_single(s.ScheduleGPipe, k, m)
    assert strs("1f1b", k, m) == _torch_single(s.Schedule1F1B, k, m)


@pytest.mark.parametrize(("k", "m", "v"), [(2, 4, 2), (4, 8, 2), (4, 6, 2), (4, 3, 2), (3, 6, 3)])
def test_multi_stage_orders_match_torch(k: int, m: int, v: int) -> None:
    s = pytest.importorskip("torch.distributed.pipelining.schedules")
    assert strs("interleaved_1f1b", k, m, v) == _torch_multi(s.ScheduleInterleaved1F1B, k, m, v)
    assert strs("looped_bfs", k, m, v) == _torch_multi(s.ScheduleLoopedBFS, k, m, v)


def test_torch_refuses_what_we_refuse() -> None:
    s = pytest.importorskip("torch.distributed.pipelining.schedules")
    with pytest.raises(PlacementError):
        schedule_orders("interleaved_1f1b", 4, 9, 2)
    with pytest.raises(ValueError, match="multiple of the number of rounds"):
        _torch_multi(s.ScheduleInterleaved1F1B, 4, 9, 2)
    with pytest.raises(ValueError, match="must be greater than"):
        _torch_single(s.Schedule1F1B, 4, 3)
