"""parallel.planning.costs_transformer: the analytic Transformer cost table (stages, FLOPs, launch
floor, parameters checked against torch modules, boundary sizes, errors)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from parallel.errors import PlacementError
from parallel.partition import balanced_runs
from parallel.planning.costs import CostTable, analytic_gnmt_costs
from parallel.planning.costs_transformer import (
    DEC_LAYER_LAUNCHES,
    ENC_LAYER_LAUNCHES,
    _transformer_work,
    analytic_transformer_costs,
    transformer_stage_names,
)
from parallel.planning.links import ZERO_LINK
from parallel.planning.simulate import simulate
from parallel.schedules import contiguous_placement

H, HEADS, FFN, V = 64, 4, 256, 100


def costs(**kw: Any) -> CostTable:
    args: dict[str, Any] = dict(
        enc_layers=3, dec_layers=3, hidden=H, heads=HEADS, ffn=FFN, vocab=V, src_len=8,
        tgt_len=10, batch=16, micro_batch=4, flops_per_s=1e9, launch_s=1e-6,
    )  # fmt: skip
    args.update(kw)
    return analytic_transformer_costs(**args)


def flops(ts: int = 8, tt: int = 10, b: int = 4, enc: int = 3, dec: int = 3) -> list[float]:
    return [w.flops for w in _transformer_work(enc, dec, H, HEADS, FFN, V, ts, tt, b)]


def n_params(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def by_name(t: CostTable) -> dict[str, int]:
    return {s.name: s.param_bytes // 4 for s in t.stages}


def test_stage_names_and_count() -> None:
    t = costs(enc_layers=4, dec_layers=2)
    names = ["Embed+Enc1", "Enc2", "Enc3", "Enc4", "Dec1", "Dec2", "Generator"]
    assert [s.name for s in t.stages] == names == transformer_stage_names(4, 2)
    assert t.num_stages == 4 + 2 + 1
    assert t.model == "transformer4x2" and t.source == "analytic"
    one = costs(enc_layers=1, dec_layers=1)
    assert [s.name for s in one.stages] == ["Embed+Enc1", "Dec1", "Generator"]


def test_flops_linear_in_micro_batch() -> None:
    base = flops(b=1)
    for b in (2, 3, 7):
        assert flops(b=b) == [b * f for f in base]
    # the table's roofline rescaling agrees with building the table at that micro-batch
    t, t4 = costs(micro_batch=16, launch_s=0.0), costs(micro_batch=4, launch_s=0.0)
    for a, c in zip(t.at_micro_batch(4).stages, t4.stages, strict=True):
        assert a.fwd_ms == pytest.approx(c.fwd_ms) and a.bwd_ms == pytest.approx(c.bwd_ms)
        assert a.act_bytes_per_mb == c.act_bytes_per_mb
        assert a.out_bytes_per_mb == c.out_bytes_per_mb


def test_flops_in_tokens() -> None:
    """Projections/FFN/generator are linear in the tokens, attention scores quadratic (a
    constant second difference in the length); each side only depends on its own length."""
    names = transformer_stage_names(3, 3)
    gen = names.index("Generator")
    assert flops(tt=20)[gen] == 2 * flops(tt=10)[gen]
    assert flops(ts=16)[gen] == flops(ts=8)[gen]
    for i in range(3):  # encoder stages do not see the target length
        assert flops(tt=30)[i] == flops(tt=10)[i]
    for i, name in enumerate(names[:-1]):
        key = "ts" if name.startswith(("Embed", "Enc")) else "tt"
        f = [flops(**{key: n})[i] for n in (8, 16, 24, 32)]
        d2 = [f[j + 2] - 2 * f[j + 1] + f[j] for j in range(2)]
        assert d2[0] == d2[1] > 0  # the T^2 attention term, nothing of higher order
    # encoder layer: 2 FLOPs per weight-matrix entry per token + scores/context 4*T*H
    ts, b = 8, 4
    weights = 4 * H * H + 2 * H * FFN
    assert flops(ts=ts, b=b)[1] == ts * b * (2 * weights + 4 * ts * H)
    # decoder layer: self 4 projections, cross q/o on target and k/v on source tokens
    tt = 10
    dec = tt * b * (2 * (4 * H * H + 2 * H * H + 2 * H * FFN) + 4 * tt * H + 4 * ts * H)
    assert flops(ts=ts, tt=tt, b=b)[3] == dec + ts * b * 2 * 2 * H * H


def test_launch_floor_independent_of_length() -> None:
    a, b = costs(src_len=8, tgt_len=8), costs(src_len=64, tgt_len=96)
    assert [s.fwd_floor_ms for s in a.stages] == [s.fwd_floor_ms for s in b.stages]
    assert a.stages[1].fwd_floor_ms == pytest.approx(ENC_LAYER_LAUNCHES * 1e-3)
    assert a.stages[4].fwd_floor_ms == pytest.approx(DEC_LAYER_LAUNCHES * 1e-3)
    assert all(s.bwd_floor_ms == 2 * s.fwd_floor_ms for s in a.stages)
    # and of the micro-batch: the floor is what micro-batching cannot shrink
    assert [s.fwd_floor_ms for s in costs(micro_batch=1).stages] == [
        s.fwd_floor_ms for s in a.stages
    ]
    # contrast: an LSTM layer launches per time step, so GNMT's floor grows with the length
    g8 = analytic_gnmt_costs(3, H, V, 8, 8, 16, 4, 1e9, 1e-6)
    g64 = analytic_gnmt_costs(3, H, V, 64, 64, 16, 4, 1e9, 1e-6)
    for s8, s64 in zip(g8.stages[:-1], g64.stages[:-1], strict=True):
        assert s64.fwd_floor_ms == pytest.approx(8 * s8.fwd_floor_ms)


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")
def test_params_equal_torch_modules() -> None:
    torch.manual_seed(0)
    t = by_name(costs())
    enc = nn.TransformerEncoderLayer(H, HEADS, FFN, norm_first=True)
    dec = nn.TransformerDecoderLayer(H, HEADS, FFN, norm_first=True)
    emb, norm, gen = nn.Embedding(V, H), nn.LayerNorm(H), nn.Linear(H, V)
    # torch's layers have a key bias (H per attention) that ours leave out
    assert t["Enc2"] == n_params(enc) - H
    assert t["Dec1"] == t["Dec2"] == n_params(dec) - 2 * H
    assert t["Embed+Enc1"] == n_params(emb, enc) - H
    assert t["Enc3"] == n_params(enc, norm) - H  # the final encoder LayerNorm
    assert t["Dec3"] == n_params(dec, norm) - 2 * H  # the final decoder LayerNorm
    assert t["Generator"] == n_params(gen)
    # the whole model: torch's Transformer (with its final norms) + embedding + generator bias
    full = nn.Transformer(H, HEADS, 3, 3, FFN, norm_first=True)
    tab = costs()
    assert tab.tied_param_bytes == 4 * H * V
    total = sum(s.param_bytes for s in tab.stages) - tab.tied_param_bytes
    assert total // 4 == n_params(full) + V * H + V - 9 * H  # 9 attentions
    one = by_name(costs(enc_layers=1, dec_layers=1))
    assert one["Embed+Enc1"] == n_params(emb, enc, norm) - H
    assert one["Dec1"] == n_params(dec, norm) - 2 * H


@pytest.mark.parametrize(("enc", "dec"), [(3, 3), (1, 2)])
def test_params_equal_the_project_transformer_stages(enc: int, dec: int) -> None:
    """Stage by stage, the parameters of nmt.models.transformer's own stages (the tied embedding
    counted in Embed+Enc1 and in the Generator, as the cost table does)."""
    from nmt.models.seq2seq import ModelSpec
    from nmt.models.transformer import stages_from_spec

    spec = ModelSpec(arch="transformer", hidden=H, heads=HEADS, ffn=FFN, enc_layers=enc,
                     dec_layers=dec)  # fmt: skip
    stages = stages_from_spec(spec, V, 0, None)
    t = by_name(costs(enc_layers=enc, dec_layers=dec))
    assert [s.name for s in stages] == list(t)
    for s in stages:
        assert t[s.name] == sum(p.numel() for p in s.parameters()), s.name


def test_memory_and_boundaries() -> None:
    b, ts, tt = 4, 8, 10
    t = costs(dtype="bfloat16")
    for s in t.stages:
        assert s.grad_bytes == s.param_bytes and s.optimizer_bytes == 2 * s.param_bytes
        assert 0 < s.act_bytes_per_mb_recompute < s.act_bytes_per_mb
    sent = 4 * (ts * b * H + tt * b * H)  # fp32 h/x + emb_tgt/enc_out (the residual stream)
    outs = [s.out_bytes_per_mb for s in t.stages]
    assert outs == [sent + 8 * b] * 5 + [sent, 0]  # the last decoder drops src_len
    fp32 = costs(dtype="float32")
    assert fp32.stages[1].out_bytes_per_mb == sent + 8 * b
    assert fp32.stages[1].act_bytes_per_mb == 2 * t.stages[1].act_bytes_per_mb
    # the generator is the GNMT one (same FLOPs, parameters and activations)
    g = analytic_gnmt_costs(3, H, V, 8, 10, 16, 4, 1e9, 1e-6, dtype="bfloat16").stages[-1]
    assert (g.fwd_ms, g.param_bytes, g.act_bytes_per_mb) == (
        t.stages[-1].fwd_ms,
        t.stages[-1].param_bytes,
        t.stages[-1].act_bytes_per_mb,
    )


def test_boundary_bytes_are_what_the_project_stages_send_under_bf16_autocast() -> None:
    """The bytes each nmt.models.transformer stage actually outputs under CPU bf16 autocast (the
    pipelined-training setting) equal the table's ``out_bytes_per_mb``."""
    from nmt.models.seq2seq import ModelSpec
    from nmt.models.transformer import stages_from_spec

    b, ts, tt = 4, 8, 10
    spec = ModelSpec(arch="transformer", hidden=H, heads=HEADS, ffn=FFN, enc_layers=3,
                     dec_layers=3, dropout=0.0)  # fmt: skip
    torch.manual_seed(0)
    stages = stages_from_spec(spec, V, 0, None)
    x: tuple[torch.Tensor, ...] = (
        torch.randint(4, V, (ts, b)), torch.full((b,), ts), torch.randint(4, V, (tt, b)),
    )  # fmt: skip
    sent = []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for stage in stages:
            out = stage(*x)
            x = out if isinstance(out, tuple) else (out,)
            sent.append(sum(t.numel() * t.element_size() for t in x))
    table = costs(dtype="bfloat16", src_len=ts, tgt_len=tt, micro_batch=b)
    assert [s.out_bytes_per_mb for s in table.stages[:-1]] == sent[:-1]


def test_roundtrips_and_simulates(tmp_path: Any) -> None:
    from parallel.planning.costs import load_cost_tables, save_cost_tables

    t = costs(launch_s=0.0, micro_batch=16)
    save_cost_tables(tmp_path / "t.json", [t])
    assert load_cost_tables(tmp_path / "t.json") == [t]
    one = simulate(t, [0] * t.num_stages, "gpipe", 1, ZERO_LINK).step_ms
    place = contiguous_placement(balanced_runs([s.fwd_ms + s.bwd_ms for s in t.stages], 4))
    piped = simulate(t, place, "1f1b", 16, ZERO_LINK, num_ranks=4).step_ms
    assert one / piped > 2.0  # FLOP-bound layers: micro-batching fills the pipeline


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"heads": 5}, "hidden=64 is not divisible by heads=5"),
        ({"enc_layers": 0}, "enc_layers=0 dec_layers=3"),
        ({"dec_layers": 0}, "dec_layers=0"),
        ({"micro_batch": 0}, "micro_batch=0"),
        ({"ffn": -1}, "ffn=-1"),
        ({"src_len": 0}, "src_len=0"),
        ({"flops_per_s": 0.0}, "flops_per_s=0.0"),
        ({"launch_s": -1.0}, "launch_s=-1.0"),
        ({"dtype": "int4"}, "unknown dtype 'int4'"),
    ],
)
def test_bad_sizes(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(PlacementError, match=match) as e:
        costs(**kw)
    for k, v in kw.items():
        if k != "dtype":
            assert e.value.values[k] == v
