"""The wavefront's ranks as threads of one process: ``parallel.wave_threads=true``.

The same ranks as :mod:`nmt.train.wavefront_ranks` (``parallel.pp``, ``balance``,
``generator_share``, ``encoder_split``, ``attention_split``, ``recompute``; the same
:class:`nmt.train.wave_program.WaveProgram` per rank), but each rank is a thread of this
process on a CPU, with its own replica of the model, and the chunks pass through memory
(:class:`parallel.runtime.wave_local.LocalWire`). torch releases Python's lock while an
operator computes, so the ranks' layers compute at the same time, each thread with
``train.threads`` intra-op threads (1: one core per rank; by default the cores shared out).

What the threads spare the processes: no chunk crosses a socket, and the step's gradients
are summed in memory into replica 0 (the run's model: ``p.grad += p_r.grad`` over the ranks,
in rank order, so a run is deterministic and resumes bitwise), which alone clips and takes
the Adam step; the other replicas then copy its weights. Checkpoints, validation and resume
are those of one device. Exact, dropout included: every replica seeds its masks as one
device does (:mod:`nmt.models.dropout`).
"""

from __future__ import annotations

import copy
import math
import os
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import torch

from data.batching import Batch
from data.tokenizer import PAD_ID
from nmt.config import AppConfig
from nmt.errors import UserError
from nmt.models.dropout import seed_masks
from nmt.models.gnmt import GNMT
from nmt.prepare.splits import Corpus
from nmt.train.build import output_prior
from nmt.train.single import SingleDevice
from nmt.train.trainer import Computed, Trainer
from nmt.train.wave_checks import wave_owners
from nmt.train.wave_program import WaveProgram
from nmt.train.wavefront_ranks import TimelineWindow, report_timeline
from parallel.runtime.timeline import TimelineRecorder, summarize, write_timeline
from parallel.runtime.wave_local import LocalWire, Mailbox, MailboxError


def wave_threads_trainer(cfg: AppConfig, corpus: Corpus, out_dir: Path) -> Trainer:
    """The :class:`Trainer` of the wavefront's ranks as threads (model seeded by the caller)."""
    engine = WaveThreads(cfg, corpus.tokenizer.vocab_size, output_prior(cfg.model, corpus))
    return Trainer(cfg, corpus, out_dir, engine)


class WaveThreads(SingleDevice):
    """The :class:`nmt.train.trainer.Engine` of the wavefront's ranks as threads."""

    def __init__(self, cfg: AppConfig, vocab: int, prior: torch.Tensor | None) -> None:
        super().__init__(cfg, vocab, prior)
        self.wavefront = None  # not the one-process wave of SingleDevice
        if not isinstance(self.model, GNMT):
            raise UserError("the wavefront needs model.arch=gnmt")
        pc = cfg.parallel
        owners = wave_owners(len(self.model.stages), pc.pp, pc.balance)
        self.replicas: list[GNMT] = [self.model]
        self.replicas += [copy.deepcopy(self.model) for _ in range(pc.pp - 1)]
        self.mailbox = Mailbox(pc.timeout_s)
        self.timelines = [TimelineRecorder(r) for r in range(pc.pp)]
        self.programs = [
            WaveProgram(
                replica,
                owners,
                r,
                pc.time_chunks,
                LocalWire(self.device, rank=r, mailbox=self.mailbox),
                self.timelines[r],
                pc.generator_share,
                pc.encoder_split,
                pc.attention_split,
                pc.recompute,
                pc.encoder_shares,
            )  # fmt: skip
            for r, replica in enumerate(self.replicas)
        ]
        self.pool = ThreadPoolExecutor(max_workers=pc.pp, thread_name_prefix="wave-rank")
        if not cfg.train.threads:  # torch's default would give every rank every core
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // pc.pp))
        self.window = TimelineWindow(self.timelines)

    # ------------------------------------------------------------------ one step
    def compute(
        self, drawn: list[Batch], ntokens: int, optimizer: torch.optim.Optimizer, step: int
    ) -> Computed:
        self.window.step(step)
        for replica in self.replicas:
            replica.train()
        loss_sum = nll_sum = 0.0
        ranks = range(len(self.programs))
        for i, one in enumerate(drawn):
            b = one.to(self.device)
            for replica in self.replicas:
                seed_masks(replica, self.cfg.train.seed, step, i)
            self.mailbox.clear()
            for loss, nll in self.run_ranks(b, ntokens, ranks):
                loss_sum, nll_sum = loss_sum + loss, nll_sum + nll
        self.sum_gradients()
        loss_value, nll_value = loss_sum / ntokens, nll_sum / ntokens
        if not math.isfinite(loss_value):
            return Computed(loss_value, nll_value, "loss")
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.clip_norm)
        if not math.isfinite(float(norm)):
            return Computed(loss_value, nll_value, "gradient norm")
        return Computed(loss_value, nll_value)

    def run_ranks(self, b: Batch, ntokens: int, ranks: range) -> list[tuple[float, float]]:
        """Every rank's forward and backward of ``b``, each in its thread; when one fails,
        the others are woken and waited for, and the first failure (not a woken rank's
        error) is raised. A message nobody received is an error too."""
        runs = [self.pool.submit(self.run_rank, r, b, ntokens) for r in ranks]
        wait(runs)
        errors = [e for e in (run.exception() for run in runs) if e is not None]
        if errors:
            raise next((e for e in errors if not isinstance(e, MailboxError)), errors[0])
        left = self.mailbox.unreceived()
        if left:
            raise RuntimeError(f"wavefront threads: messages sent but never received: {left}")
        return [run.result() for run in runs]

    def run_rank(self, rank: int, b: Batch, ntokens: int) -> tuple[float, float]:
        """Rank ``rank``'s forward and backward of ``b`` (in its thread)."""
        try:
            with torch.autocast(  # autocast is per thread
                self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None
            ):
                eps = self.cfg.train.label_smoothing
                return self.programs[rank].run(b, 1.0 / ntokens, PAD_ID, eps)
        except BaseException as err:
            self.mailbox.fail(f"rank {rank} failed: {err}")  # wake the others
            raise

    def sum_gradients(self) -> None:
        """Every replica's gradients added into replica 0's, in rank order (deterministic)."""
        for p, *others in zip(*(r.parameters() for r in self.replicas), strict=True):
            for q in others:
                if q.grad is None:
                    continue
                p.grad = q.grad if p.grad is None else p.grad.add_(q.grad)
                q.grad = None

    def apply(self, optimizer: torch.optim.Optimizer) -> None:
        super().apply(optimizer)
        self.copy_weights()

    def copy_weights(self) -> None:
        """Replica 0's weights (the optimizer's) into the other replicas."""
        with torch.no_grad():
            for p, *others in zip(*(r.parameters() for r in self.replicas), strict=True):
                for q in others:
                    q.copy_(p)

    # ------------------------------------------------------------------ the rest of a run
    def resume(self, t: Trainer, path: Path) -> None:
        super().resume(t, path)
        self.copy_weights()

    def finish(self, t: Trainer) -> dict[str, Any]:
        self.pool.shutdown()
        pc = self.cfg.parallel
        events = [e for rec in self.timelines for e in rec.resolve()]
        summary = summarize(events, pc.pp, pc.time_chunks, 1, "wavefront")
        if summary.steps:
            write_timeline(events, t.out_dir, summary)
        return report_timeline(summary, t.out_dir, "wavefront (threads)")
