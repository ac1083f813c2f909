"""parallel.planning.wavefront_sim: time-chunk wavefront makespans, hand-worked and closed forms."""

from __future__ import annotations

from dataclasses import replace

import pytest

from parallel.errors import PlacementError
from parallel.planning.costs import CostTable, StageCost, analytic_gnmt_costs
from parallel.planning.links import LINK_PRESETS, ZERO_LINK, Link
from parallel.planning.plan import single_device_ms
from parallel.planning.wavefront_sim import (
    ChunkOverhead,
    WaveLayer,
    WaveResult,
    chunk_lengths,
    chunk_ms,
    gnmt_wave_layers,
    simulate_gnmt_wavefront,
    simulate_wavefront,
)

SLOW = Link("test", 1e5, 0.0)  # 100 bytes per ms, no latency


def equal(k: int, steps: int, f: float = 1.0, b: float = 2.0) -> list[WaveLayer]:
    return [WaveLayer(f"L{i}", f, b, 100, steps) for i in range(k)]


@pytest.mark.parametrize(("k", "c", "steps"), [(1, 4, 8), (2, 2, 8), (4, 8, 32), (8, 4, 32),
                                               (3, 5, 10), (4, 32, 32), (4, 1, 32)])  # fmt: skip
def test_closed_form_equal_stages(k: int, c: int, steps: int) -> None:
    """K equal stages of t = fwd + bwd, no overhead, free links: (C + K - 1) * t / C."""
    r = simulate_wavefront(equal(k, steps), list(range(k)), c, ZERO_LINK)
    assert r.step_ms == pytest.approx((c + k - 1) * 3.0 / c, rel=1e-12)
    assert r.busy_ms == pytest.approx((3.0,) * k, rel=1e-12)
    assert r.bubble_frac == pytest.approx((k - 1) / (c + k - 1), abs=1e-12)
    assert r.busy_frac == pytest.approx((c / (c + k - 1),) * k, rel=1e-12)


@pytest.mark.parametrize(("k", "c", "steps"), [(4, 3, 10), (2, 4, 7), (3, 5, 11), (5, 8, 9)])
def test_t_not_divisible_by_c(k: int, c: int, steps: int) -> None:
    """Uneven chunks: a flow shop of equal stages, sum of chunk times + (K - 1) * longest."""
    lens = chunk_lengths(steps, c)
    assert sum(lens) == steps and max(lens) - min(lens) == 1 and lens == sorted(lens)[::-1]
    r = simulate_wavefront(equal(k, steps), list(range(k)), c, ZERO_LINK)
    assert r.step_ms == pytest.approx(3.0 + (k - 1) * 3.0 * max(lens) / steps, rel=1e-12)
    assert r.step_ms > (c + k - 1) * 3.0 / c  # the long chunks cost more than the closed form


def test_c1_is_the_sequential_sum() -> None:
    t = analytic_gnmt_costs(3, 64, 500, 6, 7, 8, 8, 1e9, 1e-5)
    total = sum(s.fwd_ms + s.bwd_ms for s in t.stages)
    ov = ChunkOverhead(0.3, 0.7)
    one = simulate_gnmt_wavefront(t, [0] * t.num_stages, 1, LINK_PRESETS["pcie"], ov)
    assert one.step_ms == pytest.approx(total, rel=1e-12)
    assert one.step_ms == pytest.approx(single_device_ms([t], LINK_PRESETS["pcie"]), rel=1e-12)
    # C = 1 on several devices: the same chain, plus the transfers and the tied all-reduce
    spread = simulate_gnmt_wavefront(t, list(range(t.num_stages)), 1, ZERO_LINK, ov)
    assert spread.step_ms == pytest.approx(total, rel=1e-12)
    # one device, C chunks: every chunked layer pays C - 1 extra calls, nothing overlaps
    four = simulate_gnmt_wavefront(t, [0] * t.num_stages, 4, ZERO_LINK, ov)
    chunked = t.num_stages - 1  # all but the bidirectional Embed+Enc1
    assert four.step_ms == pytest.approx(total + 3 * chunked * ov.total_ms, rel=1e-12)


def test_hand_worked_example() -> None:
    """bi layer (whole) -> LSTM -> LSTM on three devices, C = 2, overhead 0.5 / 1 ms,
    100 bytes per ms.  Worked by hand:
    F(0) 0-2, whole output 400 B = 4 ms -> F(1,0) 6-8.25, F(1,1) 8.25-10.5 (chunk: 0.5 +
    3.5 * 2/4 = 2.25); 200 B = 2 ms -> F(2,0) 10.25-12.5, F(2,1) 12.5-14.75; backward (chunk:
    1 + 7 * 2/4 = 4.5) B(2,1) 14.75-19.25, B(2,0) 19.25-23.75, B(1,1) 21.25-25.75,
    B(1,0) 25.75-30.25, gradients of both chunks + 2 ms -> B(0) 32.25-36.25."""
    layers = [WaveLayer("bi", 2.0, 4.0, 400, 4, recurrent=False, whole=True),
              WaveLayer("l1", 4.0, 8.0, 400, 4), WaveLayer("l2", 4.0, 8.0, 400, 4)]  # fmt: skip
    r = simulate_wavefront(layers, [0, 1, 2], 2, SLOW, ChunkOverhead(0.5, 1.0))
    got = [(e.device, e.layer, e.kind, e.chunk, e.start_ms, e.end_ms) for e in r.events]
    assert got == [
        (0, 0, "F", 0, 0.0, 2.0),
        (1, 1, "F", 0, 6.0, 8.25),
        (1, 1, "F", 1, 8.25, 10.5),
        (2, 2, "F", 0, 10.25, 12.5),
        (2, 2, "F", 1, 12.5, 14.75),
        (2, 2, "B", 1, 14.75, 19.25),
        (2, 2, "B", 0, 19.25, 23.75),
        (1, 1, "B", 1, 21.25, 25.75),
        (1, 1, "B", 0, 25.75, 30.25),
        (0, 0, "B", 0, 32.25, 36.25),
    ]
    assert r.step_ms == 36.25
    assert r.busy_ms == (6.0, 13.5, 13.5)
    assert r.busy_frac == pytest.approx((6 / 36.25, 13.5 / 36.25, 13.5 / 36.25))


def test_gather_is_a_barrier() -> None:
    """The attention layer starts after every chunk below it, and sends its gradient back
    only after its last backward chunk: encoder 0-2, decoder 2-8, encoder backward 8-10."""
    layers = [WaveLayer("enc", 2.0, 2.0, 100, 4), WaveLayer("att", 2.0, 4.0, 0, 2, gather=True)]
    r = simulate_wavefront(layers, [0, 1], 2, ZERO_LINK)
    got = [(e.layer, e.kind, e.chunk, e.start_ms, e.end_ms) for e in r.events]
    assert got == [(0, "F", 0, 0.0, 1.0), (0, "F", 1, 1.0, 2.0), (1, "F", 0, 2.0, 3.0),
                   (1, "F", 1, 3.0, 4.0), (1, "B", 1, 4.0, 6.0), (1, "B", 0, 6.0, 8.0),
                   (0, "B", 1, 8.0, 9.0), (0, "B", 0, 9.0, 10.0)]  # fmt: skip
    with pytest.raises(PlacementError, match="without a barrier"):
        simulate_wavefront([layers[0], WaveLayer("x", 1.0, 1.0, 0, 2)], [0, 1], 2, ZERO_LINK)


def test_split_layer_runs_on_every_device() -> None:
    """A split encoder (F 4, B 8 ms; 400 B out) on two devices, then an attention layer on
    device 0, 100 bytes per ms. Worked by hand: each device encodes half, 0-2; device 1's
    half (200 B) arrives at 4: attention 4-6, its backward 6-8; device 1's gradient arrives
    at 10: encoder backward 8-12 on device 0, 10-14 on device 1. Not split: 0-4, 4-6, 6-8,
    8-16."""
    enc = WaveLayer("enc", 4.0, 8.0, 400, 4, recurrent=False, whole=True, split=True)
    att = WaveLayer("att", 2.0, 2.0, 0, 4, gather=True)
    r = simulate_wavefront([enc, att], [0, 0], 1, SLOW, num_devices=2)
    got = [(e.device, e.layer, e.kind, e.start_ms, e.end_ms) for e in r.events]
    assert got == [(0, 0, "F", 0.0, 2.0), (1, 0, "F", 0.0, 2.0), (0, 1, "F", 4.0, 6.0),
                   (0, 1, "B", 6.0, 8.0), (0, 0, "B", 8.0, 12.0),
                   (1, 0, "B", 10.0, 14.0)]  # fmt: skip
    assert r.step_ms == 14.0 and r.busy_ms == (10.0, 6.0)
    whole = simulate_wavefront([replace(enc, split=False), att], [0, 0], 1, SLOW)
    assert whole.step_ms == 16.0


def busy_events(r: WaveResult) -> list[tuple[int, int, str, int, float, float]]:
    """(device, layer, kind, chunk, start, end) of the events that take time."""
    return [(e.device, e.layer, e.kind, e.chunk, e.start_ms, e.end_ms) for e in r.events
            if e.end_ms > e.start_ms]  # fmt: skip


def test_split_generator_shares_its_chunks() -> None:
    """A decoder layer (F 4, B 4 ms, 2 steps) on device 1, its generator split half and half
    over devices 0 and 1, C = 2, no link cost. Worked by hand: decoder 0-2, 2-4; device 0's
    half (1 ms a chunk) last chunk first, 4-5 and 5-6; device 1's half of a chunk just before
    the decoder's backward of that chunk: chunk 1 at 4-5, backward 5-7, chunk 0 at 7-8,
    backward 8-10. Not split: generator of chunk 1 4-6, backward 6-8, generator of chunk 0
    8-10, backward 10-12."""
    dec = WaveLayer("dec", 4.0, 4.0, 0, 2)
    gen = WaveLayer("gen", 4.0, 0.0, 0, 2, recurrent=False, chunk_loss=True)
    r = simulate_wavefront([dec, replace(gen, split=True)], [1, 1], 2, ZERO_LINK, num_devices=2)
    got = busy_events(r)
    assert got == [(1, 0, "F", 0, 0.0, 2.0), (1, 0, "F", 1, 2.0, 4.0), (0, 1, "F", 1, 4.0, 5.0),
                   (1, 1, "F", 1, 4.0, 5.0), (0, 1, "F", 0, 5.0, 6.0), (1, 0, "B", 1, 5.0, 7.0),
                   (1, 1, "F", 0, 7.0, 8.0), (1, 0, "B", 0, 8.0, 10.0)]  # fmt: skip
    assert r.step_ms == 10.0
    assert simulate_wavefront([dec, gen], [1, 1], 2, ZERO_LINK, num_devices=2).step_ms == 12.0
    with pytest.raises(PlacementError, match="shares"):
        simulate_wavefront([dec, replace(gen, split=True, shares=(0.5, 0.6))], [1, 1], 2,
                           ZERO_LINK, num_devices=2)  # fmt: skip


def test_generator_share_runs_in_the_backward_below() -> None:
    """A decoder layer (F 4, B 4 ms, 2 steps) on device 0, the generator's home device 1,
    half its sentences on device 0, C = 2, no link cost. Worked by hand: decoder 0-2, 2-4;
    device 1's half 2-3, 4-5; device 0's half of chunk 1 at 4-5, then the decoder's backward
    of chunk 1 5-7, the half of chunk 0 7-8, the backward of chunk 0 8-10."""
    dec = WaveLayer("dec", 4.0, 4.0, 0, 2)
    gen = WaveLayer("gen", 4.0, 0.0, 0, 2, recurrent=False, chunk_loss=True, split=True)
    r = simulate_wavefront([dec, gen], [0, 1], 2, ZERO_LINK)
    got = busy_events(r)
    assert got == [(0, 0, "F", 0, 0.0, 2.0), (0, 0, "F", 1, 2.0, 4.0), (1, 1, "F", 0, 2.0, 3.0),
                   (0, 1, "F", 1, 4.0, 5.0), (1, 1, "F", 1, 4.0, 5.0), (0, 0, "B", 1, 5.0, 7.0),
                   (0, 1, "F", 0, 7.0, 8.0), (0, 0, "B", 0, 8.0, 10.0)]  # fmt: skip
    assert r.step_ms == 10.0


def test_gnmt_layers_and_barriers() -> None:
    t = analytic_gnmt_costs(4, 64, 500, 6, 7, 8, 8, 1e9, 1e-5)
    layers = gnmt_wave_layers(t)
    assert [(x.whole, x.gather, x.recurrent, x.steps) for x in layers] == [
        (True, False, False, 6), *[(False, False, True, 6)] * 3, (False, True, True, 7),
        *[(False, False, True, 7)] * 3, (False, False, False, 7)]  # fmt: skip
    r = simulate_gnmt_wavefront(t, (0, 1, 2, 3, 0, 1, 2, 3, 3), 3, LINK_PRESETS["nvlink"])
    by = {(e.layer, e.kind, e.chunk): e for e in r.events}
    enc_done = max(e.end_ms for e in r.events if e.layer == 3 and e.kind == "F")
    assert by[(1, "F", 0)].start_ms >= by[(0, "F", 0)].end_ms  # bi layer: whole sequence
    assert by[(4, "F", 0)].start_ms >= enc_done  # attention: every encoder chunk
    assert r.comm_ms[0] > 0 and r.comm_ms[3] > 0  # tied embedding/generator all-reduce
    mystery = StageCost("Mystery", 1, 1, 0, 0, 0, 0, 0, 0)
    bad = CostTable("x", "cpu", "float32", 4, 4, 1, 1, (mystery,))
    with pytest.raises(PlacementError, match="unknown GNMT stage"):
        gnmt_wave_layers(bad)


def test_chunk_cost_and_errors() -> None:
    assert chunk_ms(10.0, 1.0, 8, 32) == 1.0 + 9.0 * 8 / 32
    assert chunk_ms(10.0, 1.0, 32, 32) == 10.0  # one call: the measured time
    assert chunk_ms(0.5, 1.0, 1, 4) == 0.5  # overhead capped at the layer's own time
    assert chunk_lengths(10, 3) == [4, 3, 3]
    for c in (0, 9):
        with pytest.raises(PlacementError, match="time chunks"):
            chunk_lengths(8, c)
    with pytest.raises(PlacementError, match="outside devices"):
        simulate_wavefront(equal(2, 4), [0, 2], 2, ZERO_LINK, num_devices=2)
    with pytest.raises(PlacementError, match="entries"):
        simulate_wavefront(equal(2, 4), [0], 2, ZERO_LINK)
    with pytest.raises(PlacementError, match=">= 0"):
        simulate_wavefront(equal(2, 4), [0, 1], 2, ZERO_LINK, ChunkOverhead(-1.0, 0.0))


def test_helper_share_runs_before_its_own_backward() -> None:
    """Dec1 on device 0, Dec2 and the generator on device 1, half the generator's sentences
    on device 0, C = 3: device 0 runs its whole share (last chunk first) before its own
    backward, as the runtime does, though Dec1's backward of chunk 2 is ready earlier."""
    d1, d2 = WaveLayer("d1", 3.0, 3.0, 0, 3), WaveLayer("d2", 3.0, 3.0, 0, 3)
    gen = WaveLayer("gen", 12.0, 0.0, 0, 3, recurrent=False, chunk_loss=True, split=True)
    r = simulate_wavefront([d1, d2, gen], [0, 1, 1], 3, ZERO_LINK)
    on_0 = [(layer, kind, c) for dev, layer, kind, c, _, _ in busy_events(r) if dev == 0]
    assert on_0 == [(0, "F", 0), (0, "F", 1), (0, "F", 2), (2, "F", 2), (2, "F", 1),
                    (2, "F", 0), (0, "B", 2), (0, "B", 1), (0, "B", 0)]  # fmt: skip


def test_attention_split_reads_each_device_part() -> None:
    """``parallel.attention_split``: a split encoder (F 4, B 8 ms; a quarter of the
    sentences on device 0), Dec1 (LSTM and device 0's attention) on device 0 reading device
    0's part, the attention of device 1's part on device 1, C = 2, no link cost. Worked by
    hand: Dec1 starts when device 0's part is done (1), not device 1's (3); the attention
    of chunk c after Dec1's chunk c and device 1's part; each encoder part's backward after
    the backward of its own reader only: device 1's at 7, while Dec1's backward runs to 8."""
    enc = WaveLayer("enc", 4.0, 8.0, 400, 4, recurrent=False, whole=True, split=True,
                    shares=(0.25, 0.75))  # fmt: skip
    dec1 = WaveLayer("dec1", 2.0, 2.0, 0, 2, gather=True, memory_parts=(0,))
    att = WaveLayer("att", 2.0, 2.0, 0, 2, recurrent=False, gather=True, memory_from=2,
                    memory_parts=(1,))  # fmt: skip
    r = simulate_wavefront([enc, dec1, att], [0, 0, 1], 2, ZERO_LINK)
    got = [(e.device, e.layer, e.kind, e.chunk, e.start_ms, e.end_ms) for e in r.events]
    assert got == [(0, 0, "F", 0, 0.0, 1.0), (1, 0, "F", 0, 0.0, 3.0), (0, 1, "F", 0, 1.0, 2.0),
                   (0, 1, "F", 1, 2.0, 3.0), (1, 2, "F", 0, 3.0, 4.0), (1, 2, "F", 1, 4.0, 5.0),
                   (1, 2, "B", 1, 5.0, 6.0), (0, 1, "B", 1, 6.0, 7.0), (1, 2, "B", 0, 6.0, 7.0),
                   (1, 0, "B", 0, 7.0, 13.0), (0, 1, "B", 0, 7.0, 8.0),
                   (0, 0, "B", 0, 8.0, 10.0)]  # fmt: skip
    assert r.step_ms == 13.0
    with pytest.raises(PlacementError, match="memory_from"):
        simulate_wavefront([dec1, replace(att, memory_from=3)], [0, 1], 2, ZERO_LINK)
