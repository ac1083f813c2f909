"""Pipelined training: ``nmt-train parallel=pipe2`` (or dp x pp) on torch.distributed.pipelining.

The parent process checks the placement (bad settings fail here, exit 2), prepares the data
once (so the tokenizer is cached), and starts ``dp * pp`` workers with torch's launcher (or
joins as a worker under ``torchrun``). Each worker builds the same stage list with the same
seed, keeps its own stages, and runs the common loop of :mod:`nmt.train` with the step,
validation and checkpoints done collectively.

Checkpoints: every rank writes its shard (``checkpoints/shards/last.pp{p}.dp{d}.pt``: its
stages, optimizer, RNG, data position) for exact resume with the same placement; rank 0 also
exports one single-device ``last.pt``/``best.pt`` (weights only) that ``nmt-translate`` and
``nmt-eval`` load, and from which a run with another placement (or one device) resumes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from data.batching import Batch, Batcher
from data.tokenizer import PAD_ID
from nmt import checkpoint as ckpt_io
from nmt.config import config_to_dict, dict_to_config
from nmt.corpus import Corpus, prepare_corpus
from nmt.loss import label_smoothed_nll
from nmt.metrics import MetricsLog
from nmt.model import GNMT, build_stages
from nmt.train import Trainer, _loop, resume_path, seed_everything
from nmt.validate import dev_bleu
from parallel.engine import (
    DistContext,
    PipelineRunner,
    from_plan,
    init_distributed,
    launch,
    resolve,
)

TIMELINE_STEPS = (3, 6)  # record steps (start+3, start+6] of each run for the timeline


def stage_args(cfg: Any, vocab_size: int) -> tuple[Any, ...]:
    m = cfg.model
    return (
        vocab_size,
        int(m.hidden),
        int(m.enc_layers),
        int(m.dec_layers),
        float(m.dropout),
        bool(m.tie_embeddings),
        float(m.init_range),
        PAD_ID,
    )


def resolve_placement(cfg: Any) -> tuple[Any, str, int]:
    """Placement, schedule and micro-batch count, checked before any process starts."""
    pc, m = cfg.parallel, cfg.model
    return resolve(
        str(pc.placement),
        n_stages=int(m.enc_layers) + int(m.dec_layers) + 1,
        pp=int(pc.pp),
        schedule=str(pc.schedule),
        microbatches=int(pc.microbatches),
        balance=list(pc.balance) if pc.balance is not None else None,
        plan=str(pc.plan) if pc.plan else None,
        n_enc=int(m.enc_layers),
        n_dec=int(m.dec_layers),
    )


def recompute_setting(cfg: Any) -> bool:
    """``parallel.recompute``, or the plan's choice for ``placement=auto``."""
    pc, m = cfg.parallel, cfg.model
    if str(pc.placement) == "auto" and pc.plan:
        n = int(m.enc_layers) + int(m.dec_layers) + 1
        return bool(cfg.parallel.recompute) or from_plan(str(pc.plan), n, int(pc.pp))[1].recompute
    return bool(cfg.parallel.recompute)


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

    def __init__(self, cfg: Any, corpus: Corpus, out_dir: Path, ctx: DistContext) -> None:
        self.ctx = ctx
        self.batches_per_step = ctx.dp  # next_batch draws one batch per replica
        placement, schedule, micro = resolve_placement(cfg)
        self.microbatches = micro
        cfg.parallel.microbatches = micro  # the Batcher makes batch sizes divisible by it
        super().__init__(cfg, corpus, out_dir)  # builds the full model once (for validation)
        self.is_main = ctx.rank == 0
        self.device = ctx.device
        if not self.is_main:  # only rank 0 gathers the whole model (validation BLEU, export)
            self.model = self.model.to("meta")
        seed_everything(int(cfg.train.seed))  # the same initial weights on every rank
        stages = build_stages(*stage_args(cfg, corpus.tokenizer.vocab_size), self.prior)
        eps = float(cfg.train.label_smoothing)
        self.runner = PipelineRunner(
            stages,
            lambda out, tgt: label_smoothed_nll(out, tgt, PAD_ID, eps)[0],
            ctx=ctx,
            placement=placement,
            schedule=schedule,
            microbatches=micro,
            recompute=recompute_setting(cfg),
        )
        self.optimizer = torch.optim.Adam(self.runner.parameters(), lr=float(cfg.train.lr))
        # The same schedule as a single device (Trainer.schedule); its clock comes from rank 0.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_lambda)
        self.shard_dir = self.ckpt_dir / "shards"
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        self._first_step: int | None = None

    # ------------------------------------------------------------------ step
    def next_batch(self) -> Batch:
        """Every rank draws ``dp`` batches; replica r trains on the r-th (same data order as
        a single device with a dp-times larger batch)."""
        batches = [next(iter(self.batcher)) for _ in range(self.ctx.dp)]
        return batches[self.ctx.dp_rank]

    def train_step(self, batch: Batch) -> tuple[float, float]:
        if self._first_step is None:
            self._first_step = self.step
        since = self.step - self._first_step
        if since == TIMELINE_STEPS[0]:
            self.runner.timeline.enable()
        self.runner.train(True)
        b = batch.to(self.device)
        loss = self.runner.step((b.src, b.src_len, b.tgt_in), b.tgt_out, batch.ntokens)
        self.runner.clip_grad_norm_(float(self.cfg.train.clip_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if since + 1 == TIMELINE_STEPS[1]:
            self.runner.timeline.disable()  # before any validation pass
        return loss, loss  # the pipeline reports the smoothed loss only

    def agree(self, stop: str | None) -> str | None:
        """Rank 0's stop decision and budget clock (every rank's lr follows the same clock)."""
        box: list[Any] = [stop, self.run_seconds]
        dist.broadcast_object_list(box, src=0)
        self.run_seconds = float(box[1])
        return None if box[0] is None else str(box[0])

    # ------------------------------------------------------------------ validation
    def gathered_model(self) -> GNMT | None:
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
            box[0] = dev_bleu(
                model, self.corpus, self.cfg.decode, int(self.cfg.data.max_dev_sentences)
            )
        dist.broadcast_object_list(box, src=0)
        if box[0] is not None:
            result["val_bleu"] = box[0]
        return result

    # ------------------------------------------------------------------ checkpoints
    def shard_file(self, tag: str) -> Path:
        return self.shard_dir / f"{tag}.pp{self.ctx.pp_rank}.dp{self.ctx.dp_rank}.pt"

    def save(self, best: bool) -> None:
        shard = {
            "model": self.runner.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": ckpt_io.rng_state(),
            "data": self.batcher.state_dict(),
            "step": self.step,
            "train_seconds": self.train_seconds,
            "best": dict(self.best),
            "placement": list(self.runner.placement.stage_ranks),
        }
        ckpt_io.save(self.shard_file("last"), shard)
        model = self.gathered_model()  # collective
        if model is not None:
            export = {
                "model": model.state_dict(),
                "step": self.step,
                "best": dict(self.best),
                "config": config_to_dict(self.cfg),
                "spm": self.corpus.tokenizer.model_bytes(),
            }
            ckpt_io.save(self.ckpt_dir / "last.pt", export)
            if best:
                ckpt_io.save(self.ckpt_dir / "best.pt", export)
        dist.barrier()

    def resume(self, path: Path) -> None:
        shard_path = self.shard_file("last")
        shard = ckpt_io.load(shard_path) if shard_path.is_file() else None
        if shard is not None and shard["placement"] == list(self.runner.placement.stage_ranks):
            self.runner.load_full_state_dict(
                {f"stages.{k}": v for k, v in shard["model"].items()},
                prefix="stages.",
                strict=False,
            )
            self.optimizer.load_state_dict(shard["optimizer"])
            self.scheduler.load_state_dict(shard["scheduler"])
            self.batcher.load_state_dict(shard["data"])
            self.step, self.train_seconds = shard["step"], shard["train_seconds"]
            self.best = shard["best"]
            ckpt_io.set_rng_state(shard["rng"])
            return
        ck = ckpt_io.load(path)  # re-place a single-device (or exported) checkpoint
        ckpt_io.check_compatible(
            ck, config_to_dict(self.cfg)["model"], self.corpus.tokenizer.model_bytes(), str(path)
        )
        self.runner.load_full_state_dict(ck["model"], prefix="stages.")
        self.step = int(ck.get("step", 0))
        if self.is_main:
            print(
                f"re-placed the weights of {path} onto this placement; optimizer state and "
                "data position start fresh",
                file=sys.stderr,
            )

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


def _worker(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    cfg = dict_to_config(cfg_dict)
    pc = cfg.parallel
    ctx = init_distributed(
        int(pc.dp),
        int(pc.pp),
        backend=str(pc.backend),
        device=str(cfg.train.device),
        timeout_s=float(pc.timeout_s),
    )
    try:
        if int(cfg.train.threads):
            torch.set_num_threads(int(cfg.train.threads))
        seed_everything(int(cfg.train.seed))
        corpus = prepare_corpus(cfg.data, int(cfg.train.seed))  # tokenizer: from the cache
        out_dir = Path(str(cfg.train.out_dir)).expanduser()
        t = PipeTrainer(cfg, corpus, out_dir, ctx)
        start_from = resume_path(cfg, t.ckpt_dir)
        if start_from is not None:
            t.resume(start_from)
        resumed = t.step if start_from else None
        metrics = MetricsLog(out_dir, resumed) if t.is_main else _NullMetrics()
        return _loop(t, metrics)
    finally:
        ctx.close()


def train_pipelined(cfg: Any) -> dict[str, Any]:
    """Check the placement, prepare data once, then run ``dp * pp`` workers."""
    resolve_placement(cfg)  # fail fast (exit 2) before any process starts
    out_dir = Path(str(cfg.train.out_dir or "runs/latest")).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    prepare_corpus(cfg.data, int(cfg.train.seed))  # trains/caches the tokenizer once
    cfg_dict = config_to_dict(cfg)
    cfg_dict["train"]["out_dir"] = str(out_dir)
    nproc = int(cfg.parallel.pp) * int(cfg.parallel.dp)
    results = launch(_worker, cfg_dict, nproc=nproc, timeout_s=float(cfg.parallel.timeout_s))
    return results[min(results)]
