"""Transformer stages: boundary contract, loss paths, incremental decoding, padding, tying,
int8 and bf16 decoding (tiny seeded CPU models)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor

from nmt.models.gnmt_layers import Generator
from nmt.models.seq2seq import ModelSpec, quantize_int8
from nmt.models.transformer import Transformer, describe, problems, stage_names, stages_from_spec

V, H, HEADS = 30, 16, 4
PAD, BOS, EOS = 0, 2, 3


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models: one thread (two on a loaded machine spin and run 100x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def spec(**kw: object) -> ModelSpec:
    base: dict[str, object] = dict(arch="transformer", hidden=H, heads=HEADS, enc_layers=2,
                                   dec_layers=2, dropout=0.0, ffn=32)  # fmt: skip
    return ModelSpec(**{**base, **kw})  # type: ignore[arg-type]


def tiny(
    seed: int = 0, prior: Tensor | None = None, double: bool = True, **kw: object
) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(stages_from_spec(spec(**kw), V, PAD, prior))
    return (model.double() if double else model).eval()


def make_src(lengths: list[int], seed: int = 1, ts: int | None = None) -> tuple[Tensor, Tensor]:
    """Random ``src[Ts,B]`` (eos last, pad after) and ``src_len[B]``."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, V, (ts or max(lengths), len(lengths)), generator=g)
    for b, n in enumerate(lengths):
        src[n - 1, b] = EOS
        src[n:, b] = PAD
    return src, torch.tensor(lengths)


def make_tgt(lengths: list[int], seed: int = 2, tt: int | None = None) -> tuple[Tensor, Tensor]:
    """Random ``tgt_in[Tt,B]`` (bos first) and ``tgt_out[Tt,B]`` (eos last), pad after."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(4, V, (tt or max(lengths), len(lengths)), generator=g)
    tgt_in, tgt_out = y.clone(), y.clone()
    tgt_in[0] = BOS
    for b, n in enumerate(lengths):
        tgt_in[1:n, b] = y[: n - 1, b]
        tgt_out[n - 1, b] = EOS
        tgt_in[n:, b] = PAD
        tgt_out[n:, b] = PAD
    return tgt_in, tgt_out


def decode_rows(model: Transformer, src: Tensor, src_len: Tensor, tokens: Tensor) -> Tensor:
    """Feed ``tokens[T,N]`` one position at a time (N = B*r rows) -> ``logits[T,N,V]``."""
    memory = model.prepare_memory(model.encode(src, src_len), src_len)
    state = model.init_state(tokens.size(1))
    out = []
    for t in range(tokens.size(0)):
        logits, state, _ = model.step_logits(tokens[t], state, memory)
        out.append(logits)
    return torch.stack(out)


@pytest.mark.parametrize(("enc", "dec"), [(2, 2), (1, 1), (3, 2)])
def test_stage_contract(enc: int, dec: int) -> None:
    model = tiny(enc_layers=enc, dec_layers=dec)
    names = [s.name for s in model.stages]
    assert names == stage_names(spec(enc_layers=enc, dec_layers=dec))
    assert names[0] == "Embed+Enc1" and names[enc] == "Dec1" and names[-1] == "Generator"
    src, src_len = make_src([6, 4, 1], ts=8)
    tgt_in, _ = make_tgt([5, 3, 2], tt=7)
    ts, tt, b = 8, 7, 3
    enc_shapes = [(ts, b, H), (b,), (tt, b, H)]
    dec_shapes = [(tt, b, H), (ts, b, H), (b,)]
    expected = [enc_shapes] * enc + [dec_shapes] * (dec - 1) + [dec_shapes[:2]]
    x: tuple[Tensor, ...] = (src, src_len, tgt_in)
    for stage, shapes in zip(model.stages[:-1], expected, strict=True):
        x = stage(*x)
        assert [tuple(t.shape) for t in x] == shapes, stage.name
        assert all(t.is_contiguous() for t in x)
        if stage.name == f"Enc{enc}" or (enc == 1 and stage.name == "Embed+Enc1"):
            torch.testing.assert_close(x[0], model.encode(src, src_len), rtol=0, atol=1e-12)
    logits = model.stages[-1](*x)
    assert logits.shape == (tt, b, V)
    torch.testing.assert_close(logits, model(src, src_len, tgt_in), rtol=0, atol=0)


def loss_and_grads(
    model: Transformer, batch: tuple[Tensor, Tensor, Tensor, Tensor], skip: bool
) -> list[Tensor]:
    model.zero_grad()
    torch.manual_seed(7)  # the same dropout masks for both paths
    loss, nll = model.loss(*batch, pad_id=PAD, eps=0.1, skip_pad=skip)
    loss.backward()  # type: ignore[no-untyped-call]
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    return [loss.detach(), nll.detach(), *grads]


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_loss_skip_pad_equal(dropout: float) -> None:
    model = tiny(dropout=dropout).train()
    src, src_len = make_src([6, 4, 2], ts=8)
    tgt_in, tgt_out = make_tgt([5, 3, 1], tt=8)
    batch = (src, src_len, tgt_in, tgt_out)
    dense = loss_and_grads(model, batch, skip=False)
    sparse = loss_and_grads(model, batch, skip=True)
    assert len(dense) == len(list(model.parameters())) + 2  # every parameter got a gradient
    for a, b in zip(dense, sparse, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("r", [1, 3])
def test_incremental_equals_teacher_forcing(r: int) -> None:
    model = tiny()
    src, src_len = make_src([7, 3, 5], ts=8)
    tgt_in, _ = make_tgt([6, 6, 6])
    with torch.no_grad():
        full = model(src, src_len, tgt_in)  # [Tt, B, V]
        steps = decode_rows(model, src, src_len, tgt_in.repeat_interleave(r, dim=1))
    expected = full.repeat_interleave(r, dim=1)
    torch.testing.assert_close(steps, expected, rtol=0, atol=1e-9)


def test_attention_probabilities() -> None:
    model = tiny()
    src, src_len = make_src([7, 3, 5], ts=8)
    r = 2
    memory = model.prepare_memory(model.encode(src, src_len), src_len)
    assert memory.keys.shape == (2, 3, HEADS, 8, H // HEADS)
    state = model.init_state(3 * r)
    y = torch.full((3 * r,), BOS)
    for _ in range(3):
        _, state, attn = model.step_logits(y, state, memory)
        assert attn.shape == (3 * r, 8)
        torch.testing.assert_close(attn.sum(dim=1), torch.ones(3 * r, dtype=attn.dtype))
        pads = memory.mask.repeat_interleave(r, dim=0)
        assert bool((attn[pads] == 0).all()) and bool((attn[~pads] > 0).all())
        y = torch.randint(4, V, (3 * r,))
    assert state.keys.shape == (2, 3 * r, HEADS, 3, H // HEADS)


def test_reorder_state() -> None:
    model = tiny()
    src, src_len = make_src([6, 4], ts=6)
    r, prefix, rest = 3, 4, 3
    g = torch.Generator().manual_seed(5)
    tokens = torch.randint(4, V, (prefix + rest, 2 * r), generator=g)
    tokens[0] = BOS
    index = torch.tensor([2, 2, 0, 5, 3, 4])  # rows stay within their sentence
    memory = model.prepare_memory(model.encode(src, src_len), src_len)
    state = model.init_state(2 * r)
    for t in range(prefix):
        _, state, _ = model.step_logits(tokens[t], state, memory)
    state = model.reorder_state(state, index)
    continued = []
    for t in range(prefix, prefix + rest):
        logits, state, _ = model.step_logits(tokens[t], state, memory)
        continued.append(logits)
    scratch_tokens = torch.cat((tokens[:prefix, index], tokens[prefix:]))
    scratch = decode_rows(model, src, src_len, scratch_tokens)[prefix:]
    torch.testing.assert_close(torch.stack(continued), scratch, rtol=0, atol=1e-12)


def test_padding_does_not_change_a_sentence() -> None:
    model = tiny()
    src, src_len = make_src([7, 3, 5], ts=10)
    tgt_in, _ = make_tgt([6, 2, 4], tt=9)
    with torch.no_grad():
        enc = model.encode(src, src_len)
        full = model(src, src_len, tgt_in)
        for b, (n, m) in enumerate(zip([7, 3, 5], [6, 2, 4], strict=True)):
            alone_src, alone_len = src[:n, b : b + 1], src_len[b : b + 1]
            alone_enc = model.encode(alone_src, alone_len)
            torch.testing.assert_close(alone_enc[:, 0], enc[:n, b], rtol=0, atol=1e-12)
            alone = model(alone_src, alone_len, tgt_in[:m, b : b + 1])
            torch.testing.assert_close(alone[:, 0], full[:m, b], rtol=0, atol=1e-12)


def test_tying_prior_and_problems() -> None:
    prior = torch.log_softmax(torch.randn(V), dim=0)
    tied = tiny(prior=prior, double=False)
    assert tied.generator.proj.weight is tied.input_embedding().weight
    assert isinstance(tied.generator, Generator)
    torch.testing.assert_close(tied.generator.proj.bias.detach(), prior)
    assert bool((tied.input_embedding().weight[PAD] == 0).all())
    params = {n for n, _ in tied.named_parameters(remove_duplicate=False)}
    assert set(tied.state_dict()) == params  # no buffers (positions are computed)
    untied = tiny(tie_embeddings=False, double=False)
    assert untied.generator.proj.weight is not untied.input_embedding().weight
    assert bool((untied.generator.proj.bias == 0).all())
    again = tiny(tie_embeddings=False, double=False)  # seeded: deterministic
    for a, b in zip(untied.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)
    assert problems(spec()) == []
    assert "2 encoder and 2 decoder layers" in describe(spec())
    assert problems(spec(hidden=10)) == ["model.hidden=10 must be divisible by model.heads=4"]
    bad = problems(spec(heads=0, enc_layers=0, dropout=1.0))
    assert bad == [
        "model.enc_layers=0 must be >= 1",
        "model.heads=0 must be >= 1",
        "model.dropout=1.0 must be in [0, 1)",
    ]


def trained_copy_model() -> Transformer:
    """A tiny fp32 model trained a few steps to copy its source (logits with a clear argmax)."""
    model = tiny(double=False).train()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(3)
    for _ in range(60):
        y = torch.randint(4, V, (6, 16), generator=g)
        src = torch.cat((y, torch.full((1, 16), EOS)))
        tgt_in = torch.cat((torch.full((1, 16), BOS), y))
        loss, _ = model.loss(src, torch.full((16,), 7), tgt_in, src, PAD, 0.0)
        opt.zero_grad()
        (loss / 112).backward()  # type: ignore[no-untyped-call]
        opt.step()
    return model.eval()


def test_int8_step_logits() -> None:
    model = trained_copy_model()
    qmodel = quantize_int8(model)
    assert qmodel is not model and qmodel.input_embedding().weight.dtype == torch.float32
    src, src_len = make_src([7, 5, 6, 7], ts=7, seed=4)
    tgt_in = torch.cat((torch.full((1, 4), BOS), src[:-1]))
    with torch.no_grad():
        ref = decode_rows(model, src, src_len, tgt_in)
        got = decode_rows(qmodel, src, src_len, tgt_in)  # type: ignore[arg-type]
    assert got.shape == ref.shape and bool(got.isfinite().all())
    agree = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
    assert agree >= 0.9, agree


def test_bf16_step_logits() -> None:
    model = tiny(double=False).to(dtype=torch.bfloat16)
    src, src_len = make_src([5, 3], ts=6)
    tgt_in, _ = make_tgt([4, 4])
    with torch.no_grad():
        logits = decode_rows(model, src, src_len, tgt_in.repeat_interleave(2, dim=1))
        log_probs, state, attn = model.step(tgt_in[0], model.init_state(2), model.prepare_memory(
            model.encode(src, src_len), src_len))  # fmt: skip
    assert logits.dtype == torch.bfloat16 and logits.shape == (4, 4, V)
    assert bool(logits.isfinite().all()) and bool(attn.isfinite().all())
    assert log_probs.dtype == torch.float32 and state.keys.dtype == torch.bfloat16
