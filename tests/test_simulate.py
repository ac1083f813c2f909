"""parallel.planning.simulate and parallel.planning.costs: exact step times, memory, orders,
deadlocks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parallel.errors import PlacementError
from parallel.planning.costs import (
    CostTable,
    StageCost,
    analytic_gnmt_costs,
    load_cost_tables,
    save_cost_tables,
)
from parallel.planning.links import LINK_PRESETS, ZERO_LINK, Link, parse_link
from parallel.planning.simulate import build_pipeline, run_orders, simulate
from parallel.schedules import Action, gnmt_placement, parse_action, schedule_orders


def table(
    n: int, f: float = 1.0, b: float = 2.0, batch: int = 8, tied: int = 0, out: int = 1000
) -> CostTable:
    st = tuple(StageCost(f"s{i}", f, b, 10, 10, 20, 100, 10, out) for i in range(n))
    return CostTable("toy", "cpu", "float32", 8, 8, 1, batch, st, tied_param_bytes=tied)


@pytest.mark.parametrize(("k", "m"), [(2, 4), (4, 8), (3, 5), (4, 1), (1, 3)])
def test_gpipe_bubble_exact(k: int, m: int) -> None:
    r = simulate(table(k, batch=m), list(range(k)), "gpipe", m, ZERO_LINK)
    assert r.step_ms == (m + k - 1) * 3.0
    assert r.bubble_frac == pytest.approx((k - 1) / (m + k - 1), abs=1e-12)
    assert r.busy_ms == (3.0 * m,) * k
    assert r.peak_bytes == (40 + 100 * m,) * k  # static + all M activations


def test_1f1b_same_time_less_memory() -> None:
    r = simulate(table(4, batch=8), [0, 1, 2, 3], "1f1b", 8, ZERO_LINK)
    assert r.step_ms == 11 * 3.0
    assert r.peak_bytes == (440, 340, 240, 140)  # static 40 + (K - rank) in flight


@pytest.mark.parametrize(("sched", "k", "m", "v"), [("gpipe", 3, 4, 1), ("1f1b", 3, 4, 1),
                                                    ("interleaved_1f1b", 2, 4, 2),
                                                    ("looped_bfs", 2, 3, 3)])  # fmt: skip
def test_executed_orders_are_the_schedule(sched: str, k: int, m: int, v: int) -> None:
    placement = [j % k for j in range(k * v)]
    r = simulate(table(k * v, batch=m), placement, sched, m, LINK_PRESETS["pcie"])
    assert [list(o) for o in r.orders] == schedule_orders(sched, k, m, v)
    for e in r.events:  # nothing runs before its input exists
        assert e.start_ms >= 0 and e.end_ms > e.start_ms


def test_link_latency_and_bandwidth() -> None:
    link = Link("x", 1e6, 1e-3)  # 1 MB/s, 1 ms: 1000 bytes -> 2 ms
    assert link.transfer_ms(1000) == pytest.approx(2.0)
    assert link.transfer_ms(0) == 0.0
    r = simulate(table(2, batch=1), [0, 1], "gpipe", 1, link)
    assert r.step_ms == pytest.approx(1 + 2 + 1 + 2 + 2 + 2)  # F0 x F1 B1 x B0
    same = simulate(table(2, batch=1), [0, 0], "gpipe", 1, link)
    assert same.step_ms == pytest.approx(6.0)


def test_deadlock_is_an_error() -> None:
    pipe = build_pipeline(table(2), [[0], [1]], [0, 1], 2)
    bad = [[Action(0, "B", 0), Action(0, "F", 0)], [Action(1, "F", 0), Action(1, "B", 0)]]
    with pytest.raises(PlacementError, match="deadlocks; blocked actions rank0:0B0 rank1:1F0"):
        run_orders(pipe, bad, 1, ZERO_LINK)
    with pytest.raises(PlacementError, match="missing actions"):
        run_orders(pipe, [[Action(0, "F", 0)], []], 1, ZERO_LINK)


def test_custom_orders_replay() -> None:
    orders = [[parse_action(a) for a in o] for o in (["0F0", "0B0"], ["1F0", "1B0"])]
    r = simulate(table(2, batch=1), [0, 1], "custom", 1, ZERO_LINK, orders=orders)
    assert r.step_ms == 6.0


def test_recompute_and_tied_allreduce() -> None:
    t = table(2, batch=2, tied=1_000_000)
    link = Link("x", 1e9, 0.0)  # 1 GB/s: 1 MB tied gradient -> 1 ms (2-rank ring)
    r = simulate(t, [0, 1], "gpipe", 2, link)
    # F F . / . F F; B on the last rank, B on the first; + tied all-reduce
    assert r.step_ms == pytest.approx(1e-3 * 2 + (1 + 1 + 1) + (2 + 2 + 2) + 1.0, abs=1e-9)
    assert r.comm_ms == pytest.approx((1.0, 1.0))
    rc = simulate(t, [0, 1], "gpipe", 2, ZERO_LINK, recompute=True)
    assert rc.busy_ms == (2 * (1 + 3),) * 2  # backward re-runs the forward
    assert rc.peak_bytes == (40 + 10 + 100, 40 + 10 + 100)  # kept 10/mb + one re-materialised
    one = simulate(t, [0, 0], "gpipe", 2, ZERO_LINK)
    assert one.static_bytes == (80 - 4_000_000,)  # one tied copy: param+grad+2 Adam


def test_greedy_matches_1f1b_and_handles_any_placement() -> None:
    t = table(4, batch=8)
    assert simulate(t, [0, 1, 2, 3], "greedy", 8, ZERO_LINK).step_ms == 33.0
    r = simulate(t, [1, 0, 1, 0], "greedy", 4, LINK_PRESETS["eth100"])
    assert sorted(a for o in r.orders for a in o) == sorted(
        Action(s, kind, m) for s in range(4) for kind in "FB" for m in range(4)
    )
    assert r.virtual_stages == ((0,), (1,), (2,), (3,))


def test_simulate_argument_errors() -> None:
    t = table(3, batch=6)
    with pytest.raises(PlacementError, match="placement has 2 stages, cost table has 3"):
        simulate(t, [0, 1], "gpipe", 2, ZERO_LINK)
    with pytest.raises(PlacementError, match="batch 6 does not split into microbatches=4"):
        simulate(t, [0, 1, 2], "gpipe", 4, ZERO_LINK)
    with pytest.raises(PlacementError, match="not runnable"):
        simulate(t, [0, 1, 0], "gpipe", 2, ZERO_LINK)


def test_parse_link() -> None:
    assert parse_link("nvlink") == LINK_PRESETS["nvlink"]
    custom = parse_link("custom:50:2")
    assert (custom.bandwidth_bytes_per_s, custom.latency_s) == (50e9, 2e-6)
    assert custom.spec == "custom:50:2"
    with pytest.raises(PlacementError, match="bad link 'custom:-1:2'"):
        parse_link("custom:-1:2")


# ---------------------------------------------------------------------------- cost tables


def test_cost_table_roundtrip_and_errors(tmp_path: Path) -> None:
    t = analytic_gnmt_costs(4, 64, 100, 8, 9, 16, 4, 1e9, 1e-6)
    p = tmp_path / "c.json"
    save_cost_tables(p, [t])
    assert load_cost_tables(p) == [t]
    doc = json.loads(p.read_text())
    doc["version"] = 99
    p.write_text(json.dumps(doc))
    with pytest.raises(PlacementError, match="version 99, expected 1"):
        load_cost_tables(p)
    doc["version"] = 1
    doc["tables"][0]["stages"][2]["fwd_ms"] = -1
    p.write_text(json.dumps(doc))
    with pytest.raises(PlacementError, match="table 0 stage 2: field fwd_ms=-1"):
        load_cost_tables(p)


def test_analytic_gnmt_and_scaling() -> None:
    t = analytic_gnmt_costs(4, 1024, 8000, 32, 32, 128, 128, 1e12, 10e-6)
    names = [s.name for s in t.stages]
    assert names == ["Embed+Enc1", "Enc2", "Enc3", "Enc4", "Dec1+Attention",
                     "Dec2", "Dec3", "Dec4", "Generator"]  # fmt: skip
    enc3 = t.stages[2]
    assert enc3.fwd_ms == pytest.approx(16 * 1024**2 * 32 * 128 / 1e12 * 1e3)  # 8*(in+H)*H*tok
    assert enc3.bwd_ms == 2 * enc3.fwd_ms
    assert t.stages[-1].out_bytes_per_mb == 0
    assert t.tied_param_bytes == 4 * 1024 * 8000
    small = t.at_micro_batch(1).stages[2]
    assert small.fwd_ms == enc3.fwd_floor_ms == pytest.approx(2 * 32 * 10e-3)  # latency floor
    half = t.for_microbatches(2).stages[2]
    assert half.fwd_ms == pytest.approx(enc3.fwd_ms / 2)
    assert half.act_bytes_per_mb == enc3.act_bytes_per_mb // 2


def test_gnmt_placement_simulates() -> None:
    t = analytic_gnmt_costs(4, 256, 1000, 16, 16, 64, 64, 1e11)
    r = simulate(t, gnmt_placement(4, 4), "interleaved_1f1b", 8, LINK_PRESETS["nvlink"])
    assert len(r.virtual_stages) == 8 and r.virtual_stages[-1] == (7, 8)
    assert 0 < r.bubble_frac < 1
