"""Fast exact kernels: the dense bi-LSTM equals the packed one, the non-pad generator/loss
equals the full-logits one (values and gradients)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt.models import gnmt_layers as layers
from nmt.models.gnmt import GNMT, quantize_int8
from nmt.models.gnmt_layers import EmbedEncoder1, bilstm_dense, reversal_index
from nmt.models.loss import label_smoothed_nll
from nmt.models.registry import build_model
from nmt.models.seq2seq import ModelSpec

V, H = 40, 16
PAD, BOS, EOS = 0, 2, 3
LENGTHS = [9, 1, 5, 9, 2, 7]  # full-length rows, a length-1 row, unsorted


def packed_reference(lstm: nn.LSTM, x: Tensor, lengths: Tensor) -> Tensor:
    """The old path: ``x[T,B,in]`` -> ``h[T,B,2H]`` through a PackedSequence."""
    out, _ = lstm(pack_padded_sequence(x, lengths, enforce_sorted=False))
    return pad_packed_sequence(out, total_length=x.size(0))[0]


def grads(module: nn.Module, *tensors: Tensor) -> dict[str, Tensor]:
    found = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    found.update({f"input{i}": t.grad.clone() for i, t in enumerate(tensors) if t.grad is not None})
    return found


def batch(lengths: list[int], t_len: int, seed: int) -> tuple[Tensor, Tensor]:
    """Random ``src[T,B]`` (pad after each sentence) and ``src_len[B]``."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, V, (t_len, len(lengths)), generator=g)
    for b, n in enumerate(lengths):
        src[n:, b] = PAD
    return src, torch.tensor(lengths)


def test_reversal_index() -> None:
    lengths = torch.tensor([3, 1, 2])
    index = reversal_index(lengths, 4).view(4, 3)  # flat rows t*B+b -> (t', b)
    assert torch.equal(index // 3, torch.tensor([[2, 0, 1], [1, 1, 0], [0, 2, 2], [3, 3, 3]]))
    assert torch.equal(index % 3, torch.arange(3).expand(4, 3))
    flat = index.view(-1)
    assert torch.equal(flat[flat], torch.arange(12))  # its own inverse


@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float32, 1e-5), (torch.float64, 1e-12)], ids=["fp32", "fp64"]
)
@pytest.mark.parametrize("train", [True, False])
def test_dense_bilstm_equals_packed(dtype: torch.dtype, tol: float, train: bool) -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(H, H, bidirectional=True).to(dtype).train(train)
    lengths = torch.tensor(LENGTHS)
    x = torch.randn(9, len(LENGTHS), H, dtype=dtype, requires_grad=True)
    weight = torch.randn(9, len(LENGTHS), 2 * H, dtype=dtype)  # a loss using every output
    results = []
    for fn in (packed_reference, bilstm_dense):
        lstm.zero_grad()
        x.grad = None
        out = fn(lstm, x, lengths)
        (out * weight).sum().backward()
        results.append((out.detach(), grads(lstm, x)))
    (ref, ref_grads), (out, out_grads) = results
    assert out.shape == (9, len(LENGTHS), 2 * H) and out.dtype == dtype
    for b, n in enumerate(LENGTHS):
        assert out[n:, b].abs().max() == 0 if n < 9 else True
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    assert ref_grads.keys() == out_grads.keys() and len(out_grads) == 9  # 8 weights + input
    for name, g in ref_grads.items():
        scale = float(g.abs().max())
        torch.testing.assert_close(out_grads[name], g, rtol=tol, atol=tol * scale, msg=name)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_encoder_stage_fast_equals_packed(dropout: float) -> None:
    """The whole stage (embedding, dropout, bi-LSTM) and the embedding's gradient."""
    torch.manual_seed(1)
    stage = EmbedEncoder1(V, H, dropout, PAD)
    src, src_len = batch(LENGTHS, 9, seed=3)
    results = []
    for packed in (True, False):
        stage.packed = packed
        stage.zero_grad()
        torch.manual_seed(7)  # the same dropout masks
        h = stage.encode(src, src_len)
        (h * torch.linspace(-1, 1, 2 * H)).sum().backward()
        results.append((h.detach(), grads(stage)))
    (ref, ref_grads), (out, out_grads) = results
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert "embedding.weight" in out_grads and len(out_grads) == len(ref_grads) == 9
    for name, g in ref_grads.items():
        scale = float(g.abs().max())
        torch.testing.assert_close(out_grads[name], g, rtol=1e-5, atol=1e-5 * scale, msg=name)


def test_fast_path_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Float nn.LSTM on CPU: dense (also in the int8 model, whose encoder stays float);
    ``packed = True``: PackedSequence."""
    calls: list[int] = []
    real = layers.bilstm_dense

    def spy(lstm: nn.LSTM, x: Tensor, lengths: Tensor) -> Tensor:
        calls.append(x.size(1))
        return real(lstm, x, lengths)

    monkeypatch.setattr(layers, "bilstm_dense", spy)
    torch.manual_seed(0)
    model = build_model(
        ModelSpec(hidden=H, enc_layers=2, dec_layers=1, dropout=0.0, init_range=0.3), V, PAD
    ).eval()
    src, src_len = batch([4, 2, 1], 4, seed=5)
    with torch.no_grad():
        fast = model.embed_stage.encode(src, src_len)
        assert calls == [3]
        model.embed_stage.packed = True
        slow = model.embed_stage.encode(src, src_len)
        assert calls == [3]
        model.embed_stage.packed = False
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
        qmodel = quantize_int8(model)
        enc_q = qmodel.embed_stage.encode(src, src_len)
        assert calls == [3, 3]  # the int8 model's encoder LSTM is float: dense
        torch.testing.assert_close(enc_q, fast, rtol=0, atol=0)
        assert enc_q[2:, 1].abs().max() == 0


def test_zero_lengths_as_in_shape_inference() -> None:
    """All-zero inputs (pipelining shape inference): lengths clamp to 1 on both paths."""
    torch.manual_seed(0)
    stage = EmbedEncoder1(V, H, 0.0, PAD).eval()
    src, src_len = torch.zeros(8, 3, dtype=torch.long), torch.zeros(3, dtype=torch.long)
    with torch.no_grad():
        fast = stage(src, src_len, torch.zeros(5, 3, dtype=torch.long))[0]
        stage.packed = True
        ref = stage(src, src_len, torch.zeros(5, 3, dtype=torch.long))[0]
    assert fast.shape == (8, 3, 2 * H) and fast[1:].abs().max() == 0
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ no work on padding
def model_and_batch(
    enc: int, dec: int, tie: bool, seed: int = 0
) -> tuple[GNMT, Tensor, Tensor, Tensor, Tensor]:
    torch.manual_seed(seed)
    spec = ModelSpec(hidden=H, enc_layers=enc, dec_layers=dec, dropout=0.0, init_range=0.3)
    model = build_model(
        dataclasses.replace(spec, tie_embeddings=tie),
        V,
        PAD,
    ).train()
    src, src_len = batch([7, 3, 1, 7], 8, seed=seed + 1)
    g = torch.Generator().manual_seed(seed + 2)
    tgt_in = torch.randint(4, V, (7, 4), generator=g)
    tgt_in[0] = BOS
    tgt_out = torch.randint(4, V, (7, 4), generator=g)
    for b, n in enumerate([7, 2, 1, 0]):  # target lengths; the last row is a filler (all pad)
        tgt_in[n:, b] = PAD
        tgt_out[n:, b] = PAD
    return model, src, src_len, tgt_in, tgt_out


@pytest.mark.parametrize(
    ("enc", "dec", "tie", "eps"),
    [(3, 3, True, 0.1), (3, 3, True, 0.0), (2, 1, True, 0.1), (2, 2, False, 0.1)],
)
def test_nonpad_loss_equals_full_logits_loss(enc: int, dec: int, tie: bool, eps: float) -> None:
    model, src, src_len, tgt_in, tgt_out = model_and_batch(enc, dec, tie)
    assert (model.generator.proj.weight is model.embed_stage.embedding.weight) == tie
    results = []
    for skip_pad in (False, True):
        model.zero_grad(set_to_none=True)
        loss, nll = model.loss(src, src_len, tgt_in, tgt_out, PAD, eps, skip_pad=skip_pad)
        (loss / 9).backward()
        assert not nll.requires_grad
        results.append((loss.detach(), nll, grads(model)))
    (ref_loss, ref_nll, ref_grads), (loss, nll, out_grads) = results
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    assert nll.item() == pytest.approx(ref_nll.item(), rel=1e-5)
    # every parameter has a gradient on both paths (zero ones included: dec=1 leaves the
    # attention unused, the generator keeps ctx in the graph either way)
    assert out_grads.keys() == ref_grads.keys() == {n for n, _ in model.named_parameters()}
    for name, g in ref_grads.items():
        scale = float(g.abs().max())  # + 1e-9: fp32 sums in another order, on a ~1e-6 gradient
        atol = 1e-5 * scale + 1e-9
        torch.testing.assert_close(out_grads[name], g, rtol=1e-5, atol=atol, msg=name)


def test_logits_at_is_full_logits_at_kept_positions() -> None:
    model, src, src_len, tgt_in, tgt_out = model_and_batch(3, 2, True, seed=4)
    model.eval()
    keep = tgt_out != PAD
    with torch.no_grad():
        full = model(src, src_len, tgt_in)
        rows = model.logits_at(src, src_len, tgt_in, keep)
    assert rows.shape == (int(keep.sum()), V)
    torch.testing.assert_close(rows, full[keep], rtol=1e-6, atol=1e-6)
    loss, nll = label_smoothed_nll(rows, tgt_out[keep], PAD, 0.1)
    ref_loss, ref_nll = label_smoothed_nll(full, tgt_out, PAD, 0.1)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    assert nll.item() == pytest.approx(ref_nll.item(), rel=1e-6)
