"""The whole model on one device: :class:`SingleDevice`, the :class:`nmt.train.trainer.Engine`
of a run with ``parallel.pp * parallel.dp == 1`` (``train.accumulate`` batches per step,
optional fp16 loss scaling, optional wavefront over time chunks)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import torch

from data.batching import Batch
from data.tokenizer import PAD_ID
from nmt.checkpoint import files as ckpt_io
from nmt.config import AppConfig, config_to_dict
from nmt.models.dropout import seed_masks
from nmt.models.loss import label_smoothed_nll
from nmt.models.seq2seq import Seq2Seq
from nmt.models.wavefront import Wavefront
from nmt.prepare.splits import Corpus
from nmt.train.build import (
    autocast_dtype,
    build_from_config,
    check_accumulate,
    output_prior,
    pick_device,
)
from nmt.train.trainer import Computed, Trainer
from nmt.train.validate import validate


def one_device_trainer(cfg: AppConfig, corpus: Corpus, out_dir: Path) -> Trainer:
    """The :class:`Trainer` of a single-device run (its model seeded by the caller)."""
    engine = SingleDevice(cfg, corpus.tokenizer.vocab_size, output_prior(cfg.model, corpus))
    return Trainer(cfg, corpus, out_dir, engine)


class SingleDevice:
    """The model, its autocast and loss scaler, on ``train.device``."""

    is_main = True

    def __init__(self, cfg: AppConfig, vocab_size: int, prior: torch.Tensor | None) -> None:
        self.cfg = cfg
        self.batches_per_step = check_accumulate(cfg.train)
        self.device = pick_device(cfg.train.device)
        self.amp = autocast_dtype(cfg.train.precision, self.device)
        self.scaler = torch.amp.GradScaler(enabled=self.amp == torch.float16)
        model = build_from_config(cfg.model, vocab_size, prior)
        self.model: Seq2Seq = model.to(self.device)
        chunks = cfg.parallel.time_chunks
        streams = cfg.parallel.wave_streams
        self.wavefront = Wavefront(self.model, chunks, streams=streams) if chunks > 1 else None

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.model.parameters())

    # ------------------------------------------------------------------ one step
    def compute(
        self, drawn: list[Batch], ntokens: int, optimizer: torch.optim.Optimizer, step: int
    ) -> Computed:
        self.model.train()
        loss_value, nll_value = 0.0, 0.0
        for i, one in enumerate(drawn):
            seed_masks(self.model, self.cfg.train.seed, step, i)  # dropout: per (step, batch)
            loss_sum, nll_sum = self.forward_loss(one)
            loss = loss_sum / ntokens
            torch.autograd.backward(self.scaler.scale(loss))
            loss_value += float(loss.detach())
            nll_value += float(nll_sum) / ntokens
        if not math.isfinite(loss_value):
            return Computed(loss_value, nll_value, "loss")
        self.scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.clip_norm)
        if not self.scaler.is_enabled() and not math.isfinite(float(norm)):
            return Computed(loss_value, nll_value, "gradient norm")  # fp16: the scaler skips
        return Computed(loss_value, nll_value)

    def forward_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(label-smoothed loss sum, nll sum) of one batch, under the run's autocast."""
        b = batch.to(self.device)
        with torch.autocast(
            self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None
        ):
            eps = self.cfg.train.label_smoothing
            if self.wavefront is not None:  # the same function, the layers waving over time
                return self.wavefront.loss(b.src, b.src_len, b.tgt_in, b.tgt_out, PAD_ID, eps)
            # generator + loss on the non-pad target positions only ([N,V], not [Tt,B,V])
            keep = b.tgt_out != PAD_ID
            logits = self.model.logits_at(b.src, b.src_len, b.tgt_in, keep)
            return label_smoothed_nll(logits, b.tgt_out[keep], PAD_ID, eps)

    def apply(self, optimizer: torch.optim.Optimizer) -> None:
        self.scaler.step(optimizer)
        self.scaler.update()

    # ------------------------------------------------------------------ the rest of a run
    def validate(self, t: Trainer) -> dict[str, Any]:
        return validate(self.model, t.corpus, t.cfg, self.device)

    def agree(self, stop: str | None, run_seconds: float) -> tuple[str | None, float]:
        return stop, run_seconds

    def finish(self, t: Trainer) -> dict[str, Any]:
        return {}

    def state(self, t: Trainer) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            **t.run_state(),
            "scaler": self.scaler.state_dict(),
            "config": config_to_dict(t.cfg),
            "spm": t.corpus.tokenizer.model_bytes(),
        }

    def save(self, t: Trainer, best: bool) -> None:
        state = self.state(t)
        ckpt_io.save(ckpt_io.step_file(t.ckpt_dir, t.step), state)
        ckpt_io.save(t.ckpt_dir / "last.pt", state)
        if best:
            ckpt_io.save(t.ckpt_dir / "best.pt", state)
        ckpt_io.prune(t.ckpt_dir, t.cfg.train.keep_last)

    def resume(self, t: Trainer, path: Path) -> None:
        ck = ckpt_io.load(path, map_location=self.device)
        ckpt_io.check_compatible(
            ck, config_to_dict(t.cfg.model), t.corpus.tokenizer.model_bytes(), str(path)
        )
        self.model.load_state_dict(ck["model"])
        if "optimizer" not in ck:  # an exported pipelined checkpoint: weights only
            print(
                f"{path} holds weights only: optimizer and data position start fresh",
                file=sys.stderr,
            )
            t.start_from_weights(ck)
            return
        self.scaler.load_state_dict(ck["scaler"])
        t.load_run_state(ck)
