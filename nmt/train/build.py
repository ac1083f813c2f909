"""How the pieces of a training run are built from its config: seed, device, autocast
precision (measured for ``auto``), the model spec and model, the output prior, batches per
step. Shared by set-up, single-device and pipelined training (no training state here)."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable

import numpy as np
import torch

from data.tokenizer import EOS_ID, PAD_ID
from nmt.config import AppConfig, ModelConfig, TrainConfig, config_to_dict
from nmt.errors import UserError
from nmt.machine.calibrate import Choice, choose, training_workload
from nmt.machine.capability import bf16_lstm_runs, require_bf16
from nmt.models import registry as arch
from nmt.models.seq2seq import ModelSpec, Seq2Seq, log_unigram_prior
from nmt.prepare.splits import Corpus


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device={name} but no CUDA device is available")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.precision``: ``auto`` = bf16 on GPU, fp32 on CPU (where
    :func:`resolve_precision` has not measured it); ``bf16`` also on CPU (torch's CPU autocast,
    where this CPU has a bf16 LSTM kernel); ``fp16`` (with a loss scaler) on GPU only."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise UserError(f"train.precision={precision!r}: expected auto, fp32, bf16 or fp16")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "fp16" and device.type != "cuda":
        raise UserError("train.precision=fp16 needs a CUDA device; on CPU use bf16 or fp32")
    if precision == "bf16":
        require_bf16("train.precision", device.type)
    return torch.float16 if precision == "fp16" else torch.bfloat16


def resolve_precision(cfg: AppConfig) -> Choice | None:
    """``train.precision=auto`` on a CPU: fp32 or bf16 autocast, whichever trains this model's
    batches faster here (:func:`nmt.machine.calibrate.choose`; bf16 only where it runs at all). None
    when nothing is left to measure (an explicit precision, a GPU)."""
    tc = cfg.train
    device = pick_device(str(tc.device))
    autocast_dtype(str(tc.precision), device)  # bad values fail here
    if str(tc.precision) != "auto" or device.type != "cpu":
        return None
    if not bf16_lstm_runs(device.type):
        return Choice("train", "fp32", key="no bf16 LSTM")
    names = ["fp32", "bf16"]
    if int(tc.threads):
        torch.set_num_threads(int(tc.threads))
    vocab, tokens = int(cfg.data.vocab_size), int(cfg.data.batch_tokens)
    amp = {"fp32": None, "bf16": torch.bfloat16}
    shape = {"model": config_to_dict(cfg)["model"], "vocab": vocab, "batch_tokens": tokens}
    models: list[Seq2Seq] = []  # built once, and only when the cache cannot answer

    def workload(name: str) -> Callable[[], object]:
        if not models:
            models.append(build_from_config(cfg.model, vocab))
        return training_workload(models[0], amp[name], tokens)

    return choose("train", shape, {n: functools.partial(workload, n) for n in names})


def check_accumulate(tc: TrainConfig) -> int:
    """``train.accumulate``: batches per optimizer step on one device (>= 1)."""
    n = tc.accumulate
    if n < 1:
        raise UserError(f"train.accumulate={n} must be >= 1")
    return n


def check_model_config(mcfg: ModelConfig) -> ModelSpec:
    """The model spec of ``cfg.model``; impossible sizes or an unknown ``model.arch`` are user
    errors (one line), not tracebacks from deep inside."""
    spec = ModelSpec.from_config(mcfg)
    problems = arch.problems(spec)
    if problems:
        raise UserError("; ".join(problems))
    return spec


def output_prior(mcfg: ModelConfig, corpus: Corpus) -> torch.Tensor | None:
    """The generator's initial bias per ``model.output_bias`` (prior | uniform)."""
    kind = mcfg.output_bias
    if kind == "uniform":
        return None
    if kind != "prior":
        raise UserError(f"model.output_bias={kind!r}: expected prior or uniform")
    return log_unigram_prior(corpus.ids["train"][1], corpus.tokenizer.vocab_size, EOS_ID)


def build_from_config(
    mcfg: ModelConfig, vocab_size: int, prior: torch.Tensor | None = None
) -> Seq2Seq:
    """The model of ``cfg.model`` (:func:`nmt.models.registry.build_model`), seeded by the
    caller."""
    return arch.build_model(check_model_config(mcfg), vocab_size, PAD_ID, prior)
