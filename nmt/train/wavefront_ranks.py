"""The wavefront across processes: ``nmt-train parallel=wavefront parallel.pp=N``.

N processes per pipeline (torch's launcher, or ``torchrun``:
:func:`parallel.runtime.engine.launch`), one pipeline of GNMT's layers cut into N groups of
consecutive layers (``parallel.balance``: layers per rank; by default the generator alone on
the last rank and the other layers split evenly over the first N-1;
``parallel.generator_share``: the share of each batch's sentences whose generator runs on a
helper rank instead, :mod:`nmt.train.wave_generator`; ``parallel.encoder_split``: every rank
runs the encoder on a share of the sentences, ``parallel.encoder_shares`` their weights,
:mod:`nmt.train.wave_encoder`). Each batch
waves through them in time chunks (:mod:`nmt.train.wave_program`, on c10d point-to-point:
:mod:`parallel.runtime.wave`). ``parallel.dp=R`` runs R such pipelines (R x N processes),
each on its own batch of the step; ``parallel.recompute=true`` keeps no activation inside
a chunk and runs its forward again in the backward.

Every rank builds the whole model with the run's seed and draws the same batches (replica r
trains on batches r, r+R, ...: the batches of one device with ``train.accumulate=R``, with
their dropout masks). The gradients of the parameters that another rank than 0 uses (the
tied embedding, the generator, the layers of ranks 1..N-1, the encoder when it is split)
are summed over every process, all but the encoder's while the encoder's backward runs
(:mod:`nmt.train.wave_gradients`; ``parallel.overlap_gradients``, gloo only); after the
backward, the gradients of the parameters only rank 0 of a pipeline uses are summed over
the replicas' ranks 0, and the losses with the squared norm of the latter over every
process; every rank then clips with the same global norm and takes the Adam step of the
parameters it has gradients for. Rank 0 therefore holds
the whole model and optimizer, current: it validates, writes the single-device checkpoints
(``last.pt`` ...) and every rank resumes from them, so ``train.resume=auto`` is exact as on
one device.
Dropout masks are seeded per (step, batch, layer) (:mod:`nmt.models.dropout`): the losses
equal one device's.

Not supported (refused at start with one line): ``parallel.microbatches > 1`` (the
wavefront cuts along time, not the batch), fp16.
"""

from __future__ import annotations

import math
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from data.batching import Batch
from data.tokenizer import PAD_ID
from nmt.config import AppConfig
from nmt.errors import UserError
from nmt.machine import hostmem
from nmt.machine.calibrate import announce
from nmt.models.dropout import seed_masks
from nmt.models.gnmt import GNMT
from nmt.train.build import output_prior, seed_everything
from nmt.train.loop import resume_path, run_loop
from nmt.train.metrics import MetricsLog
from nmt.train.pipelined import TIMELINE_STEPS, _NullMetrics
from nmt.train.setup import RunSetup
from nmt.train.single import SingleDevice
from nmt.train.trainer import Computed, Trainer
from nmt.train.wave_checks import wave_owners
from nmt.train.wave_encoder import encoder_parameters
from nmt.train.wave_gradients import SharedGradients, squared_norm, sum_over
from nmt.train.wave_program import WaveProgram
from parallel.runtime.engine import DistContext, init_distributed, launch
from parallel.runtime.timeline import TimelineRecorder, TimelineSummary, gather_and_write
from parallel.runtime.wave import Wire


class WaveRank(SingleDevice):
    """The :class:`nmt.train.trainer.Engine` of one wavefront rank (module docstring)."""

    def __init__(
        self, cfg: AppConfig, vocab: int, prior: torch.Tensor | None, ctx: DistContext
    ) -> None:
        super().__init__(cfg, vocab, prior)
        self.wavefront = None  # not the one-process wave
        self.ctx, self.is_main = ctx, ctx.rank == 0
        self.batches_per_step *= ctx.dp  # every rank draws the batches of every replica
        if not isinstance(self.model, GNMT):
            raise UserError("the wavefront needs model.arch=gnmt")
        pc = cfg.parallel
        self.owners = wave_owners(len(self.model.stages), pc.pp, pc.balance)
        self.timeline = TimelineRecorder(ctx.rank)
        self.window = TimelineWindow([self.timeline])
        wire = Wire(self.device, ctx.pp_group)  # the ranks of this replica's pipeline
        self.program = WaveProgram(
            self.model, self.owners, ctx.pp_rank, pc.time_chunks, wire, self.timeline,
            pc.generator_share, pc.encoder_split, pc.attention_split, pc.recompute,
            pc.encoder_shares,
        )  # fmt: skip
        self.shared = self.shared_parameters()
        # the early sum on gloo only: NCCL wants the collectives of several communicators in
        # the same order on every rank, which the wire's traffic around it does not give
        self.overlap = pc.overlap_gradients and ctx.backend == "gloo"
        self.grads = SharedGradients(
            self.shared,
            encoder_parameters(self.model),  # what the encoder's backward may still change
            self.model.embed_stage.embedding.weight,
            dist.new_group(timeout=timedelta(seconds=pc.timeout_s)),  # apart from the wire's
        )

    def shared_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters some rank other than 0 uses, in model order."""
        assert isinstance(self.model, GNMT)
        used: set[int] = set()
        for u, r in enumerate(self.owners):
            if r > 0:
                used |= {id(p) for p in self.model.stages[u].parameters()}
                if u == self.model.n_enc:  # Dec1 embeds the target
                    used.add(id(self.model.embed_stage.embedding.weight))
        if self.cfg.parallel.encoder_split:  # every rank encodes some sentences
            used |= {id(p) for p in encoder_parameters(self.model)}
        if self.cfg.parallel.attention_split:  # and Dec2's rank attends for its own
            used |= {id(p) for p in self.model.attn_stage.attention.parameters()}
        return [p for p in self.model.parameters() if id(p) in used]

    def compute(
        self, drawn: list[Batch], ntokens: int, optimizer: torch.optim.Optimizer, step: int
    ) -> Computed:
        self.window.step(step)
        self.model.train()
        loss_sum = nll_sum = 0.0
        eps = self.cfg.train.label_smoothing
        mine = [i for i in range(len(drawn)) if i % self.ctx.dp == self.ctx.dp_rank]
        for i in mine:  # the other batches are the other replicas'
            one = drawn[i]
            seed_masks(self.model, self.cfg.train.seed, step, i)
            # after the last batch's decoder backward, the final gradients start summing
            self.program.on_decoded = self.grads.early if i == mine[-1] and self.overlap else None
            b = one.to(self.device)
            with torch.autocast(
                self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None
            ):
                loss, nll = self.program.run(b, 1.0 / ntokens, PAD_ID, eps)
            loss_sum, nll_sum = loss_sum + loss, nll_sum + nll
        loss_sum, nll_sum, norm = self.sum_gradients(loss_sum, nll_sum, self.source_rows(drawn))
        loss_value, nll_value = loss_sum / ntokens, nll_sum / ntokens
        if not math.isfinite(loss_value):
            return Computed(loss_value, nll_value, "loss")
        if not math.isfinite(norm):
            return Computed(loss_value, nll_value, "gradient norm")
        return Computed(loss_value, nll_value)

    def source_rows(self, drawn: list[Batch]) -> Tensor:
        """The distinct source tokens of every replica's last batch of the step (the same
        on every process): the embedding rows its encoder's backward reaches after
        :meth:`SharedGradients.early`; none without the early sum."""
        if not self.overlap or self.grads.embedding is None:
            return torch.zeros(0, dtype=torch.long, device=self.device)
        last = {i % self.ctx.dp: i for i in range(len(drawn))}.values()
        tokens = torch.cat([drawn[i].src.reshape(-1) for i in last])
        rows: Tensor = torch.unique(tokens)
        return rows.to(self.device)

    def sum_gradients(self, loss: float, nll: float, rows: Tensor) -> tuple[float, float, float]:
        """The replicas' sum of rank 0's own gradients, then the shared ones (the rest of
        :class:`SharedGradients`; ``rows``: :meth:`source_rows`) and the loss summed
        over every process, then the global clip; returns the summed loss, nll and the
        gradient norm (the same on every rank)."""
        mine = {id(p) for p in self.shared}
        own = [p for p in self.model.parameters() if id(p) not in mine]
        if self.ctx.dp > 1 and self.ctx.pp_rank == 0:  # elsewhere every gradient is shared
            sum_over(own, self.ctx.dp_group)
        own_grads = [p.grad for p in own if p.grad is not None]
        own_sq = squared_norm(own_grads) if self.ctx.dp_rank == 0 else 0.0  # counted once
        self.grads.finish(rows)
        box = torch.tensor([loss, nll, own_sq], dtype=torch.float64, device=self.device)
        dist.all_reduce(box)
        total_sq = float(box[2]) + squared_norm([p.grad for p in self.shared if p.grad is not None])
        norm = math.sqrt(total_sq) if total_sq >= 0 else float("nan")
        coef = min(1.0, self.cfg.train.clip_norm / (norm + 1e-6))
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        torch._foreach_mul_(grads, coef)
        return float(box[0]), float(box[1]), norm

    # ------------------------------------------------------------------ the rest of a run
    def validate(self, t: Trainer) -> dict[str, Any]:
        box: list[Any] = [super().validate(t) if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=self.ctx.phase_group)
        return dict(box[0])

    def agree(self, stop: str | None, run_seconds: float) -> tuple[str | None, float]:
        box: list[Any] = [stop, run_seconds]
        dist.broadcast_object_list(box, src=0)
        return (None if box[0] is None else str(box[0])), float(box[1])

    def save(self, t: Trainer, best: bool) -> None:
        if self.is_main:
            super().save(t, best)
        dist.barrier(group=self.ctx.phase_group)

    def finish(self, t: Trainer) -> dict[str, Any]:
        pc = self.cfg.parallel
        summary = gather_and_write(
            self.timeline, t.out_dir, ranks=pc.pp, microbatches=pc.time_chunks,
            schedule="wavefront", group=self.ctx.phase_group,
            rank_map={self.ctx.global_rank(r, 0): r for r in range(pc.pp)},  # replica 0
        )  # fmt: skip
        if summary is None or not self.is_main:
            return {}
        return report_timeline(summary, t.out_dir, "wavefront")


class TimelineWindow:
    """Records steps (first+3, first+6] of a run (``TIMELINE_STEPS``) on ``recorders``."""

    def __init__(self, recorders: list[TimelineRecorder]) -> None:
        self.recorders = recorders
        self.first: int | None = None

    def step(self, step: int) -> None:
        """Call at the start of every step."""
        if self.first is None:
            self.first = step
        since = step - self.first
        for rec in self.recorders:
            if since == TIMELINE_STEPS[0]:
                rec.enable()
            if since == TIMELINE_STEPS[1]:
                rec.disable()
            rec.begin_step()


def report_timeline(summary: TimelineSummary, out_dir: Path, what: str) -> dict[str, Any]:
    """One line on stderr (busy fraction per rank, step time, the picture) and the run
    result's ``timeline`` entry; nothing when no step was recorded."""
    if summary.steps == 0:
        return {}
    print(
        f"{what}: busy "
        + ", ".join(f"rank{r} {f:.0%}" for r, f in enumerate(summary.busy_fraction))
        + f" | {summary.step_ms:.0f} ms per step | {out_dir / 'timeline.png'}",
        file=sys.stderr,
    )
    return {"timeline": {"busy_fraction": summary.busy_fraction,
                         "timeline_step_ms": summary.step_ms}}  # fmt: skip


def _worker(setup: RunSetup) -> dict[str, Any]:
    """One rank: join the process group, build the model, run the common loop."""
    hostmem.tune()
    hostmem.cap_onednn_cache()
    cfg, pc = setup.cfg, setup.cfg.parallel
    ctx = init_distributed(
        pc.dp, pc.pp, backend=pc.backend, device=cfg.train.device,
        timeout_s=pc.timeout_s, phase_timeout_s=pc.phase_timeout_s,
    )  # fmt: skip
    try:
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        seed_everything(cfg.train.seed)  # the same initial weights as one device
        prior = output_prior(cfg.model, setup.corpus)
        engine = WaveRank(cfg, setup.corpus.tokenizer.vocab_size, prior, ctx)
        t = Trainer(cfg, setup.corpus, setup.out_dir, engine)
        start_from = resume_path(cfg, t.ckpt_dir)
        if start_from is not None:
            t.resume(start_from)
            if t.is_main:
                print(f"resumed from {start_from} at step {t.step}", file=sys.stderr)
        metrics = MetricsLog(setup.out_dir, t.step if start_from else None) if t.is_main else None
        return run_loop(t, metrics or _NullMetrics())
    finally:
        ctx.close()


def train_wavefront(setup: RunSetup) -> dict[str, Any]:
    """Run ``parallel.pp x parallel.dp`` wavefront ranks (under torchrun this process is one
    of them)."""
    if setup.choice is not None:
        announce(setup.choice)
    pc = setup.cfg.parallel
    results = launch(_worker, setup, nproc=pc.pp * pc.dp, timeout_s=pc.timeout_s)
    return results[min(results)]
