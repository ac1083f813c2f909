"""GNMT's wavefront over time chunks (nmt/models/wavefront.py) against the whole-sequence model:
loss and every gradient equal for C in {1, 2, 3, 8} (T not divisible by C), also with dropout
(seeded masks and the global RNG; per-chunk masks would not be), the diagonal order, and
``nmt-train parallel=wavefront`` with dropout logging the same losses as ``parallel=none``,
resuming exactly and exporting a checkpoint that translates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import nmt.train.loop as loop_mod
from nmt.checkpoint import files as ckpt_io
from nmt.errors import user_error_types
from nmt.models.dropout import SeqDropout, seed_masks
from nmt.models.registry import build_model
from nmt.models.seq2seq import ModelSpec
from nmt.models.wavefront import Wavefront, chunk_bounds, wave
from nmt.train.run import train

ROOT = Path(__file__).resolve().parent.parent


def loss_and_grads(model: Any, fn: Any) -> tuple[float, dict[str, torch.Tensor]]:
    """(the loss ``fn()`` returns first, every parameter's gradient of it)."""
    model.zero_grad()
    loss, _ = fn()
    loss.backward()
    return float(loss.detach()), {k: p.grad.clone() for k, p in model.named_parameters()}


def test_chunk_bounds_cover_the_sequence() -> None:
    assert chunk_bounds(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert chunk_bounds(2, 8) == [(0, 1), (1, 2)]  # never an empty chunk
    assert chunk_bounds(5, 1) == [(0, 5)]
    for total in range(1, 12):
        for c in (1, 2, 3, 8):
            spans = chunk_bounds(total, c)
            assert spans[0][0] == 0 and spans[-1][1] == total
            assert all(a < b for a, b in spans) and all(
                x[1] == y[0] for x, y in zip(spans, spans[1:], strict=False)
            )


def test_wave_runs_layer_l_on_chunk_c_at_step_l_plus_c() -> None:
    calls: list[tuple[int, int]] = []

    def layer(i: int) -> Any:
        def run(
            c: int, x: tuple[torch.Tensor, ...], state: Any
        ) -> tuple[tuple[torch.Tensor, ...], Any]:
            assert c == (0 if state is None else state + 1)  # the chunk index, in order
            calls.append((i, c))
            return (x[0] + 1,), c

        return run

    cpu = torch.device("cpu")
    out = wave([layer(0), layer(1)], [(torch.zeros(1),)] * 3, [cpu, cpu])
    assert calls == [(0, 0), (0, 1), (1, 0), (0, 2), (1, 1), (1, 2)]
    assert [o[0].item() for o in out[1]] == [2.0, 2.0, 2.0]


def batch(seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    src_len = torch.tensor([9, 5, 3, 8])
    src = torch.randint(4, 50, (9, 4), generator=g)
    src[torch.arange(9).unsqueeze(1) >= src_len] = 0
    tgt_in = torch.randint(4, 50, (7, 4), generator=g)
    tgt_out = torch.randint(4, 50, (7, 4), generator=g)
    tgt_out[5:, 1] = 0  # padding
    return src, src_len, tgt_in, tgt_out


@pytest.mark.parametrize("chunks", [1, 2, 3, 8])
def test_loss_and_every_gradient_equal_the_whole_model(chunks: int) -> None:
    """In float64 the wavefront is the same function (rel 1e-9); float32 loss rel 1e-5."""
    torch.manual_seed(0)
    model = build_model(
        ModelSpec(hidden=16, enc_layers=3, dec_layers=3, dropout=0.0, init_range=0.1), 50, 0
    ).double()
    src, src_len, tgt_in, tgt_out = batch(1)

    def run(fn: Any) -> tuple[float, dict[str, torch.Tensor]]:
        return loss_and_grads(model, fn)

    ref_loss, ref = run(lambda: model.loss(src, src_len, tgt_in, tgt_out, 0, 0.1))
    cpu = torch.device("cpu")
    wf = Wavefront(model, chunks, [cpu, cpu])  # two "devices": the hand-over path runs too
    loss, got = run(lambda: wf.loss(src, src_len, tgt_in, tgt_out, 0, 0.1))
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    for k, g in ref.items():
        torch.testing.assert_close(got[k], g, rtol=1e-9, atol=1e-12, msg=k)
    model32 = model.float()
    ref32, _ = model32.loss(src, src_len, tgt_in, tgt_out, 0, 0.1)
    got32, _ = Wavefront(model32, chunks).loss(src, src_len, tgt_in, tgt_out, 0, 0.1)
    got32, ref32 = got32.detach(), ref32.detach()
    assert float(got32) == pytest.approx(float(ref32), rel=1e-5)


def dropout_grads(model: Any, fn: Any, seeded: bool) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and gradients of ``fn()`` with fresh masks: seeded (step 5) or the global RNG."""
    model.zero_grad()
    torch.manual_seed(7)
    for m in model.modules():
        if isinstance(m, SeqDropout):
            m.reseed(None)
    if seeded:
        seed_masks(model, 1, 5)
    loss, _ = fn()
    loss.backward()
    return float(loss.detach()), {k: p.grad.clone() for k, p in model.named_parameters()}


def dropout_error(chunks: int, seeded: bool) -> float:
    """Largest gradient difference of the wavefront against the whole model, dropout 0.3."""
    torch.manual_seed(0)
    spec = ModelSpec(hidden=16, enc_layers=3, dec_layers=3, dropout=0.3, init_range=0.1)
    model = build_model(spec, 50, 0).double().train()
    src, src_len, tgt_in, tgt_out = batch(1)
    ref_loss, ref = dropout_grads(
        model, lambda: model.loss(src, src_len, tgt_in, tgt_out, 0, 0.1), seeded
    )
    wf = Wavefront(model, chunks)
    loss, got = dropout_grads(model, lambda: wf.loss(src, src_len, tgt_in, tgt_out, 0, 0.1), seeded)
    assert loss == pytest.approx(ref_loss, rel=1e-12) or chunks > 1
    return max(
        float((got[k] - g).abs().max() / g.abs().max().clamp(min=1e-30)) for k, g in ref.items()
    )


@pytest.mark.parametrize("seeded", [True, False])
@pytest.mark.parametrize("chunks", [2, 3, 8])
def test_dropout_masks_equal_the_whole_model(chunks: int, seeded: bool) -> None:
    """Each layer's mask is drawn for the whole sequence and sliced per chunk: the same
    gradients as the plain model with dropout (seeded per module, or from the global RNG)."""
    assert dropout_error(chunks, seeded) < 1e-9


def test_per_chunk_masks_would_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above has teeth: masks drawn per chunk from the global RNG (the old dropout)
    fail it. (From a module's own generator, float64 masks drawn chunk by chunk happen to
    continue one stream; float32 ones do not: the nmt-train tests run float32.)"""

    def per_chunk(self: SeqDropout, x: torch.Tensor, start: int, total: int) -> torch.Tensor:
        return x * self.draw(tuple(x.shape), x) if self.active() else x

    monkeypatch.setattr(SeqDropout, "chunk", per_chunk)
    assert dropout_error(3, seeded=False) > 1e-3


def records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in records(out) if "loss" in r]


def test_nmt_train_wavefront_equals_one_device_and_resumes_exactly(
    tiny_cfg: Any, tiny_corpus: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real ``nmt-train parallel=wavefront`` (a subprocess) logs the losses of
    ``parallel=none`` step for step; a halted and resumed wavefront run equals it bitwise."""
    from tests.conftest import tiny_overrides

    common = ("train.max_steps=6", "train.warmup_steps=0", "train.decay_steps=0",
              "model.dropout=0.2")  # fmt: skip
    plain = tiny_cfg(*common, "parallel=none", out="plain")
    train(plain)
    args = tiny_overrides(tiny_corpus, tmp_path / "cache", tmp_path / "wave")
    code = "import sys; from nmt.cli import train_main; sys.argv[0] = 'nmt-train'; train_main()"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-c", code, *args, *common, "parallel=wavefront", "parallel.time_chunks=3",
         f"hydra.run.dir={tmp_path / 'wave'}"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    wave_out = tmp_path / "wave"
    assert losses(wave_out) == pytest.approx(losses(Path(plain.train.out_dir)), rel=1e-5)

    halted = tiny_cfg(*common, "parallel=wavefront", "parallel.time_chunks=3",
                      "train.resume=auto", "train.save_every=100", out="halted")  # fmt: skip
    real = loop_mod.should_stop
    monkeypatch.setattr(loop_mod, "should_stop", lambda t, s: "halt" if t.step == 3 else real(t, s))
    assert train(halted)["step"] == 3
    monkeypatch.setattr(loop_mod, "should_stop", real)
    assert train(halted)["step"] == 6
    assert losses(Path(halted.train.out_dir)) == losses(wave_out)
    wa = ckpt_io.load(wave_out / "checkpoints" / "last.pt")["model"]
    wb = ckpt_io.load(Path(halted.train.out_dir) / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_wavefront_with_microbatches_is_refused(tiny_cfg: Any) -> None:
    """pipe2 (4 micro-batches) with time chunks: the wavefront cuts along time only."""
    cfg = tiny_cfg("parallel=pipe2", "parallel.time_chunks=4", "train.max_steps=1")
    with pytest.raises(user_error_types(), match="microbatches=4: the wavefront cuts"):
        train(cfg)


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                          reason="no CUDA device"))],
)  # fmt: skip
def test_streams_per_layer_give_the_same_loss_and_gradients(device: str) -> None:
    """``streams=True``: a CUDA stream per layer on a GPU (on a CPU: no streams, the same
    code path); loss and gradients equal the plain model's."""
    torch.manual_seed(0)
    spec = ModelSpec(hidden=16, enc_layers=3, dec_layers=3, dropout=0.0, init_range=0.1)
    model = build_model(spec, 50, 0).to(device)
    src, src_len, tgt_in, tgt_out = (t.to(device) for t in batch(1))

    def run(fn: Any) -> tuple[float, dict[str, torch.Tensor]]:
        return loss_and_grads(model, fn)

    ref_loss, ref = run(lambda: model.loss(src, src_len, tgt_in, tgt_out, 0, 0.1))
    wf = Wavefront(model, 3, streams=True)
    loss, got = run(lambda: wf.loss(src, src_len, tgt_in, tgt_out, 0, 0.1))
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for k, g in ref.items():
        torch.testing.assert_close(got[k], g, rtol=1e-4, atol=1e-6, msg=k)
