"""``nmt-profile``: measured per-stage cost tables for the placement planner.

    nmt-profile model=gnmt_small profile_out=costs.json [parallel.microbatches=4]
    python -m parallel.planning.plan_cli --costs costs.json --devices 2 --out plan.json
    nmt-train parallel=auto parallel.pp=2 parallel.plan=plan.json

Builds the model of ``cfg.model`` with ``cfg.data.vocab_size`` entries (no corpus needed:
random token batches) and profiles it (:func:`parallel.planning.profile.profile_stages`) on a few
representative shape buckets: ``(Ts, Tt)`` in :data:`BUCKET_LENGTHS` (those that fit
``data.max_len``), ``B`` sentences as the Batcher would take them
(``data.batch_tokens // max(Ts, Tt)``, rounded down to a multiple of
``lcm(parallel.microbatches, 8)`` so the planner can try several micro-batch counts), one
micro-batch of ``B / parallel.microbatches`` sentences measured.  Every bucket weighs the
same.  ``train.device`` / ``train.threads`` / ``train.precision`` / ``train.seed`` apply as
in training.  The JSON cost table goes (atomically) to ``profile_out``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from data.atomic import atomic_write_text
from data.batching import BOS_ID, EOS_ID, PAD_ID
from nmt.config import AppConfig
from nmt.errors import UserError
from nmt.models import registry as arch
from nmt.models.loss import label_smoothed_nll
from nmt.train.build import autocast_dtype, check_model_config, pick_device, seed_everything
from parallel.planning.costs import CostTable
from parallel.planning.profile import cost_tables_json, format_table, profile_stages

BUCKET_LENGTHS: tuple[tuple[int, int], ...] = ((16, 16), (32, 32), (48, 48))
REPEATS = 3
WARMUP = 1
FIRST_ID = 4  # ids below are pad/unk/bos/eos


def bucket_shapes(cfg: AppConfig) -> list[tuple[int, int, int]]:
    """``(Ts, Tt, B)`` of the profiled buckets (see the module doc)."""
    d, m = cfg.data, int(cfg.parallel.microbatches)
    if m < 1:
        raise UserError(f"parallel.microbatches must be >= 1, got {m}")
    multiple = math.lcm(m, 8)
    pad = max(int(d.pad_multiple), 1)
    longest = -(-(int(d.max_len) + 1) // pad) * pad  # + eos/bos, rounded up
    lengths = [x for x in BUCKET_LENGTHS if max(x) <= longest] or [BUCKET_LENGTHS[0]]
    out = []
    for ts, tt in lengths:
        b = int(d.batch_tokens) // max(ts, tt)
        out.append((ts, tt, max(multiple, b // multiple * multiple)))
    return out


def random_batch(
    vocab: int, ts: int, tt: int, b: int, generator: torch.Generator
) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor]:
    """A bucket-shaped batch of random tokens: ``((src, src_len, tgt_in), tgt_out)``.

    Lengths fall in the bucket's last 8 positions (as bucketing makes them); row 0 is full.
    """
    if vocab <= FIRST_ID:
        raise UserError(f"data.vocab_size={vocab} is too small to profile (needs > {FIRST_ID})")

    def lengths(t: int) -> Tensor:
        n = torch.randint(max(1, t - 7), t + 1, (b,), generator=generator)
        n[0] = t
        return n

    def tokens(t: int, n: Tensor) -> Tensor:
        x = torch.randint(FIRST_ID, vocab, (t, b), generator=generator)
        return x.masked_fill(torch.arange(t).unsqueeze(1) >= n.unsqueeze(0), PAD_ID)

    src_len, tgt_len = lengths(ts), lengths(tt)
    src = tokens(ts, src_len)
    src[src_len - 1, torch.arange(b)] = EOS_ID
    y = tokens(tt, tgt_len)  # y + eos, bos + y
    tgt_out = y.clone()
    tgt_out[tgt_len - 1, torch.arange(b)] = EOS_ID
    tgt_in = torch.cat([torch.full((1, b), BOS_ID), y[:-1]]).masked_fill(y == PAD_ID, PAD_ID)
    return (src, src_len, tgt_in), tgt_out


def profile_model(
    cfg: AppConfig, *, repeats: int = REPEATS, warmup: int = WARMUP
) -> list[CostTable]:
    """One measured cost table per bucket of :func:`bucket_shapes`."""
    m, tc = cfg.model, cfg.train
    vocab = int(cfg.data.vocab_size)
    device = pick_device(str(tc.device))
    amp = autocast_dtype(str(tc.precision), device)
    if int(tc.threads):
        torch.set_num_threads(int(tc.threads))
    seed_everything(int(tc.seed))
    spec = check_model_config(m)
    stages = arch.build_stages(spec, vocab, PAD_ID)
    eps = float(tc.label_smoothing)
    micro = int(cfg.parallel.microbatches)
    gen = torch.Generator().manual_seed(int(tc.seed))
    names = arch.stage_names(spec)
    notes = (f"arch={spec.arch} hidden={m.hidden} vocab={vocab} enc_layers={m.enc_layers} "
             f"dec_layers={m.dec_layers} microbatches={micro} repeats={repeats}")  # fmt: skip
    tables = []
    for ts, tt, b in bucket_shapes(cfg):
        inputs, target = random_batch(vocab, ts, tt, b, gen)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            t = profile_stages(
                stages, inputs, target,
                lambda out, tgt: label_smoothed_nll(out, tgt, PAD_ID, eps)[0],
                micro_batch=b // micro, repeats=repeats, warmup=warmup, device=device,
                names=names, model=str(m.name), src_len=ts, tgt_len=tt, notes=notes,
            )  # fmt: skip
        tables.append(t if amp is None else replace(t, dtype=str(amp).removeprefix("torch.")))
    return tables


def profile_cli(cfg: AppConfig) -> None:
    """``nmt-profile``: profile, print a short table per bucket, write ``profile_out``."""
    out = Path(str(cfg.profile_out)).expanduser()
    if not out.parent.is_dir():
        raise UserError(f"profile_out={out}: folder {out.parent} does not exist")
    tables = profile_model(cfg)
    for t in tables:
        print(format_table(t))
    atomic_write_text(out, cost_tables_json(tables))
    print(f"wrote {len(tables)} cost tables to {out}", file=sys.stderr)
