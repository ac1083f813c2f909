"""Pipelined training: ``nmt-train parallel=pipe2`` (or dp x pp) on torch.distributed.pipelining.

The parent process checks the placement (:mod:`nmt.train.placement`), prepares the data
once (so the tokenizer is cached), and starts ``dp * pp`` workers with torch's launcher (or
joins as a worker under ``torchrun``). Each worker builds the same stage list with the same
seed, keeps its own stages, and runs the common loop of :mod:`nmt.train.loop` with the step,
validation and checkpoints done collectively.

Checkpoints: every rank writes its shard of the step (``checkpoints/shards/``, one set per
step with a manifest: :mod:`nmt.checkpoint.shards`) for exact resume with the same placement; rank
0 also
exports one single-device ``last.pt``/``best.pt`` (weights only) that ``nmt-translate`` and
``nmt-eval`` load, and from which a run with another placement (or one device) resumes.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from data.batching import Batch, Batcher
from data.tokenizer import PAD_ID
from nmt.checkpoint import files as ckpt_io
from nmt.checkpoint import shards
from nmt.config import config_to_dict
from nmt.machine import hostmem
from nmt.machine.calibrate import announce
from nmt.models import registry as arch
from nmt.models.loss import label_smoothed_nll
from nmt.models.seq2seq import ModelSpec, Seq2Seq
from nmt.train.build import autocast_dtype, build_from_config, output_prior, seed_everything
from nmt.train.loop import resume_path, run_loop
from nmt.train.metrics import MetricsLog
from nmt.train.placement import Layout
from nmt.train.setup import RunSetup, install_faults
from nmt.train.trainer import Computed, Trainer
from nmt.train.validate import dev_bleu_report
from parallel.runtime.engine import DistContext, PipelineRunner, init_distributed, launch

TIMELINE_STEPS = (3, 6)  # record steps (start+3, start+6] of each run for the timeline


class _NullMetrics(MetricsLog):
    """Metrics sink of the non-main ranks."""

    def __init__(self) -> None:
        self._tb = None

    def write(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass

    def records(self) -> list[dict[str, Any]]:
        return []


class PipelineRank:
    """The :class:`nmt.train.trainer.Engine` of one pipeline rank: its stages (of every
    replica's pipeline, ``parallel.dp`` x ``parallel.pp``), and on rank 0 the whole model
    gathered for validation BLEU and export."""

    def __init__(
        self, setup: RunSetup, ctx: DistContext, layout: Layout, prior: torch.Tensor | None
    ) -> None:
        """``setup.cfg`` as the parent resolved it (``parallel.microbatches`` = the layout's,
        so the Batcher makes batch sizes divisible by it)."""
        cfg = setup.cfg
        self.cfg, self.ctx, self.layout = cfg, ctx, layout
        self.batches_per_step = ctx.dp  # every rank draws one batch per replica
        self.device = ctx.device
        self.is_main = ctx.rank == 0
        self.amp = autocast_dtype(cfg.train.precision, self.device)
        # only rank 0 gathers the whole model (validation BLEU, export), and keeps it on the
        # CPU: its device's memory is for its stages (the model visits it to decode)
        vocab = setup.corpus.tokenizer.vocab_size
        self.model = build_from_config(cfg.model, vocab, prior)
        self.model = self.model.to("cpu" if self.is_main else "meta")
        seed_everything(cfg.train.seed)  # the same initial weights on every rank
        stages = arch.build_stages(ModelSpec.from_config(cfg.model), vocab, PAD_ID, prior)
        self.loss_fn = SmoothedLoss(cfg.train.label_smoothing)
        self.runner = PipelineRunner(
            stages,
            self.loss_fn,
            ctx=ctx,
            placement=layout.placement,
            schedule=layout.schedule,
            microbatches=layout.microbatches,
            recompute=layout.recompute,
        )
        self.shard_dir = setup.out_dir / "checkpoints" / "shards"
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        self._first_step: int | None = None

    def parameters(self) -> list[torch.nn.Parameter]:
        return self.runner.parameters()

    # ------------------------------------------------------------------ step
    def compute(
        self, drawn: list[Batch], ntokens: int, optimizer: torch.optim.Optimizer, step: int
    ) -> Computed:
        """Replica r trains on the r-th of the ``dp`` batches every rank drew (the same
        batches as one device with ``train.accumulate=dp``)."""
        one = drawn[self.ctx.dp_rank]
        if self._first_step is None:
            self._first_step = step
        since = step - self._first_step
        if since == TIMELINE_STEPS[0]:
            self.runner.timeline.enable()
        self.runner.train(True)
        b = one.to(self.device)
        self.loss_fn.take(0)  # drop what validation left
        with torch.autocast(
            self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None
        ):
            loss = self.runner.step((b.src, b.src_len, b.tgt_in), b.tgt_out, one.ntokens)
        norm = self.runner.clip_grad_norm_(self.cfg.train.clip_norm)
        nll, bad = self.agree_step(math.isfinite(loss) and math.isfinite(norm))
        if since + 1 == TIMELINE_STEPS[1]:
            self.runner.timeline.disable()  # before any validation pass
        why = ("loss" if not math.isfinite(loss) else "gradient norm") if bad else None
        return Computed(loss, nll / ntokens, why)  # on every rank together

    def apply(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.step()

    def agree_step(self, finite: bool) -> tuple[float, bool]:
        """One all-reduce: the replicas' nll sum (for ppl), and whether any rank saw a
        non-finite loss or gradient norm (then every rank skips the step)."""
        box = torch.zeros(2, dtype=torch.float64, device=self.device)
        box[0] = self.loss_fn.take(self.layout.microbatches)
        box[1] = 0.0 if finite else 1.0
        dist.all_reduce(box, op=dist.ReduceOp.SUM)
        return float(box[0]), bool(box[1] > 0)

    def agree(self, stop: str | None, run_seconds: float) -> tuple[str | None, float]:
        """Rank 0's stop decision and budget clock (every rank's lr follows the same clock)."""
        box: list[Any] = [stop, run_seconds]
        dist.broadcast_object_list(box, src=0)
        return (None if box[0] is None else str(box[0])), float(box[1])

    # ------------------------------------------------------------------ validation
    def gathered_model(self) -> Seq2Seq | None:
        """Collective: the whole model on rank 0 (``None`` elsewhere)."""
        full = self.runner.full_state_dict(prefix="stages.")
        if full is None:
            return None
        self.model.load_state_dict(full)
        return self.model

    def validate(self, t: Trainer) -> dict[str, Any]:
        src, tgt = t.corpus.ids["dev"]
        keep = [i for i in range(len(src)) if src[i] and tgt[i]]
        dev = Batcher(
            [src[i] for i in keep],
            [tgt[i] for i in keep],
            self.cfg.data.batch_tokens,
            batch_multiple=self.layout.microbatches,
            shuffle=False,
        )
        total, tokens = 0.0, 0
        for batch in dev:
            b = batch.to(self.device)
            total += self.runner.forward_only((b.src, b.src_len, b.tgt_in), b.tgt_out)
            tokens += batch.ntokens
        result: dict[str, Any] = {"val_loss": total / self.ctx.dp / max(tokens, 1)}
        model = self.gathered_model()
        box: list[Any] = [None]
        if model is not None and self.cfg.train.eval_bleu:
            try:
                box[0] = dev_bleu_report(
                    model.to(self.device),
                    t.corpus,
                    self.cfg.decode,
                    self.cfg.data.max_dev_sentences,
                )
            finally:
                model.to("cpu")
        # the other ranks wait for rank 0's decoding under parallel.phase_timeout_s
        dist.broadcast_object_list(box, src=0, group=self.ctx.phase_group)
        if box[0] is not None:
            result.update(box[0])
        return result

    # ------------------------------------------------------------------ checkpoints
    def save(self, t: Trainer, best: bool) -> None:
        """Collective: this rank's shard of step N, the exported single-device weights (rank
        0), a barrier, then the manifest that makes the set of step N the one to resume."""
        shard = {
            "model": self.runner.state_dict(),
            **t.run_state(),
            "placement": self.placement_ranks,
        }
        ctx = self.ctx
        ckpt_io.save(shards.shard_path(self.shard_dir, t.step, ctx.pp_rank, ctx.dp_rank), shard)
        model = self.gathered_model()  # collective
        if model is not None:
            export = {
                "model": model.state_dict(),
                "step": t.step,
                "train_seconds": t.train_seconds,
                "best": dict(t.best),
                "config": config_to_dict(t.cfg),
                "spm": t.corpus.tokenizer.model_bytes(),
            }
            ckpt_io.save(t.ckpt_dir / "last.pt", export)
            if best:
                ckpt_io.save(t.ckpt_dir / "best.pt", export)
        dist.barrier(group=self.ctx.phase_group)  # every shard is on disk; rank 0 exported
        if self.is_main:
            shards.write_manifest(self.shard_dir, t.step, ctx.pp, ctx.dp, self.placement_ranks)
            shards.prune(self.shard_dir, self.cfg.train.keep_last)

    @property
    def placement_ranks(self) -> list[int]:
        return list(self.runner.placement.stage_ranks)

    def resume(self, t: Trainer, path: Path) -> None:
        """From the manifest's shard set when every rank has it (exact), else re-place the
        single-device weights of ``path`` (the schedule goes on from its step)."""
        ctx = self.ctx
        mine = shards.usable_step(self.shard_dir, ctx.pp, ctx.dp, self.placement_ranks)
        box = torch.tensor([mine, -mine], dtype=torch.int64, device=self.device)
        dist.all_reduce(box, op=dist.ReduceOp.MAX)  # gloo/nccl: max of step and of -step
        step = int(box[0]) if int(box[0]) == -int(box[1]) else -1  # all ranks agree
        if self.is_main:
            for line in shards.incomplete_sets(self.shard_dir, ctx.pp * ctx.dp):
                print(line, file=sys.stderr)
        if step >= 0:
            self.load_shard(t, shards.shard_path(self.shard_dir, step, ctx.pp_rank, ctx.dp_rank))
            if self.is_main:
                shards.prune(self.shard_dir, self.cfg.train.keep_last)
            return
        ck = ckpt_io.load(path)  # re-place a single-device (or exported) checkpoint
        ckpt_io.check_compatible(
            ck, config_to_dict(t.cfg.model), t.corpus.tokenizer.model_bytes(), str(path)
        )
        self.runner.load_full_state_dict(ck["model"], prefix="stages.")
        t.start_from_weights(ck)
        if self.is_main:
            print(
                f"re-placed the weights of {path} onto this placement at step {t.step}; "
                "optimizer state and data position start fresh",
                file=sys.stderr,
            )

    def load_shard(self, t: Trainer, path: Path) -> None:
        shard = ckpt_io.load(path)
        self.runner.load_full_state_dict(
            {f"stages.{k}": v for k, v in shard["model"].items()}, prefix="stages.", strict=False
        )
        t.load_run_state(shard)

    def finish(self, t: Trainer) -> dict[str, Any]:
        summary = self.runner.write_timeline(t.out_dir)  # collective
        if summary is None or not self.is_main:
            return {}
        info = {
            "busy_fraction": summary.busy_fraction,
            "bubble_fraction": summary.bubble_fraction,
            "theory_bubble_fraction": summary.theory_bubble_fraction,
            "timeline_step_ms": summary.step_ms,
        }
        print(
            "pipeline: busy "
            + ", ".join(f"rank{r} {f:.0%}" for r, f in enumerate(summary.busy_fraction))
            + f" | bubble {summary.bubble_fraction:.1%} "
            f"(theory {summary.theory_bubble_fraction:.1%}) | {t.out_dir / 'timeline.png'}",
            file=sys.stderr,
        )
        return {"timeline": info}


class SmoothedLoss:
    """The pipeline's ``loss_fn``: label-smoothed loss sum of a micro-batch; keeps the nll sum
    on the side, so the log's ppl is exp(nll per token) as on one device."""

    def __init__(self, eps: float) -> None:
        self.eps = eps
        self.nll: list[torch.Tensor] = []

    def __call__(self, out: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        loss, nll = label_smoothed_nll(out, tgt, PAD_ID, self.eps)
        self.nll.append(nll.detach())
        return loss

    def take(self, microbatches: int) -> float:
        """The nll sum of the last ``microbatches`` calls (0 on ranks without the generator):
        a new shape bucket's first step also calls ``loss_fn`` while torch infers the
        backward's metadata, before the real micro-batches."""
        kept = self.nll[max(0, len(self.nll) - microbatches) :]
        total = float(torch.stack(kept).double().sum()) if kept else 0.0
        self.nll = []
        return total


def _worker(setup: RunSetup) -> dict[str, Any]:
    """One rank: join the process group, build this rank's stages, run the common loop."""
    hostmem.tune()  # a spawned process starts with glibc's defaults
    hostmem.cap_onednn_cache()
    cfg, pc = setup.cfg, setup.cfg.parallel
    assert setup.layout is not None
    ctx = init_distributed(
        pc.dp,
        pc.pp,
        backend=pc.backend,
        device=cfg.train.device,
        timeout_s=pc.timeout_s,
        phase_timeout_s=pc.phase_timeout_s,
    )
    try:
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        seed_everything(cfg.train.seed)
        prior = output_prior(cfg.model, setup.corpus)
        engine = PipelineRank(setup, ctx, setup.layout, prior)
        t = Trainer(cfg, setup.corpus, setup.out_dir, engine)
        install_faults(engine.parameters(), lambda: t.step, ctx.rank)
        start_from = resume_path(cfg, t.ckpt_dir)
        if start_from is not None:
            t.resume(start_from)
        resumed = t.step if start_from else None
        if resumed is not None and t.is_main:
            print(f"resumed from {start_from} at step {t.step}", file=sys.stderr)
        metrics = MetricsLog(setup.out_dir, resumed) if t.is_main else _NullMetrics()
        return run_loop(t, metrics)
    finally:
        ctx.close()


def train_pipelined(setup: RunSetup) -> dict[str, Any]:
    """Run ``dp * pp`` workers from the parent's :class:`RunSetup` (under torchrun this
    process is one of them)."""
    if setup.choice is not None:
        announce(setup.choice)
    pc = setup.cfg.parallel
    results = launch(_worker, setup, nproc=pc.pp * pc.dp, timeout_s=pc.timeout_s)
    return results[min(results)]
