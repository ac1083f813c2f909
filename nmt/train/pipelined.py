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
from nmt.config import AppConfig, config_to_dict
from nmt.machine import hostmem
from nmt.machine.calibrate import announce
from nmt.models import registry as arch
from nmt.models.loss import label_smoothed_nll
from nmt.models.seq2seq import ModelSpec, Seq2Seq
from nmt.prepare.splits import Corpus
from nmt.train.loop import resume_path, run_loop
from nmt.train.metrics import MetricsLog
from nmt.train.placement import Layout
from nmt.train.setup import RunSetup
from nmt.train.trainer import (
    Trainer,
    build_from_config,
    seed_everything,
)
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


class PipeTrainer(Trainer):
    """A :class:`Trainer` whose model is split over the ranks of a pipeline (x dp replicas)."""

    def __init__(
        self, cfg: AppConfig, corpus: Corpus, out_dir: Path, ctx: DistContext, layout: Layout
    ) -> None:
        """``cfg`` as the parent resolved it (``parallel.microbatches`` = the layout's, so the
        Batcher makes batch sizes divisible by it); ``layout`` from :func:`resolve_layout`."""
        self.ctx = ctx
        self.init_run(cfg, corpus, out_dir, ctx.dp, ctx.device)  # one batch per dp replica
        self.microbatches = layout.microbatches
        self.is_main = ctx.rank == 0
        # only rank 0 gathers the whole model (validation BLEU, export), and keeps it on the
        # CPU: its device's memory is for its stages (the model visits it to decode)
        vocab = corpus.tokenizer.vocab_size
        self.model = build_from_config(cfg.model, vocab, self.prior)
        self.model = self.model.to("cpu" if self.is_main else "meta")
        self.wavefront = None
        seed_everything(cfg.train.seed)  # the same initial weights on every rank
        stages = arch.build_stages(ModelSpec.from_config(cfg.model), vocab, PAD_ID, self.prior)
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
        # The same schedule as a single device (Trainer.schedule); its clock comes from rank 0.
        self.init_optimizer(list(self.runner.parameters()), ctx.rank)
        self.shard_dir = self.ckpt_dir / "shards"
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        self._first_step: int | None = None

    # ------------------------------------------------------------------ step
    def next_batches(self) -> list[Batch]:
        """Every rank draws ``dp`` batches; replica r trains on the r-th (the same batches as
        one device with ``train.accumulate=dp``)."""
        batches = [self.next_batch() for _ in range(self.ctx.dp)]
        self.step_tokens = sum(b.ntokens for b in batches)
        return [batches[self.ctx.dp_rank]]

    def train_step(self, batch: Batch | list[Batch]) -> tuple[float, float]:
        (one,) = [batch] if isinstance(batch, Batch) else batch
        if self._first_step is None:
            self._first_step = self.step
        since = self.step - self._first_step
        if since == TIMELINE_STEPS[0]:
            self.runner.timeline.enable()
        self.runner.train(True)
        b = one.to(self.device)
        self.loss_fn.take(0)  # drop what validation left
        with torch.autocast(
            self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None
        ):
            loss = self.runner.step((b.src, b.src_len, b.tgt_in), b.tgt_out, one.ntokens)
        norm = self.runner.clip_grad_norm_(float(self.cfg.train.clip_norm))
        nll, bad = self.agree_step(math.isfinite(loss) and math.isfinite(norm))
        if since + 1 == TIMELINE_STEPS[1]:
            self.runner.timeline.disable()  # before any validation pass
        if bad:  # on every rank together
            return self.skip_step(loss, "loss" if not math.isfinite(loss) else "gradient norm")
        self.bad_steps = 0
        self.skipped_last = False
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return loss, nll / max(self.step_tokens, 1)

    def agree_step(self, finite: bool) -> tuple[float, bool]:
        """One all-reduce: the replicas' nll sum (for ppl), and whether any rank saw a
        non-finite loss or gradient norm (then every rank skips the step)."""
        box = torch.zeros(2, dtype=torch.float64, device=self.device)
        box[0] = self.loss_fn.take(self.microbatches)
        box[1] = 0.0 if finite else 1.0
        dist.all_reduce(box, op=dist.ReduceOp.SUM)
        return float(box[0]), bool(box[1] > 0)

    def agree(self, stop: str | None) -> str | None:
        """Rank 0's stop decision and budget clock (every rank's lr follows the same clock)."""
        box: list[Any] = [stop, self.run_seconds]
        dist.broadcast_object_list(box, src=0)
        self.run_seconds = float(box[1])
        return None if box[0] is None else str(box[0])

    # ------------------------------------------------------------------ validation
    def gathered_model(self) -> Seq2Seq | None:
        """Collective: the whole model on rank 0 (``None`` elsewhere)."""
        full = self.runner.full_state_dict(prefix="stages.")
        if full is None:
            return None
        self.model.load_state_dict(full)
        return self.model

    def validate(self) -> dict[str, Any]:
        src, tgt = self.corpus.ids["dev"]
        keep = [i for i in range(len(src)) if src[i] and tgt[i]]
        dev = Batcher(
            [src[i] for i in keep],
            [tgt[i] for i in keep],
            int(self.cfg.data.batch_tokens),
            batch_multiple=self.microbatches,
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
        if model is not None and bool(self.cfg.train.eval_bleu):
            try:
                box[0] = dev_bleu_report(
                    model.to(self.device),
                    self.corpus,
                    self.cfg.decode,
                    int(self.cfg.data.max_dev_sentences),
                )
            finally:
                model.to("cpu")
        # the other ranks wait for rank 0's decoding under parallel.phase_timeout_s
        dist.broadcast_object_list(box, src=0, group=self.ctx.phase_group)
        if box[0] is not None:
            result.update(box[0])
        return result

    # ------------------------------------------------------------------ checkpoints
    def save(self, best: bool) -> None:
        """Collective: this rank's shard of step N, the exported single-device weights (rank
        0), a barrier, then the manifest that makes the set of step N the one to resume."""
        shard = {
            "model": self.runner.state_dict(),
            **self.run_state(),
            "placement": self.placement_ranks,
        }
        ctx = self.ctx
        ckpt_io.save(shards.shard_path(self.shard_dir, self.step, ctx.pp_rank, ctx.dp_rank), shard)
        model = self.gathered_model()  # collective
        if model is not None:
            export = {
                "model": model.state_dict(),
                "step": self.step,
                "train_seconds": self.train_seconds,
                "best": dict(self.best),
                "config": config_to_dict(self.cfg),
                "spm": self.corpus.tokenizer.model_bytes(),
            }
            ckpt_io.save(self.ckpt_dir / "last.pt", export)
            if best:
                ckpt_io.save(self.ckpt_dir / "best.pt", export)
        dist.barrier(group=self.ctx.phase_group)  # every shard is on disk; rank 0 exported
        if self.is_main:
            shards.write_manifest(self.shard_dir, self.step, ctx.pp, ctx.dp, self.placement_ranks)
            shards.prune(self.shard_dir, int(self.cfg.train.keep_last))

    @property
    def placement_ranks(self) -> list[int]:
        return list(self.runner.placement.stage_ranks)

    def resume(self, path: Path) -> None:
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
            self.load_shard(shards.shard_path(self.shard_dir, step, ctx.pp_rank, ctx.dp_rank))
            if self.is_main:
                shards.prune(self.shard_dir, int(self.cfg.train.keep_last))
            return
        ck = ckpt_io.load(path)  # re-place a single-device (or exported) checkpoint
        ckpt_io.check_compatible(
            ck, config_to_dict(self.cfg)["model"], self.corpus.tokenizer.model_bytes(), str(path)
        )
        self.runner.load_full_state_dict(ck["model"], prefix="stages.")
        self.start_from_weights(ck)
        if self.is_main:
            print(
                f"re-placed the weights of {path} onto this placement at step {self.step}; "
                "optimizer state and data position start fresh",
                file=sys.stderr,
            )

    def load_shard(self, path: Path) -> None:
        shard = ckpt_io.load(path)
        self.runner.load_full_state_dict(
            {f"stages.{k}": v for k, v in shard["model"].items()}, prefix="stages.", strict=False
        )
        self.load_run_state(shard)

    def finish(self) -> dict[str, Any]:
        summary = self.runner.write_timeline(self.out_dir)  # collective
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
            f"(theory {summary.theory_bubble_fraction:.1%}) | {self.out_dir / 'timeline.png'}",
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
        t = PipeTrainer(cfg, setup.corpus, setup.out_dir, ctx, setup.layout)
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
