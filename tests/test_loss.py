"""Label-smoothed NLL: formula, padding, micro-batch invariance of loss and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nmt.models.loss import label_smoothed_nll
from nmt.models.registry import build_model
from nmt.models.seq2seq import ModelSpec

PAD = 0


def random_case(t: int = 6, b: int = 4, v: int = 11, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(t, b, v, generator=g) * 3
    target = torch.randint(1, v, (t, b), generator=g)
    for j, n in enumerate([6, 4, 1, 0][:b]):
        target[n:, j] = PAD
    return logits, target


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_formula(eps: float) -> None:
    logits, target = random_case()
    loss, nll = label_smoothed_nll(logits, target, PAD, eps)
    logp = torch.log_softmax(logits, -1)
    exp_loss, exp_nll = 0.0, 0.0
    for t in range(target.size(0)):
        for b in range(target.size(1)):
            y = int(target[t, b])
            if y == PAD:
                continue
            n = -float(logp[t, b, y])
            exp_nll += n
            exp_loss += (1 - eps) * n + eps * float(-logp[t, b].mean())
    assert loss.item() == pytest.approx(exp_loss, rel=1e-5)
    assert nll.item() == pytest.approx(exp_nll, rel=1e-5)
    assert not nll.requires_grad


def test_eps0_is_cross_entropy_and_pads_ignored() -> None:
    logits, target = random_case()
    loss, _ = label_smoothed_nll(logits, target, PAD, 0.0)
    ce = F.cross_entropy(logits.view(-1, logits.size(-1)), target.view(-1), ignore_index=PAD)
    ntok = int((target != PAD).sum())
    assert loss.item() == pytest.approx(ce.item() * ntok, rel=1e-5)
    changed = logits.clone()
    changed[target == PAD] = 1e4  # garbage at pad positions changes nothing
    assert label_smoothed_nll(changed, target, PAD, 0.1)[0].item() == pytest.approx(
        label_smoothed_nll(logits, target, PAD, 0.1)[0].item(), rel=1e-6
    )


def test_bf16_logits_accepted() -> None:
    logits, target = random_case()
    loss, nll = label_smoothed_nll(logits.bfloat16(), target, PAD, 0.1)
    assert loss.dtype == torch.float32 and nll.dtype == torch.float32
    ref, _ = label_smoothed_nll(logits.bfloat16().float(), target, PAD, 0.1)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_microbatch_split_gives_same_loss_and_gradients() -> None:
    torch.manual_seed(0)
    model = build_model(
        ModelSpec(hidden=12, enc_layers=3, dec_layers=3, dropout=0.0, init_range=0.2), 30, PAD
    ).train()
    g = torch.Generator().manual_seed(1)
    ts, tt, b = 7, 6, 6
    src = torch.randint(4, 30, (ts, b), generator=g)
    src_len = torch.tensor([7, 5, 3, 1, 6, 2])
    for j, n in enumerate(src_len.tolist()):
        src[n - 1, j] = 3
        src[n:, j] = PAD
    tgt_out = torch.randint(4, 30, (tt, b), generator=g)
    tgt_len = [6, 2, 4, 0, 5, 3]  # one filler row without target tokens
    for j, n in enumerate(tgt_len):
        tgt_out[n:, j] = PAD
        if n:
            tgt_out[n - 1, j] = 3
    tgt_in = torch.cat([torch.full((1, b), 2), tgt_out[:-1]]).masked_fill(tgt_out == PAD, PAD)
    ntok = int((tgt_out != PAD).sum())

    def grads_of(chunks: list[slice]) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad()
        total = 0.0
        for c in chunks:
            logits = model(src[:, c], src_len[c], tgt_in[:, c])
            loss, _ = label_smoothed_nll(logits, tgt_out[:, c], PAD, 0.1)
            (loss / ntok).backward()
            total += loss.item() / ntok
        return total, [p.grad.clone() for p in model.parameters()]

    full_loss, full_grads = grads_of([slice(0, b)])
    split_loss, split_grads = grads_of([slice(0, 2), slice(2, 4), slice(4, 6)])
    assert split_loss == pytest.approx(full_loss, rel=1e-6)
    for a, c in zip(full_grads, split_grads, strict=True):
        torch.testing.assert_close(a, c, atol=1e-6, rtol=1e-4)
