"""Checkpoints: atomic writes (temp file, fsync, rename), ``weights_only=True`` loads, exact
RNG capture, compatibility checks with one-line errors.

Contents: ``model`` (state dict), ``optimizer``, ``scheduler``, ``scaler``, ``rng`` (torch,
cuda, numpy, python), ``data`` (iterator position), ``step``, ``config`` (plain dict),
``spm`` (sentencepiece model bytes), ``metrics`` (best BLEU etc.), ``format`` (version).
Shipped models (:mod:`nmt.release.shipped`) add ``weights_dtype``, ``weight_scales`` and
``metadata``;
:func:`load` returns their weights in fp32.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.atomic import atomic_open
from nmt.errors import UserError
from nmt.models import registry as arch
from nmt.models.seq2seq import ModelSpec
from nmt.release.shipped import decode_weights

FORMAT = 1


def rng_state() -> dict[str, Any]:
    """Every RNG the training loop touches, in a form ``weights_only`` loading accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(
        tuple(state["python"][:1]) + (tuple(state["python"][1]),) + tuple(state["python"][2:])
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: a crash never leaves a half-written file."""
    payload = {"format": FORMAT, **payload}
    try:
        with atomic_open(path, "wb") as fh:
            torch.save(payload, fh)
    except OSError as err:
        raise UserError(f"cannot write checkpoint {path}: {err.strerror or err}") from None


def load(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a missing, truncated, corrupted or
    code-carrying file is refused with one line."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"checkpoint {p} {'is a folder' if p.is_dir() else 'does not exist'}")
    if p.stat().st_size == 0:
        raise UserError(f"checkpoint {p} is empty (0 bytes)")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "unpickling failed"
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise UserError(
                f"checkpoint {p} was refused: it carries Python objects that weights_only "
                f"loading does not allow ({_short(first)})"
            ) from None
        raise UserError(f"checkpoint {p} is corrupted: {_short(first)}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        detail = _short(str(err)) or type(err).__name__
        raise UserError(f"checkpoint {p} is truncated or corrupted: {detail}") from None
    except Exception as err:  # noqa: BLE001 - any other failure of the restricted unpickler
        raise UserError(
            f"checkpoint {p} is corrupted or not a checkpoint: {type(err).__name__}: "
            f"{_short(str(err))}"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model" not in ckpt:
        raise UserError(f"checkpoint {p} is not a pipenmt checkpoint (format {FORMAT})")
    decode_weights(ckpt, str(p))  # a shipped model's fp16/int8 weights become fp32
    return ckpt


def _short(msg: str) -> str:
    msg = " ".join(msg.split())
    return msg if len(msg) < 200 else msg[:197] + "..."


def check_compatible(
    ckpt: dict[str, Any], model_cfg: dict[str, Any], spm: bytes, where: str
) -> None:
    """Refuse a checkpoint whose model shape or vocabulary differs from the run's."""
    saved = require_single_device(ckpt, where)["config"]["model"]
    old, new = ModelSpec.from_config(saved), ModelSpec.from_config(dict(model_cfg))
    keys = ("arch",) if old.arch != new.arch else ("arch", *arch.get(new).shape_keys)
    diffs = [
        f"model.{k.removesuffix('_size')}: {getattr(old, k)} vs {getattr(new, k)}"
        for k in keys
        if getattr(old, k) != getattr(new, k)
    ]
    if diffs:
        raise UserError(f"checkpoint {where} does not fit this config ({'; '.join(diffs)})")
    if ckpt.get("spm") != spm:
        raise UserError(
            f"checkpoint {where} was trained with another sentencepiece vocabulary than this run's"
        )


def require_single_device(ckpt: dict[str, Any], where: str) -> dict[str, Any]:
    """``ckpt`` itself if it carries what a single-device model needs (weights, config,
    sentencepiece model); a pipeline shard or a hand-made file is refused with one line."""
    config = ckpt.get("config")
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict) or not isinstance(ckpt.get("spm"), bytes):
        shard = "placement" in ckpt
        hint = " (a pipeline shard? use the run's checkpoints/last.pt)" if shard else ""
        raise UserError(
            f"checkpoint {where} lacks the model config or the sentencepiece model{hint}"
        )
    return ckpt


def remove_stale_temp(folder: Path) -> int:
    """Delete temp files that a killed checkpoint write left behind (``.NAME.pt.*.tmp``);
    returns how many. Only the process that owns ``folder`` (the run) may call this."""
    stale = [p for p in folder.glob(".*.pt.*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def step_file(folder: Path, step: int) -> Path:
    return folder / f"step_{step:08d}.pt"


def prune(folder: Path, keep_last: int) -> None:
    """Keep the newest ``keep_last`` step checkpoints (``last.pt``/``best.pt`` stay)."""
    steps = sorted(p for p in folder.glob("step_*.pt") if re.fullmatch(r"step_\d+\.pt", p.name))
    for old in steps[: max(0, len(steps) - keep_last)]:
        old.unlink(missing_ok=True)


def average(paths: list[Path]) -> dict[str, Any]:
    """The element-wise mean of the weights of ``paths`` (checkpoints of one run: the same
    model config and sentencepiece model, else one-line error), as a weights-only
    single-device checkpoint with the newest one's step, config and vocabulary. Averaging the
    last few checkpoints of a run usually scores a little better than the last alone."""
    if not paths:
        raise UserError("nothing to average: give at least one checkpoint")
    cks = [require_single_device(load(p), str(p)) for p in paths]
    newest = max(range(len(cks)), key=lambda i: int(cks[i].get("step", 0)))
    base = cks[newest]
    for p, ck in zip(paths, cks, strict=True):
        check_compatible(ck, base["config"]["model"], base["spm"], str(p))
        if ck["model"].keys() != base["model"].keys():
            raise UserError(f"checkpoint {p} holds other tensors than {paths[newest]}")
    mean = {
        k: (sum(ck["model"][k].double() for ck in cks) / len(cks)).to(v.dtype)
        if v.is_floating_point()
        else v.clone()
        for k, v in base["model"].items()
    }
    return {
        "model": mean,
        "step": int(base.get("step", 0)),
        "train_seconds": float(base.get("train_seconds", 0.0)),
        "best": dict(base.get("best", {})),
        "config": base["config"],
        "spm": base["spm"],
        "averaged": [str(p) for p in paths],
    }
