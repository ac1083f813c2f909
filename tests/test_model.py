"""GNMT stages: boundary contract, tying, padding, incremental decoding, int8."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from nmt.models.attention import BahdanauAttention
from nmt.models.gnmt import GNMT, build_stages, quantize_int8
from nmt.models.gnmt_layers import Generator
from nmt.models.int8 import Int8Linear, Int8LSTM
from nmt.models.registry import build_model
from nmt.models.seq2seq import ModelSpec

V, H = 40, 16
PAD, BOS, EOS = 0, 2, 3


def tiny(enc: int = 3, dec: int = 3, dropout: float = 0.0, seed: int = 0) -> GNMT:
    torch.manual_seed(seed)
    return build_model(
        ModelSpec(hidden=H, enc_layers=enc, dec_layers=dec, dropout=dropout, init_range=0.3), V, PAD
    )


def make_src(lengths: list[int], seed: int = 1, ts: int | None = None) -> tuple[Tensor, Tensor]:
    """Random ``src[Ts,B]`` (eos last, pad after) and ``src_len[B]``."""
    g = torch.Generator().manual_seed(seed)
    ts = ts or max(lengths)
    src = torch.randint(4, V, (ts, len(lengths)), generator=g)
    for b, n in enumerate(lengths):
        src[n - 1, b] = EOS
        src[n:, b] = PAD
    return src, torch.tensor(lengths)


def make_tgt(lengths: list[int], seed: int = 2, tt: int | None = None) -> Tensor:
    """Random ``tgt_in[Tt,B]`` = bos + tokens, pad after."""
    g = torch.Generator().manual_seed(seed)
    tt = tt or max(lengths)
    tgt = torch.randint(4, V, (tt, len(lengths)), generator=g)
    tgt[0] = BOS
    for b, n in enumerate(lengths):
        tgt[n:, b] = PAD
    return tgt


def test_stage_contract() -> None:
    torch.manual_seed(0)
    stages = build_stages(V, H, 4, 3, 0.0, True, 0.1, PAD)
    names = [s.name for s in stages]
    assert names == ["Embed+Enc1", "Enc2", "Enc3", "Enc4", "Dec1+Attention", "Dec2", "Dec3"] + [
        "Generator"
    ]
    src, src_len = make_src([6, 4, 1], ts=8)
    tgt = make_tgt([5, 3, 2], tt=8)
    x: tuple[Tensor, ...] = (src, src_len, tgt)
    ts, tt, b = 8, 8, 3
    expected = [
        [(ts, b, 2 * H), (b,), (tt, b, H)],
        *[[(ts, b, H), (b,), (tt, b, H)]] * 3,
        *[[(tt, b, H), (tt, b, H)]] * 3,
    ]
    for stage, shapes in zip(stages[:-1], expected, strict=True):
        x = stage(*x)
        assert isinstance(x, tuple)
        assert [tuple(t.shape) for t in x] == shapes
        assert all(t.is_contiguous() for t in x)
    logits = stages[-1](*x)
    assert logits.shape == (tt, b, V) and logits.is_contiguous()


def test_single_device_model_is_stage_chain() -> None:
    model = tiny().eval()
    src, src_len = make_src([5, 3])
    tgt = make_tgt([4, 2])
    x: tuple[Tensor, ...] = (src, src_len, tgt)
    for stage in model.stages:
        out = stage(*x)
        x = out if isinstance(out, tuple) else (out,)
    torch.testing.assert_close(model(src, src_len, tgt), x[0], rtol=0, atol=0)


def test_bad_layer_counts() -> None:
    with pytest.raises(ValueError):
        build_stages(V, H, 1, 2, 0.0, True, 0.1, PAD)
    with pytest.raises(ValueError):
        build_stages(V, H, 2, 0, 0.0, True, 0.1, PAD)


def test_tied_weights_and_init() -> None:
    model = tiny()
    gen = model.generator
    assert gen.proj.weight is model.embed_stage.embedding.weight
    untied = build_model(
        ModelSpec(
            hidden=H, enc_layers=3, dec_layers=3, dropout=0.0, tie_embeddings=False, init_range=0.3
        ),
        V,
        PAD,
    )
    n_tied = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in untied.parameters()) == n_tied + V * H
    assert untied.generator.proj.weight is not untied.embed_stage.embedding.weight
    att = model.attn_stage.attention
    for name, p in model.named_parameters():
        if p is att.g:
            assert torch.allclose(p, torch.tensor([H**-0.5]))
        elif p is att.b:
            assert p.abs().max() == 0
        else:
            assert p.abs().max() <= 0.3, name


def test_seeded_init_is_deterministic() -> None:
    a, b = tiny(seed=5), tiny(seed=5)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert na == nb and torch.equal(pa, pb)


def test_padding_does_not_leak() -> None:
    """A sentence alone == the same sentence in a padded batch (encoder, attention, logits)."""
    model = tiny().eval()
    src, src_len = make_src([7, 3, 1], ts=9)
    tgt = make_tgt([6, 4, 2], tt=8)
    full = model(src, src_len, tgt)
    enc = model.encode(src, src_len)
    assert enc[3:, 1].abs().max() > 0  # pads of upper layers are not zero, but must not matter
    for b, (n, m) in enumerate([(7, 6), (3, 4), (1, 2)]):
        alone = model(src[:n, b : b + 1], src_len[b : b + 1], tgt[:m, b : b + 1])
        torch.testing.assert_close(full[:m, b : b + 1], alone, atol=1e-5, rtol=1e-5)
        bi = model.embed_stage.encode(src[:n, b : b + 1], src_len[b : b + 1])
        bi_full = model.embed_stage.encode(src, src_len)
        torch.testing.assert_close(bi_full[:n, b : b + 1], bi, atol=1e-6, rtol=1e-5)
        assert bi_full[n:, b].abs().max() == 0 if n < 9 else True


def test_attention_masks_padding() -> None:
    model = tiny().eval()
    src, src_len = make_src([5, 2, 1], ts=6)
    enc = model.encode(src, src_len)
    state = model.init_state(3)
    _, _, attn = model.decode_step(torch.full((3,), BOS), state, enc, src_len)
    torch.testing.assert_close(attn.sum(-1), torch.ones(3))
    for b, n in enumerate([5, 2, 1]):
        assert attn[b, n:].abs().max() == 0 if n < 6 else True
        assert (attn[b, :n] > 0).all()


@pytest.mark.parametrize("enc,dec", [(2, 1), (3, 3), (4, 4)])
def test_incremental_decoding_matches_teacher_forcing(enc: int, dec: int) -> None:
    model = tiny(enc, dec).eval()
    src, src_len = make_src([7, 4, 1])
    tgt = make_tgt([6, 6, 3])
    with torch.no_grad():
        ref = torch.log_softmax(model(src, src_len, tgt), dim=-1)
        enc_out = model.encode(src, src_len)
        state = model.init_state(3)
        for t in range(tgt.size(0)):
            log_probs, state, attn = model.decode_step(tgt[t], state, enc_out, src_len)
            assert attn.shape == (3, src.size(0))
            torch.testing.assert_close(log_probs, ref[t], atol=1e-5, rtol=0)


def test_decode_step_rows_grouped_by_sentence_and_reorder() -> None:
    """State rows b*r..b*r+r-1 attend to sentence b; reorder_state permutes rows."""
    model = tiny().eval()
    src, src_len = make_src([5, 3])
    r = 3
    with torch.no_grad():
        enc = model.encode(src, src_len)
        y = torch.randint(4, V, (2 * r,))
        a = model.decode_step(y, model.init_state(2 * r), enc, src_len)
        enc_rep = enc.repeat_interleave(r, dim=1)
        b = model.decode_step(y, model.init_state(2 * r), enc_rep, src_len.repeat_interleave(r))
        torch.testing.assert_close(a[0], b[0])
        torch.testing.assert_close(a[2], b[2])
        index = torch.tensor([2, 2, 0, 5, 3, 3])
        st = model.reorder_state(a[1], index)
        assert st.h.shape == (model.n_dec, 2 * r, H)
        torch.testing.assert_close(st.h[:, 1], a[1].h[:, 2])
        torch.testing.assert_close(st.c[:, 3], a[1].c[:, 5])


def test_generator_keeps_ctx_in_graph() -> None:
    gen = Generator(H, V)
    h = torch.randn(4, 2, H, requires_grad=True)
    ctx = torch.randn(4, 2, H, requires_grad=True)
    logits = gen(h, ctx)
    with torch.no_grad():
        plain = gen(h, ctx)
    assert torch.equal(logits, plain)
    logits.sum().backward()
    assert ctx.grad is not None and ctx.grad.abs().max() == 0
    assert h.grad is not None and h.grad.abs().max() > 0


def test_train_mode_dropout_and_all_params_get_grads() -> None:
    model = tiny(dropout=0.3).train()
    src, src_len = make_src([5, 3])
    tgt = make_tgt([4, 4])
    a, b = model(src, src_len, tgt), model(src, src_len, tgt)
    assert not torch.allclose(a, b)
    a.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name


def test_quantize_int8() -> None:
    """Int8 decoder LSTMs and linear layers, float encoder LSTMs; close to fp32; the input
    model untouched."""
    model = tiny().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    qmodel = quantize_int8(model)
    for k, v in model.state_dict().items():
        assert torch.equal(before[k], v)
    assert type(qmodel.embed_stage.lstm) is torch.nn.LSTM  # encoder: float, fused kernel
    assert isinstance(qmodel.attn_stage.lstm, Int8LSTM)
    assert isinstance(qmodel.stages[-1].proj, Int8Linear)
    src, src_len = make_src([7, 4, 1])
    tgt = make_tgt([6, 5, 2])
    with torch.no_grad():
        ref = model(src, src_len, tgt)
        out = qmodel(src, src_len, tgt)
        assert (out - ref).abs().max() < 0.05 * ref.abs().max()
        enc_out = qmodel.encode(src, src_len)
        state = qmodel.init_state(3)
        lp_ref = torch.log_softmax(out, dim=-1)
        for t in range(tgt.size(0)):
            log_probs, state, _ = qmodel.decode_step(tgt[t], state, enc_out, src_len)
            torch.testing.assert_close(log_probs, lp_ref[t], atol=2e-2, rtol=0)


def test_int8_products_are_exact_on_this_cpu() -> None:
    """The int32 products of the int8 weights are exact integer arithmetic on this CPU (on the
    AVX2 class, full-range weights saturate oneDNN's int16 pair sums: 7-bit weights there)."""
    from nmt.models.int8 import Int8Linear, quantize_rows, weight_levels

    torch.manual_seed(0)
    layer = Int8Linear(torch.nn.Linear(512, 256), weight_levels())
    xq, _ = quantize_rows(torch.randn(40, 512))
    exact = xq.double() @ layer.w_t.double()
    assert torch.equal(torch._int_mm(xq, layer.w_t).double(), exact)
    assert int(layer.w_t.abs().max()) == weight_levels()


def test_int8_rows_are_batch_independent() -> None:
    """A row's int8 result is a function of that row alone, bit for bit (per-row scales,
    exact int32 accumulation): decoding sentence 1 alone == decoding it in the batch."""
    model = tiny().eval()
    qmodel = quantize_int8(model)
    src, src_len = make_src([7, 4, 1])
    tgt = make_tgt([6, 5, 2])
    with torch.no_grad():
        enc_all = qmodel.encode(src, src_len)
        enc_one = qmodel.encode(src[:4, 1:2].contiguous(), src_len[1:2])
        torch.testing.assert_close(enc_all[:4, 1:2], enc_one, rtol=1e-6, atol=1e-6)
        state_all, state_one = qmodel.init_state(3), qmodel.init_state(1)
        for t in range(tgt.size(0)):
            lp_all, state_all, _ = qmodel.decode_step(tgt[t], state_all, enc_all, src_len)
            lp_one, state_one, _ = qmodel.decode_step(
                tgt[t, 1:2], state_one, enc_all[:, 1:2].contiguous(), src_len[1:2]
            )
            assert torch.equal(lp_all[1:2], lp_one), t
        x = torch.randn(5, 16)
        lin = qmodel.stages[-1].proj
        assert torch.equal(lin(x)[2:3], lin(x[2:3]))


def test_attention_gradcheck() -> None:
    torch.manual_seed(0)
    att = BahdanauAttention(4).double()
    with torch.no_grad():
        att.v.uniform_(-1, 1)  # torch.empty until the model's init
        att.g.fill_(0.7)
        att.b.uniform_(-0.5, 0.5)
    enc = torch.randn(5, 2, 4, dtype=torch.double, requires_grad=True)
    query = torch.randn(2, 3, 4, dtype=torch.double, requires_grad=True)
    src_len = torch.tensor([5, 2])

    def f(q: Tensor, e: Tensor) -> Tensor:
        return att(q, att.memory(e, src_len))[0]

    assert torch.autograd.gradcheck(f, (query, enc))


def test_attention_equals_the_tanh_formula() -> None:
    """The sigmoid form gives the probabilities and gradients of GNMT's normalized Bahdanau
    score ``g (v/||v||) . tanh(W_q q + W_k k + b)``, written out here directly."""
    torch.manual_seed(3)
    att = BahdanauAttention(6).double()
    with torch.no_grad():
        att.v.uniform_(-1, 1)
        att.g.fill_(1.3)
        att.b.uniform_(-0.5, 0.5)
    enc = torch.randn(5, 2, 6, dtype=torch.double)
    query = torch.randn(4, 3, 6, dtype=torch.double)  # 2 rows per sentence (beams)
    src_len = torch.tensor([5, 3])
    ctx, probs = att(query, att.memory(enc, src_len))

    values = enc.transpose(0, 1)  # [B, Ts, H]
    keys = values @ att.linear_k.weight.t() + att.b
    q = query @ att.linear_q.weight.t()  # [4, 3, H]
    energy = torch.tanh(q.view(2, 6, 1, 6) + keys.unsqueeze(1))
    scores = energy @ (att.g * att.v / att.v.norm())  # [B, 6, Ts]
    pad = torch.arange(5) >= src_len.unsqueeze(1)  # [B, Ts]
    scores = scores.masked_fill(pad.unsqueeze(1), float("-inf"))
    ref = torch.softmax(scores, dim=-1)
    torch.testing.assert_close(probs, ref.view(4, 3, 5), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ctx, (ref @ values).view(4, 3, 6), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("m", [1, 2])
def test_attention_for_rows_equals_each_row_with_its_own_sentence(m: int) -> None:
    """Rows of any number per sentence (beam search after pruning; one sentence has none):
    each row's context and probabilities are those of the row alone against its sentence."""
    torch.manual_seed(5)
    att = BahdanauAttention(6).double()
    with torch.no_grad():
        att.v.uniform_(-1, 1)  # torch.empty until the model's init
        att.b.uniform_(-0.5, 0.5)
    enc = torch.randn(7, 4, 6, dtype=torch.double)
    src_len = torch.tensor([7, 2, 5, 3])
    rows = torch.tensor([0, 0, 0, 2, 3, 3, 3, 3, 3])  # sentence 1: no rows
    query = torch.randn(rows.numel(), m, 6, dtype=torch.double)
    memory = att.memory(enc, src_len)
    with torch.no_grad():
        ctx, probs = att(query, memory.for_rows(rows))
        for n, b in enumerate(rows.tolist()):
            one = att.memory(enc[:, b : b + 1], src_len[b : b + 1])
            c1, p1 = att(query[n : n + 1], one)
            torch.testing.assert_close(ctx[n : n + 1], c1, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(probs[n : n + 1], p1, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="select sentences first"):
        memory.for_rows(rows).index_select(torch.tensor([0]))
    with pytest.raises(ValueError, match="grouped by sentence"):
        memory.for_rows(torch.tensor([1, 0, 1]))
